"""Row-sparse ReLU and JumpReLU steps: once few latents are active, the decoder, the family's
math and the whole backward touch only the kept pre-activations (docs/internals.md)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.dictionaries import cpu_topk, kernels
from sparsecircuits.dictionaries.activations.base import ForwardOutput
from sparsecircuits.dictionaries.scratch import scratch
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.activations.base import Owner

STEP_MODES = ("auto", "dense", "sparse")
_mode = os.environ.get("SPARSECIRCUITS_SPARSE_STEP", "auto")
# "auto" runs the step sparsely when at most this fraction of the probe's pre-activations is
# kept. Both paths' costs grow with n·d_sae·d, so the crossover is a density: whole ReLU SAE
# step, d_sae 4096, 1 thread (CPU time), sparse over dense 4.7x at 3.1 % kept, 3.0x at 6.3 %,
# 1.7x at 12.5 % (about linear in the density, so even at ~20 %); 10 % leaves a margin.
MAX_DENSITY = 0.10
# Rows whose pre-activations decide the mode; the sparse path keeps them as its first chunk.
PROBE_ROWS = 256


def set_step_mode(mode: str) -> str:
    """Set how ReLU and JumpReLU train steps run (`auto` | `dense` | `sparse`); returns the
    previous mode. `auto` (default, also from `SPARSECIRCUITS_SPARSE_STEP`) picks per batch;
    every mode gives the same result to fp32 rounding."""
    global _mode
    if mode not in STEP_MODES:
        raise ValueError(f"sparse step mode must be one of {STEP_MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


def _current_mode() -> str:
    if _mode not in STEP_MODES:  # only the environment variable can set a bad value
        raise SparseCircuitsError(
            f"SPARSECIRCUITS_SPARSE_STEP must be one of {', '.join(STEP_MODES)}, got {_mode!r}"
        )
    return "dense" if kernels._dense_reference else _mode


def step_mode_of(coder: Any) -> str | None:
    """ "sparse" or "dense": how `coder`'s last switched forward ran; None for families (or
    owners) without the switch."""
    activation = getattr(coder, "activation", None)
    return getattr(activation, "step_mode", None)


class RowPattern:
    """Which pre-activations a step keeps, CSR by token: `cols [nnz]` (latents, increasing within
    a row) and `offsets [n + 1]` (row r is `offsets[r]:offsets[r + 1]`), int64."""

    def __init__(self, cols: Tensor, offsets: Tensor, d_sae: int) -> None:
        self.cols, self.offsets, self.d_sae = cols, offsets, d_sae
        self.n_rows = offsets.shape[0] - 1

    @functools.cached_property
    def rows(self) -> Tensor:
        """The token of every kept entry, `[nnz]` int64."""
        counts = self.offsets.diff()
        return torch.repeat_interleave(torch.arange(self.n_rows), counts)

    @functools.cached_property
    def latent_order(self) -> tuple[np.ndarray, np.ndarray]:
        """The entries grouped by latent (`cpu_topk.latent_order`), shared by the encoder's and
        the decoder's weight gradients."""
        return cpu_topk.latent_order(self.cols, self.d_sae)

    def scatter_outer(self, weights: Tensor, dense_rows: Tensor) -> Tensor:
        """`S.T @ dense_rows` `[d_sae, d]` for the sparse `S [n, d_sae]` holding `weights [nnz]`
        at the pattern's entries: row `cols[p]` gets `Σ_p weights[p] · dense_rows[row p]`."""
        return cpu_topk.scatter_outer(
            self.cols, weights, dense_rows, self.d_sae, row_of=self.rows, order=self.latent_order
        )


