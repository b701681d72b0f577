"""The transpose of a prompt's frozen replacement model: batched backward passes without autograd.

With attention patterns, norm denominators, errors and feature activations frozen at a clean
run, the replacement model is an affine map, and an attribution-graph row is its transpose
applied to one target vector. `FrozenAdjoint` applies that transpose to a batch of target
vectors layer by layer, from the top down, with two GEMMs per attention layer:

    u   = g W_O^T                               (per position and target)
    v_p = Σ_q pattern[h, q, p] / s1_p · u_q      (per head; s1 = ln1 denominator)
    g  += v M_V,   M_V = centred(W_V^T · ln1 gain)

where `g [P, B, d]` is the gradient at the residual stream (positions first, so a position's
rows are one slice), `P` the prompt prefix the batch needs (a target at position q reads
nothing later) and `B` the targets. The ln1 gain and LayerNorm's mean subtraction are folded
into `M_V` and the frozen denominators into the pattern once per prompt, so a layer is one
`addmm`, one `bmm` and one `mm`; autograd's version runs the same GEMMs plus a dozen
memory-bound element-wise passes per layer (norm backward, residual adds, transposes).

Skip transcoders add their linear path; MLPs without a transcoder are frozen (no path); a
parallel residual (GPT-NeoX) reads attention and MLP from the same point. `matches_autograd`
compares the result with autograd on the model's own frozen forward, so a model this module
does not describe is caught before its graph is built (the builder then uses autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.models.architectures import NormParams, pull_back_norm

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState


@dataclass
class _AttentionAdjoint:
    """One layer's folded weights: `W_O^T [d, H*dh]`, `M_V [H*dh, d]`, `mix [H, T(src), T(dest)]`
    (the transposed pattern over the ln1 denominator of the source position)."""

    w_o_t: Tensor
    m_v: Tensor
    mix: Tensor
    post: NormParams | None = None  # Gemma's post-attention norm, frozen at `post_scale [T, 1]`
    post_scale: Tensor | None = None


class FrozenAdjoint:
    """Batched transposed passes through one prompt's frozen replacement model (module docstring)."""

    def __init__(self, replacement: ReplacementModel, state: ReplacementState) -> None:
        """Fold the weights of every layer and the clean run `state` (one prompt) together."""
        self.replacement = replacement
        self.state = state
        self.n_layers = replacement.n_layers
        self.parallel = replacement.parallel_residual
        self.layers: list[_AttentionAdjoint] = []
        ones = torch.ones((), dtype=replacement.dtype, device=replacement.device)
        for layer in range(self.n_layers):
            w = replacement.layer_weights(layer)
            n_heads, d_model, d_head = w.W_V.shape
            w_v = w.W_V.permute(1, 0, 2).reshape(d_model, n_heads * d_head)  # values = x @ w_v
            m_v = pull_back_norm(w_v.T, w.ln1, ones, gain=True).contiguous()
            w_o_t = w.W_O.reshape(n_heads * d_head, d_model).T.contiguous()
            pattern = state.patterns[layer][0]  # [H, q, k]
            scale = state.ln1_scale[layer][0, :, 0]  # [k]
            mix = (pattern / scale[None, None, :]).transpose(1, 2).contiguous()
            post_scale = state.ln1_post_scale[layer] if w.ln1_post is not None else None
            self.layers.append(
                _AttentionAdjoint(
                    w_o_t, m_v, mix, w.ln1_post, None if post_scale is None else post_scale[0]
                )
            )

    def resid_vectors(self, layer: int, pos: Tensor, vectors: Tensor) -> Tensor:
        """Return the residual-stream form `[n, d]` of target vectors `[n, d]` injected at
        transcoder `layer`'s input (or the final norm's output for `layer == n_layers`) at
        positions `pos [n]`: the frozen norm in front of the read point pulled back."""
        rm, state = self.replacement, self.state
        if layer == self.n_layers:
            scale = state.ln_final_scale[0, pos]
            return pull_back_norm(vectors, rm.ln_final, scale, gain=True)
        stage = rm.tc_stage[layer]
        if stage == "residual":
            return vectors
        scale = state.ln2_scale[layer][0, pos]
        return pull_back_norm(vectors, rm.layer_weights(layer).ln2, scale, gain=stage == "gained")

    def _attention(
        self, layer: int, g: Tensor, out: Tensor, single: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """`out + (gradient through attention `layer` of g)`, both `[P, B, d]`.

        `single = (pos [B], vectors [B, d])` says that g is `vectors[r]` at `(pos[r], r)` and
        zero elsewhere (a batch's first layer): then `g W_O^T` is B rows, not P*B, and the
        pattern spreads each row with one product instead of a matmul."""
        a = self.layers[layer]
        n_pos, batch, d_model = g.shape
        n_heads = a.mix.shape[0]
        if a.post is not None and a.post_scale is not None:  # back through the frozen post-norm
            if single is not None:
                single = (single[0], pull_back_norm(single[1], a.post, a.post_scale[single[0]]))
            else:
                g = pull_back_norm(g, a.post, a.post_scale[:n_pos, None, :])
        if single is not None:
            pos, vectors = single
            u = (vectors @ a.w_o_t).view(batch, n_heads, -1)  # [B, H, dh]
            weights = a.mix[:, :n_pos, :][:, :, pos].permute(1, 2, 0)  # [P(src), B, H]
            v = (weights[..., None] * u[None]).reshape(n_pos * batch, -1)
        else:
            u = g.reshape(n_pos * batch, d_model) @ a.w_o_t  # [P*B, H*dh]
            d_head = u.shape[1] // n_heads
            u = (
                u.view(n_pos, batch, n_heads, d_head)
                .permute(2, 0, 1, 3)
                .reshape(n_heads, n_pos, -1)
            )
            v = torch.bmm(a.mix[:, :n_pos, :n_pos], u)  # [H, P(src), B*dh]
            v = v.view(n_heads, n_pos, batch, d_head).permute(1, 2, 0, 3).reshape(n_pos * batch, -1)
        return torch.addmm(out.reshape(n_pos * batch, d_model), v, a.m_v).view(n_pos, batch, -1)

    def _skip(self, layer: int, g: Tensor) -> Tensor | None:
        """The gradient `[P, B, d]` a skip transcoder's linear term passes back to the MLP's
        read point, or None without one."""
        skip = self.replacement.skip_weight(layer)
        if skip is None:
            return None
        back = g @ skip  # [P, B, d_in]: at the transcoder's input
        n_pos = g.shape[0]
        rm, stage = self.replacement, self.replacement.tc_stage[layer]
        if stage == "residual":
            return back
        scale = self.state.ln2_scale[layer][0, :n_pos, None]  # [P, 1, 1]
        return pull_back_norm(back, rm.layer_weights(layer).ln2, scale, gain=stage == "gained")

    def grads(
        self, layers: Tensor, pos: Tensor, vectors: Tensor, prefix: int
    ) -> list[Tensor | None]:
        """Gradients of a batch of targets at every source: `[MLP output of layer 0, ...,
        MLP output of layer n-1, embedding]`, each `[prefix, B, d]` or None where no target of
        the batch reads it.

        Target r is `vectors[r] · resid` at its read point: transcoder `layers[r]`'s MLP read
        point, or the final residual for `layers[r] == n_layers`, at position `pos[r] < prefix`;
        `vectors` are residual-stream forms (`resid_vectors`).
        """
        n, batch = self.n_layers, int(layers.numel())
        rows = torch.arange(batch, device=vectors.device)
        out: list[Tensor | None] = [None] * (n + 1)
        g: Tensor | None = None

        def inject(base: Tensor | None, layer: int) -> Tensor | None:
            hit = layers == layer
            if not bool(hit.any()):
                return base
            fresh = (
                torch.zeros(
                    prefix, batch, vectors.shape[1], dtype=vectors.dtype, device=vectors.device
                )
                if base is None
                else base.clone()
            )
            fresh.index_put_((pos[hit], rows[hit]), vectors[hit], accumulate=True)
            return fresh

        g = inject(None, n)
        # while g is the injection alone (every row at one position), the next attention is cheap
        single = (pos, vectors) if bool((layers == n).all()) else None
        for layer in reversed(range(n)):
            if g is not None:
                out[layer] = g  # gradient at resid_post[layer] = at the MLP output
            skip = None if g is None else self._skip(layer, g)
            if skip is not None:
                single = None
            read = g if skip is None else (skip if g is None else g + skip)
            if g is None and bool((layers == layer).all()):
                single = (pos, vectors)
            elif bool((layers == layer).any()):
                single = None
            read = inject(read, layer)
            if read is None:
                continue
            if self.parallel:  # attention and MLP both read resid_pre
                if g is None:
                    g = read
                    continue
                g = self._attention(layer, g, read, single)
            else:
                g = self._attention(layer, read, read, single)
            single = None
        out[n] = g
        return out


def autograd_grads(
    replacement: ReplacementModel,
    read_points: dict[int, Tensor],
    sources: list[Tensor],
    layers: Tensor,
    pos: Tensor,
    vectors: Tensor,
    retain: bool,
) -> list[Tensor | None]:
    """The same gradients as `FrozenAdjoint.grads` (`[T, B, d]`, full prompt) by autograd
    through a frozen forward (`read_points`/`sources` of `frozen_forward`), with
    `vectors` in read-point space (before the norm pull-back)."""
    batch = int(layers.numel())
    outputs, grad_outputs = [], []
    rows = torch.arange(batch, device=vectors.device)
    for layer in sorted(set(layers.tolist())):
        hit = layers == layer
        grad = torch.zeros(
            batch, *read_points[layer].shape, dtype=vectors.dtype, device=vectors.device
        )
        grad[rows[hit], 0, pos[hit]] = vectors[hit]
        outputs.append(read_points[layer])
        grad_outputs.append(grad)
    raw = torch.autograd.grad(
        outputs,
        sources,
        grad_outputs=grad_outputs,
        retain_graph=retain,
        is_grads_batched=True,
        allow_unused=True,
    )
    return [None if g is None else g[:, 0].transpose(0, 1) for g in raw]


def frozen_forward(
    replacement: ReplacementModel, input_ids: Tensor, state: ReplacementState | None = None
) -> tuple[dict[int, Tensor], list[Tensor]]:
    """One frozen forward pass of `input_ids [1, T]` (clean `state` given or computed) kept for
    many backward passes.

    Returns the read points (`{layer: transcoder input}`, `{n_layers: final norm output}`) where
    targets inject their gradient, and the sources (every MLP output, then the embedding) where
    edges are read.
    """
    from sparsecircuits.circuits.replacement import Multipliers

    n_pos, n_layers = int(input_ids.shape[1]), replacement.n_layers

    def unit() -> Tensor:
        return torch.ones(
            (1, n_pos, 1), dtype=replacement.dtype, device=replacement.device, requires_grad=True
        )

    state = replacement.run(input_ids) if state is None else state
    mults = Multipliers(embed=unit(), errors={layer: unit() for layer in range(n_layers)})
    with torch.enable_grad():
        out = replacement.run_with_multipliers(state, mults, features="frozen")
    read_points = {layer: out.tc_in[layer] for layer in replacement.feature_layers}
    read_points[n_layers] = out.final_normed
    return read_points, [out.mlp_out[layer] for layer in range(n_layers)] + [out.embed]


def matches_autograd(replacement: ReplacementModel, input_ids: Tensor, n_tokens: int = 8) -> bool:
    """Whether `FrozenAdjoint.grads` equals autograd through the model's own frozen forward on
    the first `n_tokens` of `input_ids [1, T]`, for random vectors injected at the final norm,
    the highest and the lowest transcoder layer (float precision of the model's dtype)."""
    ids = input_ids[:, : min(n_tokens, int(input_ids.shape[1]))]
    n_pos = int(ids.shape[1])
    state = replacement.run(ids)
    adjoint = FrozenAdjoint(replacement, state)
    read_points, sources = frozen_forward(replacement, ids, state)
    gen = torch.Generator().manual_seed(0)
    kinds = sorted(
        {replacement.n_layers, *replacement.feature_layers[:1], *replacement.feature_layers[-1:]}
    )
    layers = torch.tensor(kinds).repeat_interleave(2)
    pos = torch.randint(0, n_pos, (layers.numel(),), generator=gen)
    pos[::2] = n_pos - 1
    vectors = torch.randn(layers.numel(), replacement.d_model, generator=gen)
    device, dtype = replacement.device, replacement.dtype
    layers, pos, vectors = layers.to(device), pos.to(device), vectors.to(device, dtype)
    resid = torch.empty_like(vectors)
    for layer in kinds:
        hit = layers == layer
        resid[hit] = adjoint.resid_vectors(layer, pos[hit], vectors[hit])
    ours = adjoint.grads(layers, pos, resid, n_pos)
    with torch.enable_grad():
        theirs = autograd_grads(replacement, read_points, sources, layers, pos, vectors, False)
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    for a, b in zip(ours, theirs, strict=True):
        if a is None and b is None:
            continue
        reference = (torch.zeros_like(a) if b is None else b).double()  # type: ignore[arg-type]
        mine = (torch.zeros_like(reference) if a is None else a).double()
        if (mine - reference).abs().max() > tol * max(float(reference.abs().max()), 1e-6):
            return False
    return True
