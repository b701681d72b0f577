"""Numba CPU kernels for the TopK hot path: exact row top-k and gather-dot rescoring.

`torch.topk` on a CPU spends ~2 ns per element of a `[n, d_sae]` pre-activation block (about
a third of a TopK train step at d_sae 4k); these kernels do the same selections in one pass
each over the row, parallel over rows:

* `row_topk` (fp32, or bf16 as raw bits): the row is cut into `width / SEGMENT` strided
  segments of `SEGMENT` elements (segment s: elements s, s + width/SEGMENT, ...);
  the k-th largest *segment maximum* `tau` is a lower bound on the row's k-th largest value
  (k distinct segments each hold an element >= tau), so every top-k element is >= tau and
  lies in a segment whose maximum is >= tau. Only those few segments are scanned for
  candidates (typically k + 2 of them), and a quickselect over the candidates gives the top k.
  The segment-maximum pass vectorises; everything after it touches O(k) elements.
* `gather_dot`: `out[r, c] = table[idx[r, c]] . rows[r] (+ bias[idx[r, c]])`, the fp32
  rescoring of bf16-selected candidates, without the `[n, c, d]` gather.

bf16 values are compared through a monotone integer key of their bits (no conversion pass).
Results are exact: the same top-k *values* as `torch.topk` (among equal values, either index).
The kernels compile on first use (a few seconds) and are cached next to this file.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

SEGMENT = 32


@functools.lru_cache(maxsize=1)
def _numba() -> Any:
    """The compiled kernels (a namespace), or None where numba is not installed."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency; this is the safety net
        return None
    return _compile(numba)


def available() -> bool:
    """True when the numba kernels can run (numba importable)."""
    return _numba() is not None


