"""Data-parallel training over several processes (torchrun + torch.distributed; what is sharded,
averaged and global in docs/internals.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sparsecircuits.dictionaries import SparseCoder
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.training.config import TrainConfig
from sparsecircuits.training.trainer import BatchSource, Trainer

__all__ = [
    "DistributedContext",
    "DistributedTrainer",
    "ShardedContexts",
    "all_reduce_gradients",
    "init_distributed",
]


@dataclass
class DistributedContext:
    """Where this process sits: `rank` of `world_size`, its `local_rank` and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one rank is running."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def init_distributed(
    backend: str | None = None, device: str | None = None, timeout_s: float = 1800.0
) -> DistributedContext:
    """Join the process group torchrun describes in the environment; return this rank's context
    (a one-process context without torchrun's `WORLD_SIZE`). Backend: NCCL with CUDA, else gloo;
    device: `cuda:{LOCAL_RANK}` under NCCL, else "cpu"; a collective stuck over `timeout_s` raises."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return DistributedContext(device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not dist.is_available():
        raise SparseCircuitsError(
            "this torch build has no torch.distributed; train with one process"
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if device is None:
        device = f"cuda:{local_rank}" if backend == "nccl" else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistributedContext(rank, world_size, local_rank, backend, device)


class ShardedContexts:
    """Every `world_size`-th context of `contexts` (`[context]` or `[n, context]` items), starting
    at `rank`, in whole rounds so every rank gets as many; re-iterable."""

    def __init__(self, contexts: Iterable[torch.Tensor], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise SparseCircuitsError(f"rank {rank} is outside 0..{world_size - 1}")
        self.contexts, self.rank, self.world_size = contexts, rank, world_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        round_: list[torch.Tensor] = []
        for item in self.contexts:
            for context in item.unbind(0) if item.dim() == 2 else (item,):
                round_.append(context)
                if len(round_) == self.world_size:
                    yield round_[self.rank]
                    round_ = []


def _average(tensors: list[torch.Tensor], world_size: int, dtype: torch.dtype | None) -> None:
    """Replace every tensor by its mean over all ranks, in place, with one flat all-reduce
    (summed in `dtype`, else each tensor's own)."""
    if world_size <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(dtype or t.dtype) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def all_reduce_gradients(dictionary: SparseCoder, world_size: int) -> None:
    """Average every gradient of `dictionary` over all ranks, in place, with one collective
    (every rank must hold gradients for the same parameters)."""
    _average([p.grad for p in dictionary.parameters() if p.grad is not None], world_size, None)


@torch.no_grad()
def average_buffers(dictionary: SparseCoder, world_size: int) -> None:
    """Average the floating-point buffers of `dictionary` (e.g. BatchTopK's threshold EMA, which
    each rank updates from its own data) over all ranks, in float64 (one collective)."""
    buffers = [b for b in dictionary.buffers() if b.is_floating_point()]
    _average(buffers, world_size, torch.float64)


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's `rows [n, ...]` concatenated in rank order (equal `n` on all ranks)."""
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def broadcast_parameters(dictionary: SparseCoder, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers with rank `src`'s."""
    for tensor in [*dictionary.parameters(), *dictionary.buffers()]:
        dist.broadcast(tensor.data, src=src)


class DistributedTrainer(Trainer):
    """`Trainer` for one rank of a data-parallel run (docs/internals.md): `store` yields this rank's
    `cfg.batch_tokens / world_size` rows, `cfg` keeps global sizes; only rank 0 writes `out_dir`."""

    def __init__(
        self,
        store: BatchSource,
        dictionaries: dict[str, SparseCoder],
        cfg: TrainConfig,
        context: DistributedContext,
        out_dir: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        self.context = context
        if not context.is_main:
            cfg.quiet = True
            cfg.wandb_project = None
        super().__init__(store, dictionaries, cfg, out_dir=out_dir, run_config=run_config)
        if context.enabled:
            for dictionary in dictionaries.values():
                broadcast_parameters(dictionary)

    def reduce_gradients(self, dictionary: SparseCoder) -> None:
        """Average the dictionary's gradients over the ranks (one flat all-reduce)."""
        if self.context.enabled:
            all_reduce_gradients(dictionary, self.context.world_size)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        if not self.context.enabled:
            return super()._train_step(batch)
        if not self.biases_initialised:
            # Data-dependent init (centres, the transcoder encoder rescale) sees the global
            # first batch on every rank, exactly as one process would.
            everything = {hook: all_gather_rows(rows) for hook, rows in batch.items()}
            for d in self.dictionaries.values():
                d.init_biases_from_data(*d.inputs_from(everything))
            self.biases_initialised = True
        before = {
            name: None if counter is None else counter.clone()
            for name, counter in self.tokens_since_fired.items()
        }
        metrics = super()._train_step(batch)
        for d in self.dictionaries.values():
            average_buffers(d, self.context.world_size)
        local_tokens = next(iter(batch.values())).shape[0]
        self._merge_fired(before, local_tokens * self.context.world_size)
        # Trainer.train adds this rank's rows after each step; count every rank's.
        self.tokens_seen += local_tokens * (self.context.world_size - 1)
        self._sync_stop_signal()
        return self._average_metrics(metrics)

    def _merge_fired(self, before: dict[str, torch.Tensor | None], global_tokens: int) -> None:
        # After a step a local counter is 0 exactly where the latent fired on this rank
        # (counters start as None and are created by the first step).
        for name, counter in self.tokens_since_fired.items():
            if counter is None:
                continue
            fired = (counter == 0).to(torch.int32)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
            previous = before[name]
            unfired = global_tokens + (0 if previous is None else previous)
            counter.copy_(torch.where(fired.bool(), torch.zeros_like(counter), unfired))

    def _sync_stop_signal(self) -> None:
        flag = torch.tensor([1 if self._stop_signal else 0], device=self._device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag) and self._stop_signal is None:
            self._stop_signal = "SIGTERM (on another rank)"

    def _average_metrics(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        names = sorted(metrics)  # never empty: a trainer has at least one dictionary
        keys = ("loss", "fvu", "l0", "aux")
        values = torch.tensor(
            [[metrics[n][k] for k in keys] for n in names],
            dtype=torch.float64,
            device=self._device(),
        )
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= self.context.world_size
        for i, n in enumerate(names):
            for j, k in enumerate(keys):
                metrics[n][k] = float(values[i, j])
        return metrics

    def _device(self) -> torch.device:
        return next(iter(self.dictionaries.values())).b_dec.device

    def save_checkpoint(self, tag: str | None = None) -> Path:
        """Rank 0 writes the checkpoint; every rank waits for it and returns its folder."""
        path = super().save_checkpoint(tag) if self.context.is_main else self.checkpoint_folder(tag)
        if self.context.enabled:
            dist.barrier()
        return path

    def _log(self, metrics: dict[str, dict[str, float]], bar: Any) -> None:
        if self.context.is_main:
            super()._log(metrics, bar)
