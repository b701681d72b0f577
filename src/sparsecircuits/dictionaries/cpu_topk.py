"""Numba CPU kernels for the TopK hot path: exact row top-k and gather-dot rescoring
(docs/internals.md)."""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

SEGMENT = 32
# numba's fallback threading layer ("workqueue", where no OpenMP/TBB runtime loads) aborts on
# concurrent parallel launches from two Python threads; the kernels take turns
_LAUNCH = threading.Lock()


def supports(scores: Tensor, k: int) -> bool:
    """Whether `row_topk` can take `scores` (CPU, fp32/bf16, 2-D, width a multiple of
    `SEGMENT`, `k <= width / SEGMENT`)."""
    return (
        scores.device.type == "cpu"
        and scores.dim() == 2
        and scores.dtype in (torch.float32, torch.bfloat16)
        and scores.shape[1] % SEGMENT == 0
        and 0 < k <= scores.shape[1] // SEGMENT
    )


def segment_length(width: int, k: int) -> int:
    """Elements per segment for a row of `width` and top `k`: `SEGMENT`, halved (down to 8)
    until there are at least 2k segments (measured on 2 cores, bf16 rows: at 4k k 72, 16 per
    segment 10 % faster than 32; 16-32 best from 4k to 64k, k 32 to 128)."""
    seg = SEGMENT
    while seg > 8 and width // seg < 2 * k:
        seg //= 2
    return seg


@contextlib.contextmanager
def _launch(module: str = "_numba_kernels") -> Iterator[Any]:
    """The kernels module `module` of this package (`_numba_kernels`, or `_numba_sparse` for
    `sparse_step`), its parallel kernels on torch's thread count (capped at numba's pool size),
    one launch at a time (see `_LAUNCH`). Imported here, on first use: importing numba is slow."""
    import numba

    from sparsecircuits.threads import prefer_numba_workqueue

    kernels = importlib.import_module(f"sparsecircuits.dictionaries.{module}")
    prefer_numba_workqueue()
    want = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)
    with _LAUNCH:
        yield kernels


def _bf16_from_keys(keys: np.ndarray) -> Tensor:
    """Invert `_numba_kernels.order_key` on bf16 bits: int32 keys `[n, k]` -> fp32 values `[n, k]`."""
    bits = np.where(keys >= 0x8000, keys ^ 0x8000, keys ^ 0xFFFF).astype(np.uint32) << 16
    return torch.from_numpy(bits.view(np.float32))


def row_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top `k` of each row of `scores [n, width]` (fp32 or bf16, CPU): `(values, indices)`
    `[n, k]`, unsorted; values are fp32 (bf16 values converted exactly). Call `supports` first."""
    s = scores.detach().contiguous()
    n = s.shape[0]
    seg = segment_length(s.shape[1], k)
    idx = np.empty((n, k), np.int64)
    if s.dtype == torch.bfloat16:
        keys = np.empty((n, k), np.int32)
        with _launch() as kernels:
            kernels.topk_rows_bf16(s.view(torch.int16).numpy().view(np.uint16), k, seg, keys, idx)
        return _bf16_from_keys(keys), torch.from_numpy(idx)
    values = np.empty((n, k), np.float32)
    with _launch() as kernels:
        kernels.topk_rows(s.numpy(), k, seg, values, idx)
    return torch.from_numpy(values), torch.from_numpy(idx)


def supports_gather(table: Tensor, indices: Tensor, rows: Tensor) -> bool:
    """Whether `gather_dot` can take these tensors (CPU, fp32 table and rows, int64 indices)."""
    return (
        table.device.type == "cpu"
        and table.dtype == rows.dtype == torch.float32
        and indices.dtype == torch.int64
        and indices.dim() == 2
    )


def gather_dot(table: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """`out[r, c] = table[indices[r, c]] . rows[r] (+ bias[indices[r, c]])` `[n, c]` (fp32,
    CPU) from `table [m, d]`, `indices [n, c]` (int64), `rows [n, d]`, `bias [m]`. Call
    `supports_gather` first. No autograd."""
    out = np.empty(tuple(indices.shape), np.float32)
    no_bias = np.empty(0, np.float32)
    with _launch() as kernels:
        kernels.gather_dot_bias(
            table.detach().contiguous().numpy(),
            indices.contiguous().numpy(),
            rows.detach().contiguous().numpy(),
            no_bias if bias is None else bias.detach().contiguous().numpy(),
            out,
        )
    return torch.from_numpy(out)


def supports_scatter(indices: Tensor, weights: Tensor, rows: Tensor) -> bool:
    """Whether `scatter_outer` can take these tensors (CPU, fp32 weights and rows, int64
    indices `[n, c]` with `c >= 1`)."""
    return (
        rows.device.type == "cpu"
        and weights.dtype == rows.dtype == torch.float32
        and indices.dtype == torch.int64
        and indices.dim() == 2
        and indices.shape[1] > 0
        and weights.shape == indices.shape
        and rows.dim() == 2
        and rows.shape[0] == indices.shape[0]
    )


def latent_order(indices: Tensor, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries of `indices` (`[n, c]` or flat `[nnz]`, int64) grouped by latent, for
    `scatter_outer`: `(start [d_sae + 1], entry [nnz])`, latent j's entries being
    `entry[start[j]:start[j + 1]]` in ascending flat order. Raises on an index outside
    `[0, d_sae)`."""
    idx = indices.contiguous().numpy()
    if idx.size and (idx.min() < 0 or idx.max() >= d_sae):
        raise ValueError(f"scatter_outer: indices must lie in [0, {d_sae})")
    start = np.empty(d_sae + 1, np.int64)
    entry = np.empty(idx.size, np.int64)
    with _launch() as kernels:
        kernels.entries_by_latent(idx, d_sae, start, entry)
    return start, entry


