"""Disk cache of activations: harvest once, train many dictionaries (sweeps) from it (folder layout
in docs/internals.md)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.config import dtype_name, torch_dtype
from sparsecircuits.data.store import ModelRows
from sparsecircuits.data.tokenize import TokenSource
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.files import atomic_write_text

if TYPE_CHECKING:
    from sparsecircuits.data.prefetch import FillControl
    from sparsecircuits.models import ModelAdapter

__all__ = ["CachedActivationSource", "MANIFEST_NAME", "harvest_to_disk"]

MANIFEST_NAME = "manifest.json"
TOKEN_IDS_KEY = "_token_ids"
_FORMAT = "sparsecircuits-activation-cache"
_FORMAT_VERSION = 2  # 2: hook names mean what TransformerLens means (README "Hook names")
_log = logging.getLogger("sparsecircuits")


def _peek_context_size(contexts: Iterable[Tensor]) -> tuple[int, Iterable[Tensor]]:
    if isinstance(contexts, TokenSource):
        return contexts.context_size, contexts
    iterator = iter(contexts)
    first = next(iterator, None)
    if first is None:
        raise SparseCircuitsError("the data yielded no contexts; check the dataset")

    def chained() -> Iterable[Tensor]:
        yield first
        yield from iterator

    return int(first.shape[-1]), chained()


def harvest_to_disk(
    adapter: ModelAdapter,
    contexts: Iterable[Tensor],
    hooks: list[str],
    folder: str | Path,
    n_tokens: int,
    shard_tokens: int = 131072,
    *,
    context_size: int | None = None,
    contexts_per_forward: int = 32,
    exclude_bos: bool = True,
    dtype: str | torch.dtype = "float32",
    overwrite: bool = False,
    progress: bool = True,
) -> CachedActivationSource:
    """Run the model over `contexts` and write `n_tokens` activation rows per hook to `folder`;
    return its `CachedActivationSource`.

    Shards hold ``shard_tokens`` rows (whole contexts); host memory is two shards of buffers, as a
    writer thread saves one while the model fills the next. `context_size` defaults to the contexts'
    length; when the data ends early the cache holds what there was (with a warning).
    """
    hooks = list(hooks)
    if not hooks or len(set(hooks)) != len(hooks):
        raise SparseCircuitsError(f"hooks {hooks} must be non-empty and without duplicates")
    if n_tokens < 1:
        raise SparseCircuitsError(f"n_tokens must be at least 1, not {n_tokens}")
    folder = Path(folder)
    _prepare_folder(folder, overwrite)
    if context_size is None:
        context_size, contexts = _peek_context_size(contexts)
    producer = ModelRows(adapter, contexts, hooks, context_size, contexts_per_forward, exclude_bos)
    shard_rows = producer.capacity(shard_tokens)
    buffer_dtype = torch_dtype(dtype)
    pin = torch.device(producer.adapter.device).type == "cuda"
    # Two sets of shard buffers: the model fills one while a thread writes the other to disk.
    buffer_sets = [_shard_buffers(producer.dims, shard_rows, buffer_dtype, pin) for _ in range(2)]
    pending: list[Future[None] | None] = [None, None]
    shards: list[dict[str, Any]] = []
    rows_total = 0
    bar = _progress_bar(n_tokens, progress)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-writer") as writer:
        try:
            while rows_total < n_tokens:
                slot = len(shards) % 2
                previous = pending[slot]
                if previous is not None:
                    previous.result()  # its buffers are free again (and errors surface)
                buffers, token_ids = buffer_sets[slot]
                wanted = min(shard_rows, n_tokens - rows_total)
                whole_contexts = (
                    math.ceil(wanted / producer.rows_per_context) * producer.rows_per_context
                )
                rows = min(producer.fill(buffers, whole_contexts, token_ids), wanted)
                if rows == 0:
                    break
                name = f"shard_{len(shards):05d}.safetensors"
                tensors = {hook: buffer[:rows] for hook, buffer in buffers.items()}
                tensors[TOKEN_IDS_KEY] = token_ids[:rows]
                pending[slot] = writer.submit(save_file, tensors, str(folder / name))
                shards.append({"file": name, "n_tokens": rows})
                rows_total += rows
                bar.update(rows)
                if rows < wanted:
                    break
            for future in pending:
                if future is not None:
                    future.result()
        finally:
            bar.close()
    if rows_total == 0:
        raise SparseCircuitsError(
            "the data yielded no activations; check the dataset and context_size"
        )
    if rows_total < n_tokens:
        _log.warning(
            "the data ran out after %d of %d tokens; the cache holds %d",
            rows_total,
            n_tokens,
            rows_total,
        )
    manifest = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "model_name": str(getattr(adapter, "name", "unknown")),
        "hooks": dict(producer.dims),
        "dtype": dtype_name(buffer_dtype),
        "n_tokens": rows_total,
        "context_size": context_size,
        "exclude_bos": exclude_bos,
        "rows_per_context": producer.rows_per_context,
        "n_contexts": producer.position,
        "shards": shards,
    }
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2))
    return CachedActivationSource(folder)


def _shard_buffers(
    dims: dict[str, int], rows: int, dtype: torch.dtype, pin: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """Return CPU buffers ``{hook: [rows, d]}`` and token ids ``[rows]`` (int32), pinned for
    fast device-to-host copies when the model is on a GPU."""
    buffers = {hook: torch.empty(rows, d, dtype=dtype, pin_memory=pin) for hook, d in dims.items()}
    return buffers, torch.empty(rows, dtype=torch.int32, pin_memory=pin)


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if (folder / MANIFEST_NAME).exists():
        if not overwrite:
            raise SparseCircuitsError(
                f"{folder} already holds an activation cache; pass overwrite=True or choose another folder"
            )
        (folder / MANIFEST_NAME).unlink()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("shard_*.safetensors"):
        stale.unlink()


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="harvest", unit="tok", unit_scale=True, disable=not enabled)


class CachedActivationSource:
    """A folder written by `harvest_to_disk`, checked and ready to read: `folder`, `manifest`,
    `hooks` (hook -> dim), `n_tokens`, `dtype`, `model_name`, `context_size`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST_NAME
        if not path.is_file():
            raise SparseCircuitsError(
                f"{self.folder} holds no {MANIFEST_NAME}; it is not a finished activation cache, "
                "harvest it (again) with harvest_to_disk"
            )
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SparseCircuitsError(
                f"{path} is not valid JSON ({exc.msg}); harvest again"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise SparseCircuitsError(f"{path} is not a sparsecircuits activation cache manifest")
        if manifest.get("version") != _FORMAT_VERSION:
            raise SparseCircuitsError(
                f"{path} has cache format version {manifest.get('version')}, this sparsecircuits "
                f"reads {_FORMAT_VERSION}; harvest again"
            )
        self.manifest = manifest
        self.hooks: dict[str, int] = {str(k): int(v) for k, v in manifest["hooks"].items()}
        self.n_tokens = int(manifest["n_tokens"])
        self.dtype = torch_dtype(manifest["dtype"])
        self.model_name = str(manifest.get("model_name"))
        self.context_size = int(manifest["context_size"])
        self.shards = [(self.folder / s["file"], int(s["n_tokens"])) for s in manifest["shards"]]
        missing = [str(file) for file, _ in self.shards if not file.is_file()]
        if missing:
            raise SparseCircuitsError(
                f"activation cache {self.folder} is missing {len(missing)} shard file(s) "
                f"(first: {missing[0]}); harvest again"
            )
        if sum(n for _, n in self.shards) != self.n_tokens:
            raise SparseCircuitsError(
                f"activation cache {self.folder} manifest counts do not add up; harvest again"
            )

    def __repr__(self) -> str:
        return f"CachedActivationSource({str(self.folder)!r}, {self.n_tokens} tokens, hooks={list(self.hooks)})"

    def check_hooks(self, hooks: list[str], adapter: ModelAdapter | None = None) -> None:
        """Raise `SparseCircuitsError` unless every hook is cached with the adapter's dim."""
        absent = [hook for hook in hooks if hook not in self.hooks]
        if absent:
            raise SparseCircuitsError(
                f"activation cache {self.folder} has no hook(s) {', '.join(absent)} "
                f"(cached: {', '.join(self.hooks)}); harvest those hooks or pick cached ones"
            )
        if adapter is None:
            return
        model_name = getattr(adapter, "name", None)
        if model_name is not None and str(model_name) != self.model_name:
            _log.warning(
                "activation cache %s was harvested from model %r, not %r",
                self.folder,
                self.model_name,
                model_name,
            )
        for hook in hooks:
            d = int(adapter.hook_dim(hook))
            if d != self.hooks[hook]:
                raise SparseCircuitsError(
                    f"activation cache {self.folder} holds {self.hooks[hook]} values per token for "
                    f"{hook} but the model has {d}; harvest again with this model"
                )

    def read(self, hook: str, start: int = 0, stop: int | None = None) -> Tensor:
        """Return rows ``[start, stop)`` of `hook` as a CPU tensor ``[stop - start, d]``."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        out = torch.empty(max(stop - start, 0), self.hooks.get(hook, 0), dtype=self.dtype)
        self._read_into({hook: out}, start, stop)
        return out

    def read_token_ids(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Return the token ids of rows ``[start, stop)`` as an int64 tensor ``[stop - start]``."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        out = torch.empty(max(stop - start, 0), dtype=torch.int64)
        self._read_into({TOKEN_IDS_KEY: out}, start, stop)
        return out

    def _read_into(self, buffers: dict[str, Tensor], start: int, stop: int) -> int:
        """Copy rows ``[start, stop)`` of each key into rows ``[0, stop - start)`` of `buffers`."""
        self.check_hooks([key for key in buffers if key != TOKEN_IDS_KEY])
        shard_start = 0
        written = 0
        for file, n_rows in self.shards:
            shard_stop = shard_start + n_rows
            lo, hi = max(start, shard_start), min(stop, shard_stop)
            if lo < hi:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    for key, buffer in buffers.items():
                        rows = handle.get_slice(key)[lo - shard_start : hi - shard_start]
                        buffer[written : written + hi - lo].copy_(rows)
                written += hi - lo
            shard_start = shard_stop
            if shard_start >= stop:
                break
        return written

    def rows(self, hooks: list[str], adapter: ModelAdapter | None = None) -> CachedRows:
        """Return the row producer an `ActivationStore` reads this cache through."""
        self.check_hooks(hooks, adapter)
        return CachedRows(self, hooks)


class CachedRows:
    """Row producer over a disk cache; `position` counts rows, seeking is free."""

    kind = "cache"

    def __init__(self, source: CachedActivationSource, hooks: list[str]) -> None:
        self.source = source
        self.hooks = list(hooks)
        self.dims = {hook: source.hooks[hook] for hook in self.hooks}
        self.position = 0

    def capacity(self, buffer_tokens: int) -> int:
        """Return the buffer rows for `buffer_tokens` (all of them: rows need no alignment)."""
        if buffer_tokens < 1:
            raise SparseCircuitsError(f"buffer_tokens must be at least 1, not {buffer_tokens}")
        return buffer_tokens

    def seek(self, position: int) -> None:
        """Make the next read start at row `position`."""
        if position > self.source.n_tokens:
            raise SparseCircuitsError(
                f"resume position {position} is past the end of activation cache "
                f"{self.source.folder} ({self.source.n_tokens} tokens); resume with the same cache"
            )
        self.position = position

    can_rewind = True

    def fill(
        self, buffers: dict[str, Tensor], max_rows: int, control: FillControl | None = None
    ) -> int:
        """Copy the next up to `max_rows` rows into rows ``[0, n)`` of `buffers`; return n (one
        read, which `control` does not interrupt; it hears the rows at the end)."""
        targets = {hook: buffers[hook] for hook in self.hooks}
        end = min(self.position + max_rows, self.source.n_tokens)
        rows = self.source._read_into(targets, self.position, end)
        self.position += rows
        if control is not None:
            control.advance(rows)
        return rows