def _compile(numba: Any) -> Any:
    njit, prange = numba.njit, numba.prange

    @njit(inline="always")
    def f32_key(v: Any) -> Any:
        return v

    @njit(inline="always")
    def bf16_key(v: Any) -> Any:
        # sign-magnitude bits -> unsigned order: flip all bits of negatives, set the sign bit
        # of positives, so larger floats get larger integers
        x = np.int32(v)
        return x ^ (0x8000 | ((x >> 15) * 0x7FFF))

    @njit(inline="always")
    def select_top(v: Any, ix: Any, count: int, k: int) -> None:
        # Hoare quickselect, descending: afterwards v[:k] hold the k largest of v[:count]
        lo, hi, t = 0, count - 1, k - 1
        while lo < hi:
            pivot = v[(lo + hi) // 2]
            i, j = lo, hi
            while i <= j:
                while v[i] > pivot:
                    i += 1
                while v[j] < pivot:
                    j -= 1
                if i <= j:
                    v[i], v[j] = v[j], v[i]
                    ix[i], ix[j] = ix[j], ix[i]
                    i += 1
                    j -= 1
            if t <= j:
                hi = j
            elif t >= i:
                lo = i
            else:
                break

    def make_topk(key: Any, key_dtype: Any) -> Any:
        @njit(parallel=True, fastmath=True, boundscheck=False, nogil=True)
        def topk_rows(scores: Any, k: int, seg: int, out_keys: Any, out_idx: Any) -> None:
            n, w = scores.shape
            nseg = w // seg
            for r in prange(n):
                row = scores[r]
                # segment s = elements s, s + nseg, s + 2·nseg, ...: its maximum is an
                # elementwise max of SEGMENT contiguous slices (vectorises)
                seg_max = np.empty(nseg, key_dtype)
                for s in range(nseg):
                    seg_max[s] = key(row[s])
                for j in range(1, seg):
                    base = j * nseg
                    for s in range(nseg):
                        seg_max[s] = max(seg_max[s], key(row[base + s]))
                ranked = seg_max.copy()
                order = np.arange(nseg)
                select_top(ranked, order, nseg, k)
                tau = ranked[0]
                for a in range(1, k):
                    tau = min(tau, ranked[a])
                cap = 0
                for s in range(nseg):
                    if seg_max[s] >= tau:
                        cap += seg
                cand = np.empty(cap, key_dtype)
                cand_idx = np.empty(cap, np.int64)
                c = 0
                for s in range(nseg):
                    if seg_max[s] >= tau:
                        for t in range(s, w, nseg):
                            x = key(row[t])
                            if x >= tau:
                                cand[c] = x
                                cand_idx[c] = t
                                c += 1
                select_top(cand, cand_idx, c, k)
                for a in range(k):
                    out_keys[r, a] = cand[a]
                    out_idx[r, a] = cand_idx[a]

        return topk_rows

    @njit(parallel=True, fastmath=True, boundscheck=False, nogil=True)
    def gather_dot(table: Any, idx: Any, rows: Any, bias: Any, out: Any) -> None:
        n, c = idx.shape
        d = rows.shape[1]
        with_bias = bias.shape[0] > 0
        for r in prange(n):
            x = rows[r]
            for j in range(c):
                w = table[idx[r, j]]
                acc = np.float32(0.0)
                for t in range(d):
                    acc += w[t] * x[t]
                out[r, j] = acc + bias[idx[r, j]] if with_bias else acc

    class Kernels:
        topk_f32 = make_topk(f32_key, np.float32)
        topk_bf16 = make_topk(bf16_key, np.int32)
        gather_dot_bias = gather_dot

    Kernels.numba = numba  # type: ignore[attr-defined]
    return Kernels


_enabled = True


def set_enabled(enabled: bool) -> bool:
    """Turn the numba kernels on or off (off: callers use their torch paths, as without numba);
    returns the previous setting. For benchmarks and tests that compare the two."""
    global _enabled
    previous, _enabled = _enabled, enabled
    return previous


def supports(scores: Tensor, k: int) -> bool:
    """Whether `row_topk` can take `scores` (CPU, fp32/bf16, 2-D, width a multiple of
    `SEGMENT`, `k <= width / SEGMENT`)."""
    return (
        _enabled
        and scores.device.type == "cpu"
        and scores.dim() == 2
        and scores.dtype in (torch.float32, torch.bfloat16)
        and scores.shape[1] % SEGMENT == 0
        and 0 < k <= scores.shape[1] // SEGMENT
        and available()
    )


def segment_length(width: int, k: int) -> int:
    """Elements per segment for a row of `width` and top `k`: `SEGMENT`, halved (down to 8)
    until there are at least 2k segments (measured on 2 cores, bf16 rows: at 4k k 72, 16 per
    segment 10 % faster than 32; 16-32 best from 4k to 64k, k 32 to 128)."""
    seg = SEGMENT
    while seg > 8 and width // seg < 2 * k:
        seg //= 2
    return seg


def _threads() -> None:
    kernels = _numba()
    want = min(torch.get_num_threads(), kernels.numba.config.NUMBA_NUM_THREADS)
    if kernels.numba.get_num_threads() != want:
        kernels.numba.set_num_threads(want)


def _bf16_from_keys(keys: np.ndarray) -> Tensor:
    """Invert `bf16_key`: int32 keys `[n, k]` -> the bf16 values as fp32 `[n, k]`."""
    bits = np.where(keys >= 0x8000, keys ^ 0x8000, keys ^ 0xFFFF).astype(np.uint32) << 16
    return torch.from_numpy(bits.view(np.float32))


def row_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top `k` of each row of `scores [n, width]` (fp32 or bf16, CPU): `(values, indices)`
    `[n, k]`, unsorted; values are fp32 (bf16 values converted exactly). Call `supports` first."""
    kernels = _numba()
    _threads()
    s = scores.detach().contiguous()
    n = s.shape[0]
    idx = np.empty((n, k), np.int64)
    if s.dtype == torch.bfloat16:
        keys = np.empty((n, k), np.int32)
        kernels.topk_bf16(
            s.view(torch.int16).numpy().view(np.uint16), k, segment_length(s.shape[1], k), keys, idx
        )
        return _bf16_from_keys(keys), torch.from_numpy(idx)
    values = np.empty((n, k), np.float32)
    kernels.topk_f32(s.numpy(), k, segment_length(s.shape[1], k), values, idx)
    return torch.from_numpy(values), torch.from_numpy(idx)


def supports_gather(table: Tensor, indices: Tensor, rows: Tensor) -> bool:
    """Whether `gather_dot` can take these tensors (CPU, fp32 table and rows, int64 indices)."""
    return (
        _enabled
        and table.device.type == "cpu"
        and table.dtype == rows.dtype == torch.float32
        and indices.dtype == torch.int64
        and indices.dim() == 2
        and available()
    )


def gather_dot(table: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """`out[r, c] = table[indices[r, c]] . rows[r] (+ bias[indices[r, c]])` `[n, c]` (fp32,
    CPU) from `table [m, d]`, `indices [n, c]` (int64), `rows [n, d]`, `bias [m]`. Call
    `supports_gather` first. No autograd."""
    kernels = _numba()
    _threads()
    out = np.empty(tuple(indices.shape), np.float32)
    no_bias = np.empty(0, np.float32)
    kernels.gather_dot_bias(
        table.detach().contiguous().numpy(),
        indices.contiguous().numpy(),
        rows.detach().contiguous().numpy(),
        no_bias if bias is None else bias.detach().contiguous().numpy(),
        out,
    )
    return torch.from_numpy(out)
