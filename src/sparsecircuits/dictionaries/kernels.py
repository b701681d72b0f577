"""Sparse TopK encode/decode kernels (the training hot path), with dense references and the
verified bf16 selection (docs/internals.md, docs/performance.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.cpu import has_fast_bf16 as cpu_has_fast_bf16
from sparsecircuits.dictionaries import cpu_topk
from sparsecircuits.dictionaries.scratch import scratch
from sparsecircuits.errors import SparseCircuitsError


class TopKCodes(NamedTuple):
    """Sparse codes: `values`/`indices` `[n, k]`; `aux_values`/`aux_indices` `[n, k_aux]` or None."""

    values: Tensor
    indices: Tensor
    aux_values: Tensor | None
    aux_indices: Tensor | None


SELECTION_MODES = ("auto", "fp32", "bf16")
_selection = os.environ.get("SPARSECIRCUITS_TOPK_SELECTION", "auto")
# Where the verified bf16 selection pays (whole train step, 2 cores, d_in 256, against fp32
# selection, both with the numba top-k): d_sae 4k k 32 +36 %, 16k k 32 +65 %, 64k k 32 +57 %;
# k 128 -2 % (4k) / -8 % (16k).
_BF16_MIN_D_SAE = 4096
# Its per-call setup reads W_enc three times (norms, a transposed copy), which a batch of a few
# prompt positions (a trace's clean run) does not pay back: "auto" keeps those in fp32.
_BF16_MIN_ROWS = 512
_BF16_MAX_K = 64
# At d_sae 65k the GEMM is most of the step and k 128 pays too (the selector widens its
# candidates where k + margin cannot certify a row): 65k k 128 transcoder step +13 % over fp32
_BF16_WIDE_D_SAE = 65536
_BF16_WIDE_MAX_K = 128
_dense_reference = False


def set_topk_selection(mode: str) -> str:
    """Set how TopK encoders select (`auto` | `fp32` | `bf16`); returns the previous mode. `auto`
    (default, also from `SPARSECIRCUITS_TOPK_SELECTION`) uses the verified bf16 selection on CPUs
    with native bf16, `d_sae >= 4096` and `k <= 64` (`k <= 128` from `d_sae` 65536); all modes
    give the same top-k."""
    global _selection
    if mode not in SELECTION_MODES:
        raise ValueError(f"topk selection must be one of {SELECTION_MODES}, got {mode!r}")
    previous, _selection = _selection, mode
    return previous


def selection_for(
    d_sae: int, k: int, device_type: str, dtype: torch.dtype, signed: bool = False
) -> str:
    """The selection a TopK encoder of this shape uses now: "bf16" (verified) or "fp32"."""
    mode = _selection
    if mode not in SELECTION_MODES:  # only the environment variable can set a bad value
        raise SparseCircuitsError(
            f"SPARSECIRCUITS_TOPK_SELECTION must be one of {', '.join(SELECTION_MODES)}, "
            f"got {mode!r}"
        )
    eligible = (
        mode != "fp32"
        and not signed
        and device_type == "cpu"
        and dtype == torch.float32
        and k + _margin(k) < d_sae
    )
    max_k = _BF16_WIDE_MAX_K if d_sae >= _BF16_WIDE_D_SAE else _BF16_MAX_K
    pays = d_sae >= _BF16_MIN_D_SAE and k <= max_k and cpu_has_fast_bf16()
    if eligible and (mode == "bf16" or pays):
        return "bf16"
    return "fp32"


def _bf16_selection(x_in: Tensor, W_enc: Tensor, k: int, signed: bool) -> bool:
    """Whether `_encode_select` uses the verified bf16 selection for these inputs."""
    if x_in.dtype != W_enc.dtype:
        return False
    if _selection == "auto" and x_in.reshape(-1, x_in.shape[-1]).shape[0] < _BF16_MIN_ROWS:
        return False
    return selection_for(W_enc.shape[1], k, x_in.device.type, x_in.dtype, signed) == "bf16"


def _margin(k: int) -> int:
    """Extra bf16 candidates per row (measured on the embedded model's activations, k 32: with
    8 / 16 / 32 extra, 88-99 / 22-63 / 0-0.5 % of rows needed the fp32 fallback at d_sae 2k-16k;
    with 40, 0.0 % at 4k and 16k in the benchmark batch)."""
    return 32 + k // 4


def take(values: Tensor, index: Tensor) -> Tensor:
    """`values[index]` for `values [m, ...]` and an int64 `index` of any shape (the result is
    `[*index.shape, ...]`), with a deterministic backward. `values[index]`'s backward accumulates
    with `index_put_`, which on CPU with more than one thread adds floats atomically in thread
    order, so the gradient's last bits change from run to run; `index_select`'s adds in index
    order."""
    return values.index_select(0, index.reshape(-1)).view(*index.shape, *values.shape[1:])


def gather_dot(table: Tensor, indices: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """`out[r, c] = table[indices[r, c]] · rows[r] (+ bias[indices[r, c]])`: `[n, c]` from
    `table [m, d]`, `indices [n, c]`, `rows [n, d]`, `bias [m]`, without materialising the
    `[n, c, d]` gather: the numba kernel on CPU (fp32), else torch's embedding-bag
    per-sample-weight backward, which is exactly this gather-dot. No autograd."""
    if cpu_topk.supports_gather(table, indices, rows):
        return cpu_topk.gather_dot(table, indices, rows, bias)
    dots = _gather_dot_torch(table, indices, rows)
    return dots if bias is None else dots + take(bias, indices)


def _gather_dot_torch(table: Tensor, indices: Tensor, rows: Tensor) -> Tensor:
    with torch.enable_grad():
        weights = torch.ones(indices.shape, dtype=rows.dtype, device=rows.device)
        weights.requires_grad_(True)
        out = F.embedding_bag(indices, table.detach(), per_sample_weights=weights, mode="sum")
        (dots,) = torch.autograd.grad(out, weights, grad_outputs=rows.detach())
    return dots


class _Bf16Selector:
    """Verified bf16 top-k selection for one encoder call (docs/internals.md)."""

    U = 2.0**-8  # bf16 unit roundoff

    def __init__(self, W_enc: Tensor, b_enc: Tensor, k: int, W_t: Tensor):
        d_in = W_enc.shape[0]
        self.W_aug = _bias_row_appended(W_enc, b_enc)  # [d_in + pad, d_sae] bf16
        self.W, self.b, self.W_t, self.k = W_enc, b_enc, W_t, k
        self.n_max = float(W_t.norm(dim=1).max())  # max ‖W_enc[:, j]‖ over contiguous rows
        self.b_max = float(b_enc.abs().max())
        terms = d_in + 1  # the bias enters the GEMM's fp32 sums as one more product
        gamma = terms * 2.0**-24 / (1 - terms * 2.0**-24)  # fp32 dot-product rounding
        u = self.U
        # |score - exact| <= c_x·|x|·max|W_j| + 2u·max|b| + 2.05u·|score|: input roundings of
        # x and W (2u + u²), fp32 accumulation (γ, twice: the bf16 GEMM and our fp32
        # rescoring); the bias's rounding to bf16 (u) and its share of γ stay under 2u·|b|
        self.c_x = (2 * u + u * u + 2 * gamma) * (1 + u) ** 2 * 1.01
        self.fallback_rows = 0  # rows recomputed in fp32
        self.widened_rows = 0  # rows verified again on more candidates (counted per widening)
        self.n_candidates = k + _margin(k)  # per row, before any widening

    def __call__(self, part: Tensor) -> tuple[Tensor, Tensor]:
        """`(values, indices) [rows, k]` of `part [rows, d_in]`: exact fp32 top-k (un-ReLU'd)."""
        k, widest = self.k, _widest(self.W.shape[1], self.k)
        scores = _addmm_into(None, self._augmented(part), self.W_aug, "topk.scores")
        values, indices, failed = self._verified(scores, part, self.n_candidates)
        # rows whose candidates were too few: twice as many bf16 candidates, still verified
        wider = 2 * self.n_candidates
        if 2 * failed.numel() > part.shape[0] and wider <= widest:
            self.n_candidates = wider  # most rows needed more: the next chunks start wider
        while failed.numel() and wider <= widest:
            self.widened_rows += int(failed.numel())
            v, i, still = self._verified(scores[failed], part[failed], wider)
            values[failed], indices[failed] = v, i
            failed, wider = failed[still], 2 * wider
        if failed.numel():
            self.fallback_rows += int(failed.numel())
            pre = torch.addmm(self.b, part[failed], self.W)
            values[failed], indices[failed] = row_topk(pre, k)
        return values, indices

    def _augmented(self, part: Tensor) -> Tensor:
        """`[part, 1, 0…]` in bf16, `[rows, d_in + pad]`: the rows that meet `W_aug`'s bias row."""
        rows, d_in = part.shape
        x_aug = scratch("topk.x_aug", (rows, self.W_aug.shape[0]), torch.bfloat16)
        x_aug[:, :d_in].copy_(part)
        x_aug[:, d_in] = 1.0
        x_aug[:, d_in + 1 :] = 0.0
        return x_aug

    def _verified(
        self, scores: Tensor, part: Tensor, n_candidates: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Top k of the `n_candidates` best bf16 `scores [rows, d_sae]` rescored in fp32:
        `(values, indices) [rows, k]` and the positions of the rows whose check failed."""
        u, k = self.U, self.k
        cand_scores, cand = row_topk(scores, n_candidates)
        exact = gather_dot(self.W_t, cand, part, self.b)
        values, pos = exact.topk(k, dim=-1, sorted=False)
        indices = cand.gather(1, pos)
        last = cand_scores.min(dim=1).values.float()
        beyond = (
            last
            + self.c_x * part.norm(dim=1) * self.n_max
            + 2 * u * self.b_max
            + 2.05 * u * last.abs()
        )
        failed = (~(values.min(dim=1).values > beyond)).nonzero(as_tuple=True)[0]
        return values, indices, failed


def _rows_of(W_enc: Tensor, keep: bool) -> Tensor:
    """`W_enc.T` as contiguous rows `[d_sae, d_in]`: a fresh tensor when the caller `keep`s it
    (the backward's input gradient reads it), else the `scratch` buffer, valid for this forward."""
    if keep or W_enc.device.type != "cpu":
        return W_enc.t().contiguous()
    return scratch("topk.w_t", (W_enc.shape[1], W_enc.shape[0]), W_enc.dtype).copy_(W_enc.t())


def _widest(d_sae: int, k: int) -> int:
    """The most bf16 candidates per row the verified selection widens to before recomputing
    a row in fp32: `8 (k + margin)`, at most `d_sae / 32` (the numba top-k's limit) and
    `d_sae / 2`."""
    return min(8 * (k + _margin(k)), d_sae // cpu_topk.SEGMENT, d_sae // 2)


def _addmm_into(bias: Tensor | None, rows: Tensor, W: Tensor, name: str) -> Tensor:
    """`torch.addmm(bias, rows, W)` (or `rows @ W` without a bias; the same bits) written into
    the `scratch` buffer `name` on CPU: a fresh `[rows, d_sae]` output would be page-faulted in
    on every chunk (at d_sae 65k a quarter of the fp32 step's GEMM time). Valid until the next
    call with that name."""
    if rows.device.type != "cpu":
        return rows @ W if bias is None else torch.addmm(bias, rows, W)
    out = scratch(name, (rows.shape[0], W.shape[1]), rows.dtype)
    if bias is None:
        return torch.mm(rows, W, out=out)
    return torch.addmm(bias, rows, W, out=out)


def _bias_row_appended(W: Tensor, b: Tensor) -> Tensor:
    """`[W; b; 0…]` in bf16, `[d_in + pad, d_sae]` with `d_in + pad` the next even number above
    `d_in`: the bias as one more input row, so `[x, 1, 0…] @ W_aug` is `x @ W + b` from one GEMM
    (an `addmm` first copies the bias into its whole `[rows, d_sae]` output: 13-18 % of the bf16
    GEMM's time at d_sae 4k-65k, d_in 256, 2 cores). bf16 pairs its inputs, hence the even width."""
    d_in, d_sae = W.shape
    W_aug = scratch("topk.w_aug", (d_in + 2 - d_in % 2, d_sae), torch.bfloat16)
    W_aug[:d_in].copy_(W)
    W_aug[d_in].copy_(b)
    W_aug[d_in + 1 :].zero_()
    return W_aug


def _groups(width: int, k: int) -> int:
    """How many strided groups `row_topk` splits a row of `width` into (1: plain top-k).

    Blocks of `G` elements (`G` = groups) with `width / G >= 8k` blocks per row measured fastest
    on 2 CPU cores (benchmarks/bench_breakdown.py): 26-42 % less than `torch.topk` at 4k-16k."""
    groups = 1
    while groups < 16 and width % (2 * groups) == 0 and width // (2 * groups) >= 8 * k:
        groups *= 2
    return groups


def row_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`scores.topk(k, dim=-1, sorted=False)` for `scores [n, width]`, exact, but faster on CPU:
    the numba kernel (`cpu_topk.row_topk`, fp32 values) where it applies, else `blocked_topk`.
    Returns `(values, indices)` `[n, k]`, differentiable in `scores` like `torch.topk`."""
    if cpu_topk.supports(scores, k):
        values, indices = cpu_topk.row_topk(scores, k)
        if scores.requires_grad:  # the kernel's values carry no graph: gather them from it
            values = scores.gather(1, indices)
        # the kernel returns fp32; bf16 scores' values are exact in bf16, so this loses nothing
        return values.to(scores.dtype), indices
    return blocked_topk(scores, k)


def blocked_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`scores.topk(k, dim=-1, sorted=False)` in torch ops, faster on CPU: `(values, indices)`.

    The top k of a row lie in the k strided blocks with the largest maxima, so one top-k over the
    block maxima and one over the `G·k` gathered candidates replace the top-k over the row (ties
    may pick other equal-valued elements than `torch.topk`).
    """
    n, width = scores.shape
    groups = _groups(width, k)
    if groups == 1 or scores.device.type != "cpu":
        return scores.topk(k, dim=-1, sorted=False)
    blocks = width // groups
    grouped = scores.view(n, groups, blocks)
    top_blocks = grouped.amax(1).topk(k, dim=-1, sorted=False).indices  # [n, k]
    candidates = grouped.gather(2, top_blocks[:, None, :].expand(n, groups, k)).reshape(n, -1)
    values, pos = candidates.topk(k, dim=-1, sorted=False)
    indices = (pos // k) * blocks + top_blocks.gather(1, pos % k)
    return values, indices


def _select(pre_acts: Tensor, k: int, signed: bool) -> tuple[Tensor, Tensor]:
    """Top-k of `pre_acts` rows: ReLU'd largest values, or (signed) largest |value| keeping sign."""
    if signed:
        indices = row_topk(pre_acts.abs(), k)[1]
        return pre_acts.gather(-1, indices), indices
    values, indices = row_topk(pre_acts, k)
    return values.relu(), indices


def _select_aux(
    pre_acts: Tensor, aux_mask: Tensor, aux_k: int, signed: bool
) -> tuple[Tensor, Tensor]:
    """Top-`aux_k` per row among the latents where `aux_mask` is True, computed on those columns
    only (`aux_k <= #dead` is the caller's job)."""
    dead = aux_mask.nonzero().squeeze(1)
    return _select_dead(pre_acts.index_select(-1, dead), dead, aux_k, signed)


def _select_dead(
    dead_pre: Tensor, dead: Tensor, aux_k: int, signed: bool, fast: bool = False
) -> tuple[Tensor, Tensor]:
    """Top-`aux_k` of the dead latents' pre-activations `dead_pre [n, >= #dead]` (columns of the
    latents `dead [#dead]`, then any `-inf` padding): values (ReLU'd unless `signed`) and latent
    indices `[n, aux_k]`. `fast` selects with `row_topk` (the numba kernel where the width
    allows) instead of `torch.topk`, which the dense reference keeps."""
    scores = dead_pre.abs() if signed else dead_pre
    if fast:
        chosen = row_topk(scores.detach(), aux_k)[1]
    else:
        chosen = scores.topk(aux_k, dim=-1, sorted=False).indices
    values = dead_pre.gather(-1, chosen)
    return (values if signed else values.relu()), dead[chosen]


def _dead_columns(W_enc: Tensor, b_enc: Tensor, dead: Tensor) -> tuple[Tensor, Tensor]:
    """The dead latents' encoder columns and biases, `[d_in, m]` and `[m]`, padded to `m`, a
    multiple of `cpu_topk.SEGMENT`, with zero columns and `-inf` biases: the numba top-k then
    takes the AuxK selection (2.6x `torch.topk`), and a padded column never wins, as AuxK asks
    for at most `#dead` latents."""
    pad = -dead.numel() % cpu_topk.SEGMENT
    W_dead, b_dead = W_enc[:, dead], b_enc[dead]
    if pad:
        W_dead = torch.cat([W_dead, W_dead.new_zeros(W_dead.shape[0], pad)], 1)
        b_dead = torch.cat([b_dead, b_dead.new_full((pad,), float("-inf"))])
    return W_dead, b_dead


def encode_rows(n_rows: int, d_sae: int, device_type: str = "cpu") -> int:
    """Return the rows per fp32 encoder chunk, so top-k reads `[rows, d_sae]` pre-activations
    while they are still in cache. Measured on 2 CPU cores (whole TopK step, k 32, numba
    top-k): 1024 rows beat 256 by 6 % at d_sae 4k and 8 % at 16k, 256 beat 1024 by 5 % at 64k.
    Accelerators take the whole batch: there a chunk is only more kernel launches."""
    if device_type != "cpu":
        return n_rows
    return min(n_rows, 1024 if d_sae <= 16384 else 256)


def selection_rows(n_rows: int, d_sae: int) -> int:
    """Rows per chunk of the verified bf16 selection: 2048 at d_sae <= 4k, 1024 to 16k, else
    512. Whole step, 2 cores, k 32, interleaved rounds (median ratios): at 4k 2048 rows 3 %
    faster than 1024 and 23 % than 256 (4096: +2-3 %, noise); at 16k 1024 rows 1.09-1.19x over
    512 in three runs of four (0.99 in one); at 64k 512 rows (1024: 1.03x at k 32, 0.97x at
    k 128, for twice the score buffer)."""
    if d_sae <= 4096:
        return min(n_rows, 2048)
    return min(n_rows, 1024 if d_sae <= 16384 else 512)


def pre_activations(x_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """`x_in @ W_enc + b_enc` `[n, d_sae]`, computed in the same row chunks as `topk_encode`
    so the dense reference sees the very same bits (GEMM blocking can change the last bit)."""
    rows = encode_rows(x_in.shape[0], W_enc.shape[1], x_in.device.type)
    if rows >= x_in.shape[0]:
        return torch.addmm(b_enc, x_in, W_enc)
    return torch.cat([torch.addmm(b_enc, part, W_enc) for part in x_in.split(rows)])


def _encode_select(
    x_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    aux_mask: Tensor | None,
    aux_k: int,
    signed: bool,
    selector: _Bf16Selector | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Encoder GEMM and top-k selection chunk by chunk of rows, never holding `[n, d_sae]`.

    With `selector` (a `_Bf16Selector`) the main top-k comes from the verified bf16 selection
    and the AuxK selection from an fp32 GEMM over the dead columns only."""
    if selector is None:
        rows = encode_rows(x_in.shape[0], W_enc.shape[1], x_in.device.type)
    else:
        rows = selection_rows(x_in.shape[0], W_enc.shape[1])
    dead = aux_mask.nonzero().squeeze(1) if aux_mask is not None and aux_k > 0 else None
    if dead is not None and selector is not None:  # once per call, not per chunk
        W_dead, b_dead = _dead_columns(W_enc, b_enc, dead)
    parts: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
    for part in x_in.split(rows):
        aux: tuple[Tensor | None, Tensor | None] = (None, None)
        if selector is None:
            pre_acts = _addmm_into(b_enc, part, W_enc, "topk.pre_acts")
            values, indices = _select(pre_acts, k, signed)
            if dead is not None:
                aux = _select_dead(pre_acts[:, dead], dead, aux_k, signed, fast=True)
        else:
            values, indices = selector(part)
            values = values.relu()
            if dead is not None:  # fp32 GEMM over the dead columns only
                dead_pre = torch.addmm(b_dead, part, W_dead)
                aux = _select_dead(dead_pre, dead, aux_k, signed=False, fast=True)
        parts.append((values, indices, *aux))
    if len(parts) == 1:
        return parts[0]
    columns = zip(*parts, strict=True)
    return tuple(None if c[0] is None else torch.cat(c) for c in columns)  # type: ignore[return-value]


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        b_in: Tensor | None,
        W_enc: Tensor,
        b_enc: Tensor,
        k: int,
        aux_mask: Tensor | None,
        aux_k: int,
        signed: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_in = x if b_in is None else (x - b_in).contiguous()
        need_x = ctx.needs_input_grad[0]  # the backward then reads W_t for the input gradient
        selector = None
        W_t = None
        if _bf16_selection(x_in, W_enc, k, signed):
            W_t = _rows_of(W_enc, keep=need_x)  # [d_sae, d_in] for the gather-dots
            selector = _Bf16Selector(W_enc, b_enc, k, W_t)
        values, indices, aux_v, aux_i = _encode_select(
            x_in, W_enc, b_enc, k, aux_mask, aux_k, signed, selector
        )
        aux_values = aux_v if aux_v is not None else values.new_zeros(values.shape[0], 0)
        aux_indices = aux_i if aux_i is not None else indices.new_zeros(indices.shape[0], 0)
        ctx.save_for_backward(x_in, W_enc, indices, aux_indices, values, aux_values)
        ctx.W_t = W_t if need_x else None
        ctx.signed = signed
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_values: Tensor | None,
        _grad_indices: Tensor | None,
        grad_aux_values: Tensor | None,
        _grad_aux_indices: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        x_in, W_enc, indices, aux_indices, values, aux_values = ctx.saved_tensors
        if grad_values is None:
            grad_values = torch.zeros_like(values)
        if grad_aux_values is None:
            grad_aux_values = torch.zeros_like(aux_values)
        if not ctx.signed:  # the ReLU after selection passes gradient only where it fired
            grad_values = grad_values * (values > 0)
            grad_aux_values = grad_aux_values * (aux_values > 0)
        if aux_indices.shape[1] == 0:  # no dead latents: skip two [n, k] copies
            all_indices, all_grads = indices, grad_values.contiguous()
        else:
            all_indices = torch.cat([indices, aux_indices], dim=1)
            all_grads = torch.cat([grad_values, grad_aux_values], dim=1).contiguous()

        need_x, need_b_in, need_w, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_b_in = grad_W_enc = grad_b_enc = None
        if need_x:
            W_t = ctx.W_t if ctx.W_t is not None else W_enc.t().contiguous()
            grad_x = F.embedding_bag(all_indices, W_t, per_sample_weights=all_grads, mode="sum")
        if need_w:
            grad_W_enc = _scatter_outer(
                all_indices, all_grads, x_in, W_enc.shape[1], transposed=True
            )
        if need_b or need_b_in:
            grad_b_enc = W_enc.new_zeros(W_enc.shape[1]).index_add_(
                0, all_indices.reshape(-1), all_grads.reshape(-1)
            )
        if need_b_in:
            # Σ_rows of grad_x is W_enc @ grad_b_enc: no [n, d_in] gradient when x is data
            grad_b_in = -(grad_x.sum(0) if grad_x is not None else W_enc @ grad_b_enc)
        return (grad_x, grad_b_in, grad_W_enc, grad_b_enc if need_b else None) + (None,) * 4


def topk_encode(
    x_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    *,
    aux_mask: Tensor | None = None,
    aux_k: int = 0,
    signed: bool = False,
    b_in: Tensor | None = None,
) -> TopKCodes:
    """Sparse TopK encoder with a sparse backward: `TopKCodes` of `x_in [n, d_in]` through
    `W_enc [d_in, d_sae]`, `b_enc [d_sae]` (minus `b_in [d_in]` first when given, without an
    `[n, d_in]` input gradient): `values, indices [n, k]` (ReLU'd, or sign-kept when `signed`) and,
    with `aux_mask [d_sae]` (True = dead) and `aux_k > 0`, `aux_values, aux_indices [n, aux_k]`
    (else None). Inside `dense_reference()`, `topk_encode_dense` does the work."""
    if _dense_reference:
        return topk_encode_dense(
            x_in, W_enc, b_enc, k, aux_mask=aux_mask, aux_k=aux_k, signed=signed, b_in=b_in
        )
    values, indices, aux_values, aux_indices = _TopKEncode.apply(
        x_in, b_in, W_enc, b_enc, k, aux_mask, aux_k, signed
    )
    if aux_mask is None or aux_k <= 0:
        return TopKCodes(values, indices, None, None)
    return TopKCodes(values, indices, aux_values, aux_indices)


def topk_encode_dense(
    x_in: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    *,
    aux_mask: Tensor | None = None,
    aux_k: int = 0,
    signed: bool = False,
    b_in: Tensor | None = None,
) -> TopKCodes:
    """Plain-autograd reference for `topk_encode`: same arguments, same forward bits and indices."""
    if b_in is not None:
        x_in = (x_in - b_in).contiguous()
    pre_acts = pre_activations(x_in, W_enc, b_enc)
    values, indices = _select(pre_acts, k, signed)
    if aux_mask is None or aux_k <= 0:
        return TopKCodes(values, indices, None, None)
    aux_values, aux_indices = _select_aux(pre_acts, aux_mask, aux_k, signed)
    return TopKCodes(values, indices, aux_values, aux_indices)


def _scatter_outer(
    indices: Tensor, weights: Tensor, rows: Tensor, d_sae: int, transposed: bool = False
) -> Tensor:
    """`Σ_{r,s} weights[r, s] · rows[r]` into row `indices[r, s]` of `[d_sae, d]`: `S.T @ rows` for
    the sparse `S [n, d_sae]`; with `transposed`, `[d, d_sae]` (`rows.T @ S`, the encoder's
    layout). On CPU (fp32) the numba kernel, which writes each output element once (transposed
    in tiles); elsewhere a COO sparse-dense matmul."""
    if cpu_topk.supports_scatter(indices, weights, rows):
        return cpu_topk.scatter_outer(indices, weights, rows, d_sae, transposed)
    n, k = indices.shape
    token = torch.arange(n, device=indices.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), token]),
        weights.reshape(-1),
        (d_sae, n),
        check_invariants=False,
    )
    out = torch.sparse.mm(sparse, rows)
    return out.t() if transposed else out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            # grad_values[r, s] = W_dec[indices[r, s]] · grad_out[r] (faster than gather + bmm)
            grad_values = gather_dot(W_dec, indices, grad_out)
        if ctx.needs_input_grad[2]:
            grad_W_dec = _scatter_outer(indices, values, grad_out, W_dec.shape[0])
        return grad_values, None, grad_W_dec


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Return `Σ_s values[:, s] · W_dec[indices[:, s]]` as `[n, d_out]` (no bias) for `values,
    indices [n, k]`: an embedding bag whose backward touches only the selected rows (inside
    `dense_reference()`, `dense_decode`)."""
    if _dense_reference:
        return dense_decode(values, indices, W_dec)
    if indices.shape[1] == 0:
        return W_dec.new_zeros(indices.shape[0], W_dec.shape[1])
    return _SparseDecode.apply(values.contiguous(), indices, W_dec)


@contextlib.contextmanager
def dense_reference() -> Iterator[None]:
    """Within the block, `topk_encode` and `sparse_decode` run their plain-autograd references
    (`topk_encode_dense`, `dense_decode`): how a test runs a whole dictionary densely to compare
    it with the sparse kernels."""
    global _dense_reference
    previous, _dense_reference = _dense_reference, True
    try:
        yield
    finally:
        _dense_reference = previous


def dense_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Plain-autograd reference for `sparse_decode`: scatter to `[n, d_sae]` then matmul."""
    return to_dense(values, indices, W_dec.shape[0]) @ W_dec


def to_dense(values: Tensor, indices: Tensor, d_sae: int) -> Tensor:
    """Scatter `values [n, k]` at `indices [n, k]` into a dense `[n, d_sae]` tensor (sums repeats)."""
    dense = values.new_zeros(values.shape[0], d_sae)
    return dense.scatter_add(1, indices, values)