def scatter_outer(
    indices: Tensor,
    weights: Tensor,
    rows: Tensor,
    d_sae: int,
    transposed: bool = False,
    row_of: Tensor | None = None,
    order: tuple[np.ndarray, np.ndarray] | None = None,
) -> Tensor:
    """`out[j] = Σ_{e: indices[e] = j} weights[e] · rows[row of e]`: `[d_sae, d]` (fp32, CPU), or
    its transpose `[d, d_sae]` (contiguous) with `transposed`. Entries are `indices, weights
    [n, c]` (entry `(r, s)` in row `r` of `rows [n, d]`) or, with `row_of`, flat `[nnz]` (entry
    `e` in row `row_of[e]`). `order` is `latent_order(indices, d_sae)` when the caller already
    has it. Call `supports_scatter` first (flat entries: CPU, fp32, int64). Each latent's
    entries are summed in entry order, so the result is deterministic. No autograd."""
    start, entry = latent_order(indices, d_sae) if order is None else order
    d = rows.shape[1]
    out = np.empty((d, d_sae) if transposed else (d_sae, d), np.float32)
    flat = row_of is not None
    with _launch() as kernels:
        kernels.scatter_outer(
            start,
            entry,
            weights.detach().contiguous().numpy(),
            rows.detach().contiguous().numpy(),
            0 if flat else indices.shape[1],
            row_of.contiguous().numpy() if flat else np.empty(0, np.int64),  # type: ignore[union-attr]
            transposed,
            out,
        )
    return torch.from_numpy(out)


def supports_rows(*tensors: Tensor) -> bool:
    """Whether the row kernels (`remove_parallel_rows`, `normalize_rows`) can take these
    tensors: CPU, fp32, 2-D, contiguous, one shape."""
    first = tensors[0]
    return all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.dim() == 2
        and t.is_contiguous()
        and t.shape == first.shape
        for t in tensors
    )


def remove_parallel_rows(weight: Tensor, grad: Tensor) -> None:
    """Project out of each row of `grad [rows, d]` its component along the same row of
    `weight [rows, d]`, in place, in one pass (fp32, CPU). Call `supports_rows` first."""
    eps = float(torch.finfo(torch.float32).eps)
    with _launch() as kernels:
        kernels.remove_parallel_rows(weight.detach().numpy(), grad.detach().numpy(), eps)


def normalize_rows(weight: Tensor) -> None:
    """Rescale each row of `weight [rows, d]` to unit L2 norm (norms below fp32 eps count as
    eps), in place, in one pass (fp32, CPU). Call `supports_rows` first."""
    eps = float(torch.finfo(torch.float32).eps)
    with _launch() as kernels:
        kernels.normalize_rows(weight.detach().numpy(), eps)
