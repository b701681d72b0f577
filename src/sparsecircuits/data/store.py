"""ActivationStore: shuffled training batches of model activations, resumable exactly (the fill
scheme and its memory in docs/internals.md)."""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparsecircuits.config import torch_dtype
from sparsecircuits.data.prefetch import BackgroundFill, FillControl, FillResult
from sparsecircuits.data.tokenize import TokenSource, check_context_size
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.data.cache import CachedActivationSource, CachedRows
    from sparsecircuits.models import ModelAdapter

__all__ = ["ActivationStore", "ActivationStoreConfig"]

_STATE_VERSION = 1


@dataclass
class ActivationStoreConfig:
    """Settings of an `ActivationStore`: tokens per context (BOS included), contexts per model
    forward, rows per batch, rows in the shuffle buffer (whole contexts), whether to drop position 0,
    the buffer dtype, the shuffle seed, a `harvest_to_disk` folder to read instead of running the
    model, the device (default: the model's; "cpu" for a cache), and whether to harvest the next
    fill in a background thread while the current one is consumed (`prefetch`: same batches,
    twice the buffer memory; only where the stream can be replayed), and whether batches then
    wait for the background fill to keep pace (`pace`: where harvesting is slower than training,
    each step waits a little instead of the step at the refill waiting for all of it)."""

    context_size: int = 128
    contexts_per_forward: int = 32
    batch_tokens: int = 4096
    buffer_tokens: int = 131072
    exclude_bos: bool = True
    dtype: str = "float32"
    seed: int = 0
    cache_dir: str | None = None
    device: str | None = None
    prefetch: bool = True
    pace: bool = True


