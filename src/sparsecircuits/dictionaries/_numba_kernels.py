"""The numba kernels behind `cpu_topk` (imported on their first use; compiled code cached on disk)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload


def order_key(v):  # type: ignore[no-untyped-def]  # numba matches the overloads' bare signature
    """A number that orders like the value `v`: an fp32 value is its own key; the uint16 bits of
    a bf16 map to an int32 (the Python form; compiled kernels use the overload below)."""
    if isinstance(v, (np.uint16, np.int16)):
        x = int(np.uint16(v))
        return x ^ (0x8000 | ((x >> 15) * 0x7FFF))
    return v


@overload(order_key, inline="always")
def _order_key(v):  # type: ignore[no-untyped-def]  # (signatures must match exactly)
    if isinstance(v, types.Float):
        return lambda v: v
    if isinstance(v, types.Integer) and v.bitwidth == 16:

        def bf16_key(v):  # type: ignore[no-untyped-def]
            # sign-magnitude bits -> integer order: flip all bits of negatives, set the sign
            # bit of positives, so larger floats get larger integers
            x = np.int32(v)
            return x ^ (0x8000 | ((x >> 15) * 0x7FFF))

        return bf16_key
    return None


# fastmath without "nnan": a NaN must not turn comparisons into poison (runaway quickselect)
_NO_NAN_ASSUMPTION = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(inline="always", cache=True)
def _select_top(v: Any, ix: Any, count: int, k: int) -> None:
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


# Rows per scratch allocation of `topk_rows` (per-row allocations cost as much as the search).
_ROWS_PER_TASK = 64


@njit(inline="always", boundscheck=False, cache=True)
def _segment_maxima(row: Any, seg: int, seg_max: Any) -> None:
    # segment s = elements s, s + nseg, s + 2·nseg, ...: its maximum is an elementwise max of
    # `seg` contiguous slices (slices, not `row[j·nseg + s]`, let LLVM vectorise)
    nseg = seg_max.shape[0]
    first = row[:nseg]
    for s in range(nseg):
        seg_max[s] = order_key(first[s])
    for j in range(1, seg):
        block = row[j * nseg : (j + 1) * nseg]
        for s in range(nseg):
            seg_max[s] = max(seg_max[s], order_key(block[s]))


@njit(inline="always", boundscheck=False, cache=True)
def _candidates(row: Any, seg_max: Any, tau: Any, cand: Any, cand_idx: Any) -> int:
    # every element >= tau (they all sit in segments whose maximum is >= tau): their count
    nseg, w = seg_max.shape[0], row.shape[0]
    c = 0
    for s in range(nseg):
        if seg_max[s] >= tau:
            for t in range(s, w, nseg):
                x = order_key(row[t])
                if x >= tau:
                    cand[c] = x
                    cand_idx[c] = t
                    c += 1
    return c


@njit(parallel=True, fastmath=_NO_NAN_ASSUMPTION, boundscheck=False, nogil=True, cache=True)
def topk_rows(scores: Any, k: int, seg: int, out_keys: Any, out_idx: Any) -> None:
    """Top `k` keys of each row of `scores [n, w]` into `out_keys, out_idx [n, k]` (unsorted);
    segments of `seg` strided elements (`w % seg == 0`, `k <= w / seg`). Any keyed dtype; the
    library sends it fp32 rows (bf16 bits go to `topk_rows_bf16`)."""
    n, w = scores.shape
    nseg = w // seg
    for task in prange((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        key0 = order_key(scores[0, 0])
        seg_max = np.full(nseg, key0)
        ranked = np.full(nseg, key0)
        order = np.empty(nseg, np.int64)
        cand = np.full(w, key0)
        cand_idx = np.empty(w, np.int64)
        for r in range(task * _ROWS_PER_TASK, min(n, (task + 1) * _ROWS_PER_TASK)):
            row = scores[r]
            _segment_maxima(row, seg, seg_max)
            for s in range(nseg):
                ranked[s] = seg_max[s]
                order[s] = s
            _select_top(ranked, order, nseg, k)
            tau = ranked[0]
            for a in range(1, k):
                tau = min(tau, ranked[a])
            c = _candidates(row, seg_max, tau, cand, cand_idx)
            if c >= k:
                _select_top(cand, cand_idx, c, k)
                for a in range(k):
                    out_keys[r, a] = cand[a]
                    out_idx[r, a] = cand_idx[a]
            else:  # only NaNs (every comparison false) get here: valid indices, NaN values
                for a in range(k):
                    out_keys[r, a] = order_key(row[a])
                    out_idx[r, a] = a


@njit(inline="always", boundscheck=False, cache=True)
def _kth_largest_key16(keys: Any, count: int, k: int, hist: Any) -> int:
    # the k-th largest of the 16-bit keys `keys[:count]` (count >= k): a 256-bin histogram of
    # the high bytes finds its bin, a second one of the low bytes within that bin finds it
    hist[:] = 0
    for i in range(count):
        hist[keys[i] >> 8] += 1
    above, high = 0, 255
    while above + hist[high] < k:
        above += hist[high]
        high -= 1
    hist[:] = 0
    for i in range(count):
        if keys[i] >> 8 == high:
            hist[keys[i] & 255] += 1
    need, low = k - above, 255
    while hist[low] < need:
        need -= hist[low]
        low -= 1
    return (high << 8) | low


@njit(parallel=True, boundscheck=False, nogil=True, cache=True)
def topk_rows_bf16(scores: Any, k: int, seg: int, out_keys: Any, out_idx: Any) -> None:
    """`topk_rows` for the uint16 bits of bf16 `scores [n, w]`: int32 order keys into `out_keys`.
    16-bit keys let histograms find the thresholds that `topk_rows` finds by quickselect."""
    n, w = scores.shape
    nseg = w // seg
    for task in prange((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        seg_max = np.empty(nseg, np.int32)
        hist = np.empty(256, np.int64)
        cand = np.empty(w, np.int32)
        cand_idx = np.empty(w, np.int64)
        for r in range(task * _ROWS_PER_TASK, min(n, (task + 1) * _ROWS_PER_TASK)):
            row = scores[r]
            _segment_maxima(row, seg, seg_max)
            c = _candidates(
                row, seg_max, _kth_largest_key16(seg_max, nseg, k, hist), cand, cand_idx
            )
            kth = _kth_largest_key16(cand, c, k, hist)
            a = 0
            for i in range(c):  # the keys above the k-th, then ties with it in index order
                if cand[i] > kth:
                    out_keys[r, a] = cand[i]
                    out_idx[r, a] = cand_idx[i]
                    a += 1
            for i in range(c):
                if a == k:
                    break
                if cand[i] == kth:
                    out_keys[r, a] = cand[i]
                    out_idx[r, a] = cand_idx[i]
                    a += 1


@njit(parallel=True, fastmath=True, boundscheck=False, nogil=True, cache=True)
def gather_dot_bias(table: Any, idx: Any, rows: Any, bias: Any, out: Any) -> None:
    """`out[r, c] = table[idx[r, c]] . rows[r] (+ bias[idx[r, c]] when `bias` is non-empty)`."""
    n, c = idx.shape
    d = rows.shape[1]
    with_bias = bias.shape[0] > 0
    for r in prange(n):
        x = rows[r]
        j = 0
        # four dot products per pass over `x`: four independent accumulators instead of one
        # dependent chain (1.1-1.3x at d 256 on 2 cores)
        while j + 4 <= c:
            w0, w1 = table[idx[r, j]], table[idx[r, j + 1]]
            w2, w3 = table[idx[r, j + 2]], table[idx[r, j + 3]]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for t in range(d):
                a0 += w0[t] * x[t]
                a1 += w1[t] * x[t]
                a2 += w2[t] * x[t]
                a3 += w3[t] * x[t]
            out[r, j], out[r, j + 1], out[r, j + 2], out[r, j + 3] = a0, a1, a2, a3
            j += 4
        for jj in range(j, c):
            w = table[idx[r, jj]]
            acc = np.float32(0.0)
            for t in range(d):
                acc += w[t] * x[t]
            out[r, jj] = acc
        if with_bias:
            for jj in range(c):
                out[r, jj] += bias[idx[r, jj]]


@njit(boundscheck=False, nogil=True, cache=True)
def entries_by_latent(idx: Any, d_sae: int, start: Any, entry: Any) -> None:
    """Counting sort of the flat entries of `idx [n, c]` by latent: entries of latent j are
    `entry[start[j]:start[j + 1]]` (flat positions `r·c + s`, ascending), `start [d_sae + 1]`."""
    flat = idx.reshape(-1)
    start[:] = 0
    for e in range(flat.shape[0]):
        start[flat[e] + 1] += 1
    for j in range(d_sae):
        start[j + 1] += start[j]
    fill = start[:-1].copy()
    for e in range(flat.shape[0]):
        j = flat[e]
        entry[fill[j]] = e
        fill[j] += 1


_BLOCK = 16  # latents per tile: a transposed write of 16 fp32 is one 64-byte line


@njit(parallel=True, fastmath=True, boundscheck=False, nogil=True, cache=True)
def scatter_outer(
    start: Any,
    entry: Any,
    weights: Any,
    rows: Any,
    c: int,
    row_of: Any,
    transposed: bool,
    out: Any,
) -> None:
    """`Σ_e weights[e] · rows[row of e]` over the entries `e` of each latent j (`start`, `entry`
    from `entries_by_latent`), written to `out[j]` (`[d_sae, d]`) or, `transposed`, to
    `out[:, j]` (`[d, d_sae]`); every element of `out` is written once (zeros for latents
    without entries). An entry's row is `e // c` for `c > 0` (entries `[n, c]`), else
    `row_of[e]` (CSR entries). Latents go in tiles of `_BLOCK`."""
    d = rows.shape[1]
    d_sae = start.shape[0] - 1
    flat_w = weights.reshape(-1)
    n_tiles = (d_sae + _BLOCK - 1) // _BLOCK
    for tile in prange(n_tiles):
        j0 = tile * _BLOCK
        width = min(_BLOCK, d_sae - j0)
        acc = np.zeros((_BLOCK, d), rows.dtype)
        for b in range(width):
            a = acc[b]
            for p in range(start[j0 + b], start[j0 + b + 1]):
                e = entry[p]
                w = flat_w[e]
                if w == 0:  # inactive kept entries (ReLU'd top-k values, JumpReLU's window)
                    continue
                x = rows[e // c] if c > 0 else rows[row_of[e]]
                for t in range(d):
                    a[t] += w * x[t]
        if transposed:
            for t in range(d):
                for b in range(width):
                    out[t, j0 + b] = acc[b, t]
        else:
            for b in range(width):
                out[j0 + b] = acc[b]


@njit(parallel=True, fastmath=_NO_NAN_ASSUMPTION, boundscheck=False, nogil=True, cache=True)
def remove_parallel_rows(weight: Any, grad: Any, eps: float) -> None:
    """`grad[i] -= (grad[i] · u) u` with `u = weight[i] / max(‖weight[i]‖, eps)`, for
    `weight, grad [rows, d]`, in one pass per row."""
    n, d = weight.shape
    for i in prange(n):
        w, g = weight[i], grad[i]
        sq = np.float32(0.0)
        dot = np.float32(0.0)
        for t in range(d):
            sq += w[t] * w[t]
            dot += g[t] * w[t]
        norm = max(np.sqrt(sq), eps)
        coef = dot / norm / norm
        for t in range(d):
            g[t] -= coef * w[t]


@njit(parallel=True, fastmath=_NO_NAN_ASSUMPTION, boundscheck=False, nogil=True, cache=True)
def normalize_rows(weight: Any, eps: float) -> None:
    """`weight[i] /= max(‖weight[i]‖, eps)` for `weight [rows, d]`, in place."""
    n, d = weight.shape
    for i in prange(n):
        w = weight[i]
        sq = np.float32(0.0)
        for t in range(d):
            sq += w[t] * w[t]
        norm = max(np.sqrt(sq), eps)
        for t in range(d):
            w[t] /= norm