def _extract(dot: Tensor, bias: Tensor, cutoff: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(counts [rows], cols [nnz], pre [nnz])`: the entries of `dot [rows, d_sae] + bias [d_sae]`
    above `cutoff [d_sae]` (or NaN), by row, latents increasing."""
    dot_np, bias_np, cut_np = (t.detach().contiguous().numpy() for t in (dot, bias, cutoff))
    keep = _mark_buffer(*dot_np.shape)
    with cpu_topk._launch("_numba_sparse") as nb:
        counts = np.empty(dot_np.shape[0], np.int64)
        nb.mark_above(dot_np, bias_np, cut_np, keep, counts)
        offsets = np.zeros(dot_np.shape[0] + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        cols = np.empty(int(offsets[-1]), np.int64)
        values = np.empty(int(offsets[-1]), np.float32)
        nb.fill_marked(dot_np, bias_np, keep, keep.view(np.uint64), offsets, cols, values)
    return torch.from_numpy(counts), torch.from_numpy(cols), torch.from_numpy(values)


def _mark_buffer(rows: int, width: int) -> np.ndarray:
    """A `[rows, width rounded up to 8]` uint8 buffer of keep marks, zero past `width` (a
    `scratch` buffer: the marks are written and read within one `_extract`)."""
    padded = -(-width // 8) * 8
    buffer = scratch("sparse_step.marks", (rows, padded), torch.uint8).numpy()
    buffer[:, width:] = 0
    return buffer


def _count(dot: Tensor, bias: Tensor, cutoff: Tensor) -> np.ndarray:
    """Kept entries per row of `dot [rows, d_sae] + bias` (as `_extract`), int64 `[rows]`."""
    counts = np.empty(dot.shape[0], np.int64)
    arrays = (t.detach().contiguous().numpy() for t in (dot, bias, cutoff))
    with cpu_topk._launch("_numba_sparse") as nb:
        nb.count_above(*arrays, counts)
    return counts


def pre_activations(x_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """`(x_in @ W_enc).add_(b_enc)` `[n, d_sae]`: the dense path's pre-activations, the same bits
    as the sparse path's (whose kernels add the bias to each GEMM chunk's `x_in @ W_enc`)."""
    return (x_in @ W_enc).add_(b_enc)


# The largest fp32 GEMM output a row-sparse step holds at once (its kept `scratch` buffer).
_CHUNK_BYTES = 2**27


def chunk_rows(n_rows: int, d_sae: int) -> int:
    """Rows per encoder GEMM chunk of the row-sparse step: as many as fill a 128 MB fp32 output
    (a 4096-token batch whole at d_sae 4k, 2048 rows at 16k, 512 at 65k), at least 256. Fewer,
    larger GEMM calls pack the weight fewer times; whole step, 2 cores, interleaved rounds,
    median speed-up over 1024 rows (256 at 65k): 1.11 (JumpReLU SAE and ReLU transcoder, 4k),
    1.09 (both, 16k), 1.12 (JumpReLU SAE, 65k); 4096 rows at 16k gained no more than 2048."""
    return min(n_rows, max(256, _CHUNK_BYTES // (4 * d_sae)))


@dataclass
class _Probe:
    """The first rows' `x_in @ W_enc` `[rows, d_sae]`; the forward leaves the batch's
    `RowPattern` here (one object for the encoder's and decoder's backward, so the entries are
    grouped by latent once)."""

    dot: Tensor
    pattern: RowPattern | None = None


class _RowSparsePreActs(torch.autograd.Function):
    """`u = (x - b_in) @ W_enc + b_enc` (`pre_activations`) at the entries above `cutoff` only,
    `u [nnz]`; which entries those are is left as `probe.pattern`. The GEMM is dense (chunks of
    rows, never `[n, d_sae]` at once); the backward is sparse: `grad_W_enc = x_in.T @ G`, `grad_b_enc = Σ_rows G`, `grad_b_in =
    -W_enc @ grad_b_enc` for the sparse `G [n, d_sae]` holding `grad_u`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        b_in: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        cutoff: Tensor,
        probe: _Probe,
    ) -> Tensor:
        x_in = (x - b_in).contiguous()
        first = probe.dot.shape[0]
        rows = chunk_rows(max(x_in.shape[0] - first, 1), W_enc.shape[1])
        pieces = [_extract(probe.dot, b_enc, cutoff)]
        for part in x_in[first:].split(rows):
            buffer = scratch("sparse_step.chunk", (part.shape[0], W_enc.shape[1]))
            dot = torch.mm(part, W_enc, out=buffer)
            pieces.append(_extract(dot, b_enc, cutoff))
        counts, cols, values = (torch.cat(c) for c in zip(*pieces, strict=True))
        offsets = torch.zeros(x_in.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=offsets[1:])
        ctx.save_for_backward(x_in, W_enc)
        ctx.pattern = probe.pattern = RowPattern(cols, offsets, W_enc.shape[1])
        return values

    @staticmethod
    def backward(ctx: Any, grad_u: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_in, W_enc = ctx.saved_tensors
        pattern: RowPattern = ctx.pattern
        cols, offsets = pattern.cols, pattern.offsets
        grad_u = grad_u.contiguous()
        need_x, need_b_in, need_w, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_b_in = grad_W_enc = grad_b_enc = None
        if need_x:
            grad_x = F.embedding_bag(
                cols, W_enc.t().contiguous(), offsets[:-1], per_sample_weights=grad_u, mode="sum"
            )
        if need_w:
            grad_W_enc = pattern.scatter_outer(grad_u, x_in).t()
        if need_b or need_b_in:
            grad_b_enc = W_enc.new_zeros(W_enc.shape[1]).index_add_(0, cols, grad_u)
        if need_b_in:
            # Σ_rows of the input gradient is W_enc @ grad_b_enc: no [n, d_in] gradient for data
            grad_b_in = -(grad_x.sum(0) if grad_x is not None else W_enc @ grad_b_enc)
        return grad_x, grad_b_in, grad_W_enc, grad_b_enc if need_b else None, None, None


class _RowSparseDecode(torch.autograd.Function):
    """`out[r] = Σ_{p in row r} acts[p] · W_dec[cols[p]]` `[n, d_out]`; the backward touches only
    the kept entries and their decoder rows."""

    @staticmethod
    def forward(ctx: Any, acts: Tensor, W_dec: Tensor, pattern: RowPattern) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(acts, W_dec)
        ctx.pattern = pattern
        return F.embedding_bag(
            pattern.cols, W_dec, pattern.offsets[:-1], per_sample_weights=acts, mode="sum"
        )

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        acts, W_dec = ctx.saved_tensors
        pattern: RowPattern = ctx.pattern
        grad_out = grad_out.contiguous()
        grad_acts = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_acts = _gather_dot(W_dec, pattern, grad_out)
        if ctx.needs_input_grad[1]:
            grad_W_dec = pattern.scatter_outer(acts, grad_out)
        return grad_acts, grad_W_dec, None


def _gather_dot(table: Tensor, pattern: RowPattern, rows: Tensor) -> Tensor:
    """`out[p] = table[cols[p]] · rows[row p]`, `[nnz]` (fp32, CPU)."""
    out = np.empty(pattern.cols.shape[0], np.float32)
    with cpu_topk._launch("_numba_sparse") as nb:
        nb.csr_gather_dot(
            table.detach().contiguous().numpy(),
            pattern.cols.numpy(),
            pattern.offsets.numpy(),
            rows.detach().contiguous().numpy(),
            out,
        )
    return torch.from_numpy(out)


@dataclass
class RowSparseOutput(ForwardOutput):
    """`ForwardOutput` of a sparse step: the codes are `acts [nnz]` at `pattern`'s entries (zero
    where a kept entry is inactive: JumpReLU keeps the threshold's gradient window too);
    `kept_pre [nnz]` their pre-activations and `kept_threshold [nnz]` (JumpReLU) the entries'
    thresholds, both differentiable."""

    acts: Tensor | None = None
    pattern: RowPattern | None = None
    kept_pre: Tensor | None = None
    kept_threshold: Tensor | None = None

    def _parts(self) -> tuple[Tensor, RowPattern]:
        assert self.acts is not None and self.pattern is not None
        return self.acts, self.pattern

    @property
    def feature_acts(self) -> Tensor:
        """Dense feature activations `[n, d_sae]`, scattered from the kept entries (differentiable)."""
        if self.dense_acts is None:
            acts, pattern = self._parts()
            dense = acts.new_zeros(pattern.n_rows, self.d_sae)
            self.dense_acts = dense.index_put((pattern.rows, pattern.cols), acts)
        return self.dense_acts

    def decode(self, W_dec: Tensor) -> Tensor:
        """`feature_acts @ W_dec` `[n, d_out]` (no bias), touching only the kept entries."""
        acts, pattern = self._parts()
        return _RowSparseDecode.apply(acts.contiguous(), W_dec, pattern)

    def l0(self) -> Tensor:
        """Mean number of nonzero features per token (0-dim)."""
        acts, pattern = self._parts()
        return (acts != 0).sum().float() / max(pattern.n_rows, 1)

    def fired_counts(self) -> Tensor:
        """Number of tokens in which each latent was nonzero, int64 `[d_sae]`."""
        acts, pattern = self._parts()
        return torch.bincount(pattern.cols[acts.detach() != 0], minlength=self.d_sae)

    def weighted_l1(self, decoder_norms: Tensor) -> Tensor:
        """Mean over tokens of `Σ_i |f_i| · ||W_dec[i]||` (0-dim, differentiable)."""
        acts, pattern = self._parts()
        return (acts.abs() * kernels.take(decoder_norms, pattern.cols)).sum() / max(
            pattern.n_rows, 1
        )


def applies(owner: Owner, x: Tensor) -> bool:
    """Whether a switched step may run sparsely for `owner` on `x [n, d_in]`: a per-layer
    `Dictionary` on the CPU, fp32, with autograd on (the train step)."""
    from sparsecircuits.dictionaries.base import Dictionary

    return (
        isinstance(owner, Dictionary)
        and owner.W_enc is not None
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == owner.W_enc.dtype == torch.float32
        and x.dim() == 2
    )


def switched_encode(
    owner: Owner,
    x: Tensor,
    cutoff: Tensor,
    dense: Callable[[Tensor], ForwardOutput],
    sparse: Callable[[Tensor, RowPattern], RowSparseOutput],
) -> tuple[ForwardOutput, str]:
    """`(codes, "dense" | "sparse")`: `x [n, d_in]` encoded densely (`dense(x - b_in)`) or
    row-sparsely (`sparse(kept pre-acts, pattern)`), keeping the pre-activations above `cutoff
    [d_sae]` (the entries with a nonzero activation or gradient). `auto` goes sparse when at most
    `MAX_DENSITY` of the first `PROBE_ROWS` rows' pre-activations are kept. Call `applies` first."""
    assert owner.W_enc is not None
    W_enc, b_enc, b_in = owner.W_enc, owner.b_enc, owner.b_in
    mode = _current_mode()
    if mode == "dense":
        return dense(x - b_in), "dense"
    with torch.no_grad():
        probe_dot = (x[:PROBE_ROWS] - b_in) @ W_enc
        counts = _count(probe_dot, b_enc, cutoff)
    density = float(counts.sum()) / max(probe_dot.numel(), 1)
    if mode == "auto" and density > MAX_DENSITY:
        return dense(x - b_in), "dense"
    probe = _Probe(probe_dot)
    values = _RowSparsePreActs.apply(x, b_in, W_enc, b_enc, cutoff, probe)
    assert probe.pattern is not None
    return sparse(values, probe.pattern), "sparse"


def jumprelu_cutoffs(threshold: Tensor, bandwidth: float) -> Tensor:
    """Per latent, the largest fp32 `t` with `(t - θ) / ε <= -1/2` as the dense JumpReLU computes
    it, `[d_sae]`: `u > t` exactly when `u` is active (`u > θ`) or inside the threshold's
    rectangle window (`|u - θ| / ε < 1/2`), the entries with a nonzero output or gradient.
    Found by bisection on the floats' order (the quotient is monotone in `u`), from a bracket
    of `_NEAR` floats either side of `θ - ε/2` where that brackets the boundary (8 halvings),
    else from `[θ - 2ε, θ]` (33): the same float either way."""
    theta = threshold.detach().float()
    guess = _order(theta - bandwidth / 2)
    lo, hi = guess - _NEAR, guess + _NEAR
    lo_ok = ~_inside_window(lo, theta, bandwidth)
    hi_ok = _inside_window(hi, theta, bandwidth)
    # (θ - 2ε - θ)/ε <= -1/2, and the float below θ where θ - 2ε rounds back up to θ (ε under
    # a quarter of θ's spacing)
    wide_lo = torch.minimum(_order(theta - 2 * bandwidth), _order(theta) - 1)
    lo = torch.where(lo_ok, lo, wide_lo)
    hi = torch.where(hi_ok, hi, _order(theta))  # (θ - θ)/ε = 0 > -1/2
    span = int((hi - lo).max()) if hi.numel() else 1
    for _ in range(max(span - 1, 1).bit_length()):  # until hi - lo == 1 in every row
        mid = lo + (hi - lo) // 2
        inside = _inside_window(mid, theta, bandwidth)
        hi = torch.where(inside, mid, hi)
        lo = torch.where(inside, lo, mid)
    return _from_order(lo)


# Order keys either side of `θ - ε/2` in the cutoffs' first bracket: the boundary lies within a
# few floats of it unless `θ - ε/2` is near zero, where the floats crowd (the wide bracket then).
_NEAR = 64


def _inside_window(keys: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """Whether the floats of order `keys` are above the window's lower edge, `(t - θ)/ε > -1/2`,
    as the dense JumpReLU computes the quotient."""
    return (_from_order(keys) - theta) / bandwidth > -0.5


def _order(values: Tensor) -> Tensor:
    """int64 keys that order like the fp32 `values` (−0.0 and 0.0 share a key's neighbours)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _from_order(keys: Tensor) -> Tensor:
    """Inverse of `_order`."""
    bits = torch.where(keys < 0, (-(keys + 1)) | -0x80000000, keys)
    return bits.to(torch.int32).view(torch.float32)