# A model runs one hooked forward at a time: run_with_cache installs hooks on its modules, so a
# background fill and another store's (or the same store's foreground) fill over one adapter
# take turns, forward by forward.
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(adapter: Any) -> threading.Lock:
    """The lock that serialises hooked forwards of `adapter` across activation stores."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(adapter)
        if lock is None:
            lock = _MODEL_LOCKS[adapter] = threading.Lock()
        return lock


def _as_context_rows(contexts: Iterable[Tensor]) -> Iterator[Tensor]:
    """Yield 1-D contexts from an iterable of ``[context]`` or ``[n, context]`` tensors."""
    for item in contexts:
        if item.dim() == 2:
            yield from item.unbind(0)
        else:
            yield item


class ModelRows:
    """Runs the model over a stream of contexts and writes hook activations as rows; `position`
    counts contexts. Seeking replays a re-iterable stream without running the model; a one-shot
    iterator only skips forward."""

    kind = "model"

    def __init__(
        self,
        adapter: ModelAdapter,
        contexts: Iterable[Tensor],
        hooks: list[str],
        context_size: int,
        contexts_per_forward: int,
        exclude_bos: bool,
    ) -> None:
        check_context_size(context_size, getattr(adapter, "max_context", None), prepend_bos=False)
        if contexts_per_forward < 1:
            raise SparseCircuitsError(
                f"contexts_per_forward must be at least 1, not {contexts_per_forward}"
            )
        if exclude_bos and context_size < 2:
            raise SparseCircuitsError("exclude_bos needs context_size >= 2")
        if isinstance(contexts, TokenSource):
            if contexts.context_size != context_size:
                raise SparseCircuitsError(
                    f"the token source packs contexts of {contexts.context_size} tokens but "
                    f"context_size is {context_size}; make them equal"
                )
            if exclude_bos and not contexts.prepend_bos:
                raise SparseCircuitsError(
                    "exclude_bos is set but the token source does not prepend BOS; "
                    "set prepend_bos=True or exclude_bos=False"
                )
        self.adapter = adapter
        self.contexts = contexts
        self.hooks = list(hooks)
        self.dims = {hook: int(adapter.hook_dim(hook)) for hook in self.hooks}
        self.context_size = context_size
        self.contexts_per_forward = contexts_per_forward
        self.exclude_bos = exclude_bos
        self.rows_per_context = context_size - 1 if exclude_bos else context_size
        self.bos_id = self._bos_id() if exclude_bos else None
        self.position = 0
        self._iterator: Iterator[Tensor] | None = None

    def _bos_id(self) -> int | None:
        if isinstance(self.contexts, TokenSource):
            return self.contexts.bos_token_id
        return self.adapter.bos_token_id

    @property
    def can_rewind(self) -> bool:
        """Whether `seek` can go back (a re-iterable stream, not a one-shot iterator)."""
        return not isinstance(self.contexts, Iterator)

    def capacity(self, buffer_tokens: int) -> int:
        """Return the buffer rows: the whole contexts that fit in `buffer_tokens`, times rows each."""
        n_contexts = buffer_tokens // self.rows_per_context
        if n_contexts < 1:
            raise SparseCircuitsError(
                f"buffer of {buffer_tokens} tokens cannot hold one context of "
                f"{self.rows_per_context} activation rows; raise buffer_tokens"
            )
        return n_contexts * self.rows_per_context

    def seek(self, position: int) -> None:
        """Make the next context read the one at index `position` of the stream."""
        if self._iterator is not None and position == self.position:
            return
        if self._iterator is None or position < self.position:
            if self._iterator is not None and not self.can_rewind:
                raise SparseCircuitsError(
                    "cannot rewind a one-shot iterator of contexts; pass a TokenSource to resume"
                )
            self._iterator = _as_context_rows(self.contexts)
            self.position = 0
        for _ in range(position - self.position):
            if next(self._iterator, None) is None:
                raise SparseCircuitsError(
                    f"the data stream ended after {self.position} contexts, before the resume "
                    f"position {position}; resume with the same data"
                )
            self.position += 1

    def _next_contexts(self, n: int) -> list[Tensor]:
        if self._iterator is None:
            self.seek(self.position)
        assert self._iterator is not None
        taken: list[Tensor] = []
        for context in self._iterator:
            taken.append(context)
            if len(taken) == n:
                break
        self.position += len(taken)
        return taken

    def fill(
        self,
        buffers: dict[str, Tensor],
        max_rows: int,
        token_ids: Tensor | None = None,
        control: FillControl | None = None,
    ) -> int:
        """Write the activations of the next ``max_rows // rows_per_context`` contexts (fewer
        at the end of the stream) into rows ``[0, n)`` of each buffer ``[>= max_rows, d]``;
        also their token ids into `token_ids` ``[>= max_rows]`` when given. Returns n. A
        `control` hears the rows written after each forward, and when it asks to stop the fill
        returns after the current forward (the rows are then incomplete)."""
        wanted = max_rows // self.rows_per_context
        rows_written = 0
        done = 0
        while done < wanted and not (control is not None and control.stop_requested()):
            requested = min(self.contexts_per_forward, wanted - done)
            contexts = self._next_contexts(requested)
            if not contexts:
                break
            input_ids = self._stack(contexts)
            rows_written += self._forward_into(input_ids, buffers, rows_written, token_ids)
            done += len(contexts)
            if control is not None:
                control.advance(rows_written)
            if len(contexts) < requested:
                break  # the stream is exhausted
        return rows_written

    def _stack(self, contexts: list[Tensor]) -> Tensor:
        for context in contexts:
            if context.dim() != 1 or context.shape[0] != self.context_size:
                raise SparseCircuitsError(
                    f"got a context of shape {tuple(context.shape)} but context_size is "
                    f"{self.context_size}; pack the data with the same context_size"
                )
        input_ids = torch.stack(contexts).long()
        if self.bos_id is not None and not bool((input_ids[:, 0] == self.bos_id).all()):
            raise SparseCircuitsError(
                f"exclude_bos is set but a context does not start with BOS (id {self.bos_id}); "
                "pack with prepend_bos=True or set exclude_bos=False"
            )
        return input_ids

    def _forward_into(
        self, input_ids: Tensor, buffers: dict[str, Tensor], start: int, token_ids: Tensor | None
    ) -> int:
        n_contexts = input_ids.shape[0]
        first = 1 if self.exclude_bos else 0
        n_rows = n_contexts * self.rows_per_context
        with torch.no_grad(), model_lock(self.adapter):
            _, cache = self.adapter.run_with_cache(
                input_ids.to(self.adapter.device), self.hooks, stop_after_last=True
            )
            for hook in self.hooks:
                if hook not in cache:
                    raise SparseCircuitsError(
                        f"the model returned no activations for hook {hook!r}; check the hook name"
                    )
                acts = cache[hook]
                if acts.dim() < 3 or tuple(acts.shape[:2]) != tuple(input_ids.shape):
                    raise SparseCircuitsError(
                        f"hook {hook!r} gave activations of shape {tuple(acts.shape)}, not "
                        f"[batch, pos, ...] for input {tuple(input_ids.shape)}; use a per-token hook"
                    )
                acts = acts[:, first:].flatten(2)
                d = self.dims[hook]
                if acts.shape[-1] != d:
                    raise SparseCircuitsError(
                        f"hook {hook!r} has {acts.shape[-1]} values per token but hook_dim says {d}"
                    )
                # One strided copy from the model's tensor into the preallocated buffer.
                destination = buffers[hook][start : start + n_rows].view(
                    n_contexts, self.rows_per_context, d
                )
                destination.copy_(acts)
        if token_ids is not None:
            token_ids[start : start + n_rows].view(n_contexts, self.rows_per_context).copy_(
                input_ids[:, first:]
            )
        return n_rows


def _fill_generator(seed: int, fill_index: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + fill_index * 7919 + 12345) % (2**63))
    return generator


class ActivationStore:
    """Shuffled batches ``dict[hook, Tensor [batch_tokens, d]]`` of model activations; iterating
    yields them until the data runs out (docs/internals.md).

    `contexts`: packed contexts (best a `TokenSource`, which can be replayed to resume; or an iterator
    of ``[context_size]`` / ``[n, context_size]`` LongTensors) or a `CachedActivationSource` (then
    `adapter` may be None); ``cfg.cache_dir`` reads that disk cache instead.
    """

    def __init__(
        self,
        adapter: ModelAdapter | None,
        contexts: Iterable[Tensor] | CachedActivationSource | None,
        hooks: list[str],
        cfg: ActivationStoreConfig | None = None,
    ) -> None:
        from sparsecircuits.data.cache import CachedActivationSource

        cfg = cfg if cfg is not None else ActivationStoreConfig()
        hooks = list(hooks)
        if not hooks:
            raise SparseCircuitsError("no hooks given; name at least one hook to harvest")
        if len(set(hooks)) != len(hooks):
            raise SparseCircuitsError(f"hooks {hooks} contain duplicates; list each hook once")
        if cfg.batch_tokens < 1:
            raise SparseCircuitsError(f"batch_tokens must be at least 1, not {cfg.batch_tokens}")
        if cfg.cache_dir is not None:
            contexts = CachedActivationSource(cfg.cache_dir)
        self.cfg = cfg
        self.hooks = hooks
        self.dtype = torch_dtype(cfg.dtype)
        # writes activation rows into the buffers, from a seekable position
        self.producer: ModelRows | CachedRows
        if isinstance(contexts, CachedActivationSource):
            self.producer = contexts.rows(hooks, adapter=adapter)
            default_device: str | torch.device = "cpu"
        else:
            if adapter is None or contexts is None:
                raise SparseCircuitsError(
                    "an ActivationStore over contexts needs a model adapter and contexts"
                )
            self.producer = ModelRows(
                adapter,
                contexts,
                hooks,
                cfg.context_size,
                cfg.contexts_per_forward,
                cfg.exclude_bos,
            )
            default_device = adapter.device
        self.device = torch.device(cfg.device if cfg.device is not None else default_device)
        self.dims = dict(self.producer.dims)
        self.capacity = self.producer.capacity(cfg.buffer_tokens)
        if self.capacity < cfg.batch_tokens:
            raise SparseCircuitsError(
                f"the shuffle buffer holds {self.capacity} rows, fewer than batch_tokens "
                f"{cfg.batch_tokens}; raise buffer_tokens (ideally to 16x batch_tokens or more)"
            )
        # where the forwards run: the model's device (a CUDA model may fill a CPU buffer)
        self._model_device = torch.device(
            getattr(getattr(self.producer, "adapter", None), "device", "cpu")
        )
        # Pinned host memory makes the model's device-to-host copies several times faster.
        self._pin = self.device.type == "cpu" and self._model_device.type == "cuda"
        self.buffers = self._new_buffers()
        # Prefetch needs a stream it can seek back in: a cancelled fill moved it past the spot
        # the next synchronous fill starts from.
        self.prefetch = bool(cfg.prefetch) and bool(getattr(self.producer, "can_rewind", False))
        self._spare: dict[str, Tensor] | None = None  # the background fill's buffers
        self._pending: BackgroundFill | None = None
        self._fill_index = 0
        self._fill_start = 0
        self._fill_end: int | None = None  # stream position after the fill in the buffers
        self._rows_served = 0
        self._rows_filled: int | None = None  # None: the buffer does not hold fill _fill_index
        self._permutation: Tensor | None = None
        self.tokens_served = 0
        self.wait_seconds = 0.0  # time next_batch spent waiting for fills (foreground or not)

    def _new_buffers(self) -> dict[str, Tensor]:
        return {
            hook: torch.empty(
                self.capacity, d, dtype=self.dtype, device=self.device, pin_memory=self._pin
            )
            for hook, d in self.dims.items()
        }

    def __repr__(self) -> str:
        return (
            f"ActivationStore(hooks={self.hooks}, batch_tokens={self.cfg.batch_tokens}, "
            f"capacity={self.capacity}, {self.memory_bytes() / 2**20:.1f} MiB)"
        )

    def memory_bytes(self) -> int:
        """Return the bytes of the shuffle buffers: capacity * sum(dims) * element size, twice
        with `prefetch` (the fill being consumed and the one being harvested)."""
        element = torch.empty((), dtype=self.dtype).element_size()
        copies = 2 if self.prefetch else 1
        return copies * self.capacity * sum(self.dims.values()) * element

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self

    def __next__(self) -> dict[str, Tensor]:
        return self.next_batch()

    def next_batch(self) -> dict[str, Tensor]:
        """Return the next batch ``{hook: Tensor [batch_tokens, d]}`` on `self.device`; raise
        `StopIteration` when the data is exhausted, `SparseCircuitsError` when it held nothing."""
        parts: list[dict[str, Tensor]] = []
        needed = self.cfg.batch_tokens
        while needed > 0:
            if self._rows_filled is None:
                self._load_fill()
            assert self._rows_filled is not None and self._permutation is not None
            available = self._rows_filled - self._rows_served
            if available == 0:
                if self._rows_filled < self.capacity:
                    raise StopIteration  # the last fill was partial: the data is exhausted
                self._next_fill()
                continue
            take = min(needed, available)
            index = self._permutation[self._rows_served : self._rows_served + take]
            parts.append(
                {hook: buffer.index_select(0, index) for hook, buffer in self.buffers.items()}
            )
            self._rows_served += take
            needed -= take
        if self._rows_served == self._rows_filled and self._rows_filled == self.capacity:
            self._next_fill()  # keeps state_dict from pointing at a spent fill
        elif self._pending is not None and self.cfg.pace and not self._pending.done():
            self._keep_pace()
        self.tokens_served += self.cfg.batch_tokens
        if len(parts) == 1:
            return parts[0]
        return {hook: torch.cat([part[hook] for part in parts]) for hook in self.hooks}

    def _keep_pace(self) -> None:
        """Wait until the background fill has harvested the share of its rows that this fill has
        served: when harvesting is slower than training, the wait is spread over the steps
        instead of falling on the step where the buffer runs out."""
        assert self._pending is not None and self._rows_filled
        start = time.perf_counter()
        share = self._rows_served / self._rows_filled
        self._pending.keep_pace(int(share * self.capacity))
        self.wait_seconds += time.perf_counter() - start

    def _next_fill(self) -> None:
        assert self._fill_end is not None
        self._fill_index += 1
        self._fill_start = self._fill_end
        self._fill_end = None
        self._rows_served = 0
        self._rows_filled = None
        self._permutation = None

    def _load_fill(self) -> None:
        """Put fill `_fill_index` (starting at `_fill_start`) in the buffers: the background
        fill's when it is that one, else harvested here; then start harvesting the next."""
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        result = None
        if pending is not None:
            if (pending.fill_index, pending.start) == (self._fill_index, self._fill_start):
                try:
                    result = pending.result()
                except BaseException:
                    self._spare = None  # the thread may have left it half-written
                    raise
                assert self._spare is not None
                self.buffers, self._spare = self._spare, self.buffers
            else:
                pending.cancel()
        if result is None:
            result = self._fill(self.buffers, self._fill_index, self._fill_start, None)
        self.wait_seconds += time.perf_counter() - start
        if result.rows == 0:
            if self._fill_index == 0:
                raise SparseCircuitsError(
                    "the data yielded no activations; check the dataset and context_size"
                )
            raise StopIteration
        assert result.permutation is not None
        self._permutation = result.permutation.to(self.device)
        self._rows_filled = result.rows
        self._fill_end = result.end
        if self.prefetch and result.rows == self.capacity:  # a partial fill ends the stream
            self._start_prefetch()

    def _fill(
        self,
        buffers: dict[str, Tensor],
        fill_index: int,
        start: int,
        control: FillControl | None,
    ) -> FillResult:
        """Harvest fill `fill_index` from stream position `start` into `buffers`."""
        self.producer.seek(start)
        rows = self.producer.fill(buffers, self.capacity, control=control)
        permutation = None
        if rows:
            generator = _fill_generator(self.cfg.seed, fill_index)
            permutation = torch.randperm(rows, generator=generator)  # moved by the consumer
        return FillResult(rows, self.producer.position, permutation)

    def _start_prefetch(self) -> None:
        if self._spare is None:
            self._spare = self._new_buffers()
        index, start, spare = self._fill_index + 1, self._fill_end, self._spare
        assert start is not None
        cuda_model = self._model_device.type == "cuda"
        harvest_device = self._model_device if cuda_model else self.device
        self._pending = BackgroundFill(
            index,
            start,
            lambda control: self._fill(spare, index, start, control),
            harvest_device,
        )

    def close(self) -> None:
        """Stop a background fill (after its current forward) and wait for its thread; the store
        stays usable: the next batch harvests what it needs in the foreground."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.producer.kind,
            "hooks": list(self.hooks),
            "batch_tokens": self.cfg.batch_tokens,
            "capacity": self.capacity,
            "seed": self.cfg.seed,
            "context_size": self.cfg.context_size if self.producer.kind == "model" else None,
            "exclude_bos": self.cfg.exclude_bos if self.producer.kind == "model" else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the data position as a JSON-ready dict: a store built the same way that loads it
        continues with the batches of an uninterrupted run."""
        return {
            "version": _STATE_VERSION,
            **self._fingerprint(),
            "fill_index": self._fill_index,
            "fill_start": self._fill_start,
            "rows_served": self._rows_served,
            "tokens_served": self.tokens_served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; the next batch replays at most one fill's forwards. The
        store may harvest a subset of the saved hooks (the data order does not depend on them),
        as when some of a run's dictionaries have stopped training."""
        if state.get("version") != _STATE_VERSION:
            raise SparseCircuitsError(
                f"activation store state has version {state.get('version')}, expected "
                f"{_STATE_VERSION}; resume with the sparsecircuits version that saved it"
            )
        for key, value in self._fingerprint().items():
            saved = state.get(key)
            if key == "hooks" and isinstance(saved, list) and set(value) <= set(saved):
                continue
            if saved != value:
                raise SparseCircuitsError(
                    f"cannot resume the activation store: it was saved with {key}={saved!r} but "
                    f"this store has {key}={value!r}; use the original settings"
                )
        self.close()
        self._fill_index = int(state["fill_index"])
        self._fill_start = int(state["fill_start"])
        self._fill_end = None
        self._rows_served = int(state["rows_served"])
        self._rows_filled = None
        self._permutation = None
        self.tokens_served = int(state["tokens_served"])

    @classmethod
    def from_cache(
        cls,
        folder: str,
        hooks: list[str],
        cfg: ActivationStoreConfig | None = None,
        adapter: ModelAdapter | None = None,
    ) -> ActivationStore:
        """Return a store that trains from a disk cache written by `harvest_to_disk`."""
        cfg = dataclasses.replace(cfg or ActivationStoreConfig(), cache_dir=str(folder))
        return cls(adapter, None, hooks, cfg)
