"""The numba kernels behind `sparse_step` (imported on first use; compiled code cached on disk):
row-sparse extraction of pre-activations above per-latent cutoffs, and the CSR gather-dot."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange


# No fastmath: the kept set is decided by exact comparisons, and NaN must be kept (so a NaN
# pre-activation reaches the loss, as on the dense path).
# The pre-activation is `dot[r, j] + bias[j]` in fp32, the bits of torch's `(x @ W).add_(b)`.
@njit(parallel=True, boundscheck=False, nogil=True, cache=True)
def count_above(dot: Any, bias: Any, cutoff: Any, counts: Any) -> None:
    """`counts[r]` = number of `j` with `dot[r, j] + bias[j] > cutoff[j]` (or NaN)."""
    n, w = dot.shape
    for r in prange(n):
        row = dot[r]
        c = 0
        for j in range(w):
            v = row[j] + bias[j]
            c += (v > cutoff[j]) | (v != v)
        counts[r] = c


@njit(parallel=True, boundscheck=False, nogil=True, cache=True)
def mark_above(dot: Any, bias: Any, cutoff: Any, keep: Any, counts: Any) -> None:
    """`keep[r, j]` = 1 where `dot[r, j] + bias[j]` is kept (as `count_above`), else 0, for `j <
    w` (columns past `w` are left alone); `counts[r]` as `count_above`."""
    n, w = dot.shape
    for r in prange(n):
        row = dot[r]
        mark = keep[r]
        c = 0
        for j in range(w):
            v = row[j] + bias[j]
            m = (v > cutoff[j]) | (v != v)
            mark[j] = m
            c += m
        counts[r] = c


@njit(parallel=True, boundscheck=False, nogil=True, cache=True)
def fill_marked(
    dot: Any, bias: Any, keep: Any, words: Any, offsets: Any, cols: Any, values: Any
) -> None:
    """Write row `r`'s entries marked in `keep [n, w8]` (uint8; `words` is the same memory as
    uint64 `[n, w8 / 8]`, zero past `w`) at `offsets[r]..`: latent in `cols`, pre-activation
    `dot + bias` in `values`, latents increasing. Eight marks are tested at once, so a sparse
    row costs about one branch per eight latents."""
    n = dot.shape[0]
    for r in prange(n):
        row = dot[r]
        mark = keep[r]
        word = words[r]
        p = offsets[r]
        for q in range(word.shape[0]):
            if word[q] != 0:
                for j in range(8 * q, 8 * q + 8):
                    if mark[j]:
                        cols[p] = j
                        values[p] = row[j] + bias[j]
                        p += 1


@njit(parallel=True, fastmath=True, boundscheck=False, nogil=True, cache=True)
def csr_gather_dot(table: Any, cols: Any, offsets: Any, rows: Any, out: Any) -> None:
    """`out[p] = table[cols[p]] . rows[r]` for every entry `p` of row `r` (`offsets[r] <= p <
    offsets[r + 1]`)."""
    n = rows.shape[0]
    d = rows.shape[1]
    for r in prange(n):
        x = rows[r]
        for p in range(offsets[r], offsets[r + 1]):
            w = table[cols[p]]
            acc = np.float32(0.0)
            for t in range(d):
                acc += w[t] * x[t]
            out[p] = acc
