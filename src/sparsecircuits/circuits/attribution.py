"""Attributions with transcoders: targets, one-hop decompositions and exact gradient × activation.

The paper's factorisation (Dunefsky et al. 2024, Eq. 7-8): with attention patterns and norm
denominators frozen, a quantity read from the residual stream is `v · resid + const`, and

* a transcoder feature i of an earlier layer at the same position contributes
  `act_i (input-dependent) × (W_dec[i] · v) (input-invariant)` (for a cross-layer transcoder,
  `W_dec[i]` is the sum of its decoder blocks into the MLPs written before the read);
* head h of an earlier layer, from source s, contributes
  `pattern[h, t, s] × (value_s W_O^h · v)`; pulling `v` back through the head gives a new vector
  at `resid_pre` of position s (`pull_back_head`);
* the embedding contributes `embed_t · v`, the transcoder error `error_t · v`, biases the rest.

`decompose` computes every one-hop contribution of a `ResidVector` exactly (they sum to
`v · resid`). `attribute` computes total effects through all paths with autograd on the frozen
replacement model (unit multipliers on every source / attention edge), which equal ablation
effects to float precision (see `verify`).

A `Target` is what is explained: a feature's pre-activation, a logit, a logit difference, a
direction read after the final norm (e.g. the gradient of a task metric), or a direction in the
final residual stream. Targets are batched: row r explains prompt `batch[r]` at `pos[r]`.
Logits are read before a final soft-cap (Gemma), as circuit-tracer does: the cap is not linear.

Gemma's post-attention norm sits between a head and the residual: with its denominator frozen,
a residual vector `v` read after attention layer L at position t is `v ⊙ gain / scale[t]` in
the heads' output space (`attn_output_vector`), before the `W_O` pull-back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from sparsecircuits.circuits.graph.targets import token_id
from sparsecircuits.circuits.nodes import EmbedNode, ErrorNode, FeatureNode, HeadNode, Node
from sparsecircuits.circuits.replacement import (
    Multipliers,
    ReplacementModel,
    ReplacementState,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.architectures import pull_back_norm

TargetKind = Literal["feature", "unembed", "resid"]


# ---------------------------------------------------------------------------- vectors and targets


@dataclass
class ResidVector:
    """Rows `v · resid_at(read)[batch, pos] + constant`, `vector [n, d]`, `constant/batch/pos [n]`."""

    read: int
    batch: Tensor
    pos: Tensor
    vector: Tensor
    constant: Tensor

    def value(self, state: ReplacementState) -> Tensor:
        """Return `[n]` values on `state` (rows of the clean state the vector was built from)."""
        resid = state.resid_at(self.read)[self.batch, self.pos]
        return (resid * self.vector).sum(-1) + self.constant

    def row(self, i: int) -> ResidVector:
        """Return row i as a one-row ResidVector."""
        s = slice(i, i + 1)
        return ResidVector(self.read, self.batch[s], self.pos[s], self.vector[s], self.constant[s])

    def scaled(self, factor: Tensor | float) -> ResidVector:
        """Return the vector and constant multiplied by `factor` (scalar or `[n]`)."""
        f = torch.as_tensor(factor, dtype=self.vector.dtype, device=self.vector.device)
        f = f.reshape(-1) if f.ndim else f
        return ResidVector(
            self.read,
            self.batch,
            self.pos,
            self.vector * (f[:, None] if f.ndim else f),
            self.constant * f,
        )


@dataclass
class Target:
    """A scalar per row to explain (see module docstring). Build with the `*_target` functions.

    `kind` "feature": pre-activation of transcoder `layer`'s `feature`; "unembed":
    `final_normed · direction + constant` (logits are this with `direction = W_U[:, t]`);
    "resid": `resid_final · direction + constant`.
    """

    kind: TargetKind
    label: str
    batch: Tensor
    pos: Tensor
    layer: int | None = None
    feature: int | None = None
    direction: Tensor | None = None
    constant: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.batch.shape[0])

    def take(self, rows: slice | Tensor) -> Target:
        """Return the target restricted to some of its rows."""
        return Target(
            self.kind,
            self.label,
            self.batch[rows],
            self.pos[rows],
            layer=self.layer,
            feature=self.feature,
            direction=None if self.direction is None else self.direction[rows],
            constant=None if self.constant is None else self.constant[rows],
            meta=self.meta,
        )

    def evaluate(self, state: ReplacementState, rows: Tensor | None = None) -> Tensor:
        """Return the target's value `[n]` on `state`; `rows` = the state rows (default `batch`)."""
        rows = self.batch if rows is None else rows
        if self.kind == "feature":
            assert self.layer is not None and self.feature is not None
            return state.feature_pre[self.layer][rows, self.pos, self.feature]
        assert self.direction is not None and self.constant is not None
        source = state.final_normed if self.kind == "unembed" else state.resid_final
        return (source[rows, self.pos] * self.direction).sum(-1) + self.constant

    def resid_vector(self, model: ReplacementModel, state: ReplacementState) -> ResidVector:
        """Return the frozen-norm linear form of this target: `v · resid_at(read) + const`."""
        if self.kind == "feature":
            assert self.layer is not None and self.feature is not None
            layer, f = self.layer, self.feature
            vector, constant = feature_input_form(
                model, state, layer, torch.full_like(self.batch, f), self.batch, self.pos
            )
            return ResidVector(model.mlp_read(layer), self.batch, self.pos, vector, constant)
        assert self.direction is not None and self.constant is not None
        if self.kind == "resid":
            return ResidVector(
                model.final_read, self.batch, self.pos, self.direction, self.constant
            )
        ln = model.ln_final
        scale = state.ln_final_scale[self.batch, self.pos]
        vector = pull_back_norm(self.direction, ln, scale, gain=True)
        constant = self.constant + (0 if ln.bias is None else self.direction @ ln.bias)
        return ResidVector(model.final_read, self.batch, self.pos, vector, constant)


def attn_output_vector(
    model: ReplacementModel,
    state: ReplacementState,
    layer: int,
    vector: Tensor,
    batch: Tensor,
    pos: Tensor,
) -> Tensor:
    """Return `[n, d]`: the functional `vector [n, d]` (read from the residual at rows `batch`,
    `pos`) as it applies to attention `layer`'s output before its post-norm, the norm frozen at
    `state`'s scale (Gemma); `vector` itself for families without a post-attention norm."""
    post = model.layer_weights(layer).ln1_post
    scale = state.ln1_post_scale[layer] if post is not None else None
    if post is None or scale is None:
        return vector
    return pull_back_norm(vector, post, scale[batch, pos], gain=True)


def feature_input_form(
    model: ReplacementModel,
    state: ReplacementState,
    layer: int,
    features: Tensor,
    batch: Tensor,
    pos: Tensor,
) -> tuple[Tensor, Tensor]:
    """Return `(vector [n, d], constant [n])` with `pre_f = vector · resid_at(mlp_read) + constant`.

    The norm before the transcoder is frozen at `state`'s scale for each (batch, pos) row.
    """
    encoder = model.encoder(layer)
    enc = encoder.W_enc[:, features].T  # [n, d_in]
    constant = encoder.b_enc[features] - enc @ encoder.b_in
    stage = model.tc_stage[layer]
    if stage == "residual":
        return enc, constant
    ln2 = model.layer_weights(layer).ln2
    scale = state.ln2_scale[layer][batch, pos]
    gain = stage == "gained"
    vector = pull_back_norm(enc, ln2, scale, gain=gain)
    if gain and ln2.bias is not None:
        constant = constant + enc @ ln2.bias
    return vector, constant


def _rows(
    state: ReplacementState, pos: int | Sequence[int] | Tensor, batch: Sequence[int] | Tensor | None
) -> tuple[Tensor, Tensor]:
    device = state.input_ids.device
    batch_t = (
        torch.arange(state.n_prompts, device=device)
        if batch is None
        else torch.as_tensor(batch, dtype=torch.long, device=device).reshape(-1)
    )
    pos_t = torch.as_tensor(pos, dtype=torch.long, device=device).reshape(-1)
    if pos_t.numel() == 1:
        pos_t = pos_t.expand(batch_t.numel()).clone()
    if pos_t.numel() != batch_t.numel():
        raise SparseCircuitsError(
            f"got {pos_t.numel()} positions for {batch_t.numel()} prompts; give one position or one per prompt"
        )
    pos_t = torch.where(pos_t < 0, pos_t + state.n_pos, pos_t)
    if int(pos_t.min()) < 0 or int(pos_t.max()) >= state.n_pos:
        raise SparseCircuitsError(
            f"target position out of range for prompts of {state.n_pos} tokens"
        )
    if int(batch_t.min()) < 0 or int(batch_t.max()) >= state.n_prompts:
        raise SparseCircuitsError(f"prompt index out of range for a batch of {state.n_prompts}")
    return batch_t, pos_t


def feature_target(
    model: ReplacementModel,
    state: ReplacementState,
    layer: int,
    feature: int,
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
) -> Target:
    """Target: pre-activation of transcoder `layer`'s `feature` at `pos` (one or per prompt)."""
    d_sae = model.d_sae(layer)
    if not 0 <= feature < d_sae:
        raise SparseCircuitsError(
            f"feature {feature} out of range; layer {layer} has {d_sae} features"
        )
    b, p = _rows(state, pos, batch)
    return Target(
        "feature", f"mlp{layer}tc[{feature}] pre-activation", b, p, layer=layer, feature=feature
    )


def unembed_target(
    model: ReplacementModel,
    state: ReplacementState,
    coefficients: Tensor,
    label: str,
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
) -> Target:
    """Target: `Σ_t coefficients[t] · logit_t` at `pos`; `coefficients [vocab]` or `[n, vocab]`."""
    b, p = _rows(state, pos, batch)
    coeffs = coefficients.to(model.dtype).to(model.device)
    if coeffs.ndim == 1:
        coeffs = coeffs.expand(b.numel(), -1)
    direction = coeffs @ model.W_U.T
    constant = coeffs @ model.b_U
    return Target("unembed", label, b, p, direction=direction, constant=constant)


def logit_target(
    model: ReplacementModel,
    state: ReplacementState,
    token: int | str,
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
) -> Target:
    """Target: the logit of `token` (id or single-token string) at `pos`."""
    tid = token_id(model, token)
    coeffs = torch.zeros(model.W_U.shape[1], dtype=model.dtype, device=model.device)
    coeffs[tid] = 1.0
    return unembed_target(model, state, coeffs, f"logit[{token!r}]", pos, batch)


def logit_diff_target(
    model: ReplacementModel,
    state: ReplacementState,
    good: int | str,
    bad: int | str,
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
) -> Target:
    """Target: `logit(good) - logit(bad)` at `pos`."""
    g, w = token_id(model, good), token_id(model, bad)
    coeffs = torch.zeros(model.W_U.shape[1], dtype=model.dtype, device=model.device)
    coeffs[g] += 1.0
    coeffs[w] -= 1.0
    return unembed_target(model, state, coeffs, f"logit[{good!r}] - logit[{bad!r}]", pos, batch)


def direction_target(
    model: ReplacementModel,
    state: ReplacementState,
    direction: Tensor,
    label: str = "direction",
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
    space: Literal["unembed", "resid"] = "unembed",
    constant: Tensor | float = 0.0,
) -> Target:
    """Target: `direction · x + constant`, x = ln_final output ("unembed") or final residual ("resid").

    `direction [d]` or `[n, d]`.
    """
    b, p = _rows(state, pos, batch)
    d = direction.to(model.device, model.dtype)
    if d.ndim == 1:
        d = d.expand(b.numel(), -1)
    c = torch.as_tensor(constant, dtype=model.dtype, device=model.device).expand(b.numel()).clone()
    return Target(space, label, b, p, direction=d, constant=c)


def metric_gradient_target(
    model: ReplacementModel,
    state: ReplacementState,
    metric: Callable[[Tensor, Tensor], Tensor],
    label: str,
    pos: int | Sequence[int] | Tensor = -1,
    batch: Sequence[int] | Tensor | None = None,
) -> Target:
    """Target: the first-order (linearised) metric, `g · logits` with `g = ∂metric/∂logits` at the clean run.

    `metric(logits [n, vocab], batch [n]) -> [n]` is evaluated at each row's position. The
    target's change under an intervention is the metric's first-order change. With a final
    soft-cap (Gemma) `g` is taken w.r.t. the logits before the cap, which the target reads.
    """
    b, p = _rows(state, pos, batch)
    with torch.enable_grad():
        linear = state.final_normed[b, p] @ model.W_U + model.b_U
        linear = linear.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(metric(model.cap_logits(linear), b).sum(), linear)
    target = unembed_target(model, state, grad, label, p, b)
    target.meta["metric_value"] = metric(state.logits[b, p], b).detach()
    return target


# ---------------------------------------------------------------------------- one-hop decomposition


@dataclass
class Contribution:
    """One term of a decomposition: the node (None for the bias/constant), its value, a label."""

    label: str
    value: float
    node: Node | None = None
    row: int = 0
    kind: str = ""


@dataclass
class Decomposition:
    """Every one-hop contribution to `source` (`v · resid + const`), per row.

    `embed [n]`; `features[L] [n, d_sae]` (act × W_dec·v) for transcoder layers written before
    the read; `heads[L] [n, h, p_src]` (pattern × value W_O · v, value bias included);
    `errors[L] [n]` (transcoder error, or the whole MLP output for a layer without a
    transcoder); `skips[L] [n]` (skip-transcoder linear term); `bias [n]` (b_O and b_dec of the
    writers); `constant [n]` (the source's own constant). `resid_total` is their sum without
    the constant and equals `v · resid`.
    """

    source: ResidVector
    embed: Tensor
    features: dict[int, Tensor]
    heads: dict[int, Tensor]
    errors: dict[int, Tensor]
    skips: dict[int, Tensor]
    bias: Tensor

    @property
    def constant(self) -> Tensor:
        """The source's constant `[n]`."""
        return self.source.constant

    @property
    def resid_total(self) -> Tensor:
        """Sum of every contribution `[n]` (= `v · resid`)."""
        total = self.embed + self.bias
        for t in self.features.values():
            total = total + t.sum(-1)
        for t in self.heads.values():
            total = total + t.sum((-1, -2))
        for t in list(self.errors.values()) + list(self.skips.values()):
            total = total + t
        return total

    @property
    def error_total(self) -> Tensor:
        """Sum of error (and non-transcoder MLP) contributions `[n]`."""
        return sum(self.errors.values(), torch.zeros_like(self.embed))

    def contributions(self, row: int = 0, ignore_bos: bool = False) -> list[Contribution]:
        """Return every non-zero contribution of one row, features / heads / embed / errors / skips / bias."""
        pos = int(self.source.pos[row])
        out: list[Contribution] = []
        first = 1 if ignore_bos else 0
        if pos >= first:
            out.append(
                Contribution(f"embed@{pos}", float(self.embed[row]), EmbedNode(pos), row, "embed")
            )
        for layer, values in self.features.items():
            if pos < first:
                continue
            nz = values[row].nonzero().flatten()
            for f, v in zip(nz.tolist(), values[row, nz].tolist(), strict=False):
                fnode = FeatureNode(layer, pos, f)
                out.append(Contribution(fnode.label, v, fnode, row, "feature"))
        for layer, values in self.heads.items():
            h_idx, s_idx = values[row].nonzero(as_tuple=True)
            for h, s, v in zip(
                h_idx.tolist(), s_idx.tolist(), values[row, h_idx, s_idx].tolist(), strict=False
            ):
                if s < first:
                    continue
                hnode = HeadNode(layer, h, dest=pos, src=s)
                out.append(Contribution(hnode.label, v, hnode, row, "head"))
        for layer, values in self.errors.items():
            enode = ErrorNode(layer, pos)
            out.append(Contribution(enode.label, float(values[row]), enode, row, "error"))
        for layer, values in self.skips.items():
            out.append(Contribution(f"skip{layer}@{pos}", float(values[row]), None, row, "skip"))
        out.append(Contribution("bias", float(self.bias[row]), None, row, "bias"))
        return out

    def top(
        self,
        k: int = 10,
        row: int = 0,
        by: Literal["value", "abs"] = "abs",
        kinds: Sequence[str] | None = None,
        ignore_bos: bool = False,
    ) -> list[Contribution]:
        """Return the `k` largest contributions of one row (by value or |value|), optionally of some kinds."""
        items = self.contributions(row, ignore_bos=ignore_bos)
        if kinds is not None:
            items = [c for c in items if c.kind in kinds]
        key = (lambda c: c.value) if by == "value" else (lambda c: abs(c.value))
        return sorted(items, key=key, reverse=True)[:k]


def decompose(
    model: ReplacementModel, state: ReplacementState, source: ResidVector
) -> Decomposition:
    """Split `source.vector · resid_at(source.read)` into one-hop contributions (see `Decomposition`)."""
    b, t, v = source.batch, source.pos, source.vector
    embed = (state.embed[b, t] * v).sum(-1)
    bias = torch.zeros_like(embed)
    features: dict[int, Tensor] = {}
    heads: dict[int, Tensor] = {}
    errors: dict[int, Tensor] = {}
    skips: dict[int, Tensor] = {}
    for layer in range(model.n_layers):
        if model.attn_write(layer) < source.read:
            w = model.layer_weights(layer)
            v_attn = attn_output_vector(model, state, layer, v, b, t)
            wo_v = torch.einsum("hed,nd->nhe", w.W_O, v_attn)
            per_src = torch.einsum("nshe,nhe->nhs", state.values[layer][b], wo_v)
            pattern = state.patterns[layer][b, :, t, :]  # [n, h, p]
            heads[layer] = pattern * per_src
            bias = bias + v_attn @ w.b_O
        if model.mlp_write(layer) < source.read:
            if layer in model.feature_layers:
                v_mlp = model.post_mlp_map(state, layer, v, b, t)
                projections = model.decoder_projections(layer, v_mlp, source.read)
                features[layer] = state.feature_acts[layer][b, t] * projections
                bias = bias + v_mlp @ model.output_bias(layer)
                errors[layer] = (state.errors[layer][b, t] * v_mlp).sum(-1)
                skip = model.skip_weight(layer)
                if skip is not None:
                    skips[layer] = ((state.tc_in[layer][b, t] @ skip.T) * v_mlp).sum(-1)
            else:
                errors[layer] = (state.mlp_out[layer][b, t] * v).sum(-1)
    return Decomposition(source, embed, features, heads, errors, skips, bias)


def pull_back_head(
    model: ReplacementModel,
    state: ReplacementState,
    source: ResidVector,
    layer: int,
    head: int,
    src: Tensor | int,
) -> ResidVector:
    """Return the vector at `resid_pre[layer]` of position `src` whose value is head `(layer, head)`'s
    one-hop contribution from `src` to `source` (pattern and ln1 scale frozen; value biases and
    the ln1 bias go into the constant). `src` is one position or one per row."""
    if not model.attn_write(layer) < source.read:
        raise SparseCircuitsError(
            f"attention layer {layer} does not write before read point {source.read}"
        )
    w = model.layer_weights(layer)
    src_t = (
        torch.as_tensor(src, dtype=torch.long, device=source.pos.device)
        .reshape(-1)
        .expand(source.batch.numel())
    )
    pattern = state.patterns[layer][source.batch, head, source.pos, src_t]  # [n]
    v_attn = attn_output_vector(model, state, layer, source.vector, source.batch, source.pos)
    wo_v = v_attn @ w.W_O[head].T  # [n, d_head]
    in_space = pattern[:, None] * (wo_v @ w.W_V[head].T)  # [n, d]: in ln1-output space
    scale = state.ln1_scale[layer][source.batch, src_t]
    vector = pull_back_norm(in_space, w.ln1, scale, gain=True)
    constant = pattern * (wo_v @ w.b_V[head])
    if w.ln1.bias is not None:
        constant = constant + in_space @ w.ln1.bias
    return ResidVector(model.attn_read(layer), source.batch, src_t.clone(), vector, constant)


def pull_back_feature(
    model: ReplacementModel,
    state: ReplacementState,
    source: ResidVector,
    layer: int,
    feature: int | Tensor,
) -> ResidVector:
    """Return the vector at transcoder `layer`'s input whose value is feature's one-hop contribution
    `act × (W_dec[f] · v)` to `source` (the feature's pre-activation times its clean gain).

    `W_dec[f]` sums a cross-layer transcoder's decoder blocks written before `source.read`."""
    if not model.mlp_write(layer) < source.read:
        raise SparseCircuitsError(
            f"MLP layer {layer} does not write before read point {source.read}"
        )
    f = (
        torch.as_tensor(feature, dtype=torch.long, device=source.pos.device)
        .reshape(-1)
        .expand(source.batch.numel())
    )
    decoded = model.decoder_vectors(layer, f, before_read=source.read)  # [n, d]
    v_mlp = model.post_mlp_map(state, layer, source.vector, source.batch, source.pos)
    weight = (decoded * v_mlp).sum(-1) * state.feature_gain[layer][source.batch, source.pos, f]
    vector, constant = feature_input_form(model, state, layer, f, source.batch, source.pos)
    return ResidVector(
        model.mlp_read(layer), source.batch, source.pos, vector * weight[:, None], constant * weight
    )


# ---------------------------------------------------------------------------- exact total attributions


@dataclass
class Attribution:
    """Gradient × activation of a target w.r.t. every source and attention edge, per target row.

    `value [n]` target on the clean run; `embed [n, p]`; `features[L] [n, p, d_sae]`;
    `errors[L] [n, p]` (whole MLP output for layers without a transcoder); `patterns[L]
    [n, h, q, k]` (attention edge dest q <- src k of each head); `bias [n]`: the target with
    every source (embeddings, errors and, in "frozen" mode, features) set to zero. In "frozen"
    mode `value == embed.sum + Σ features + Σ errors + bias`; in "linear" mode features are not
    sources, so `value == embed.sum + Σ errors + bias` and feature entries are total effects
    through each feature. Each entry equals minus the change of the target when that one item is
    ablated under the same mode (exact; frozen attention and norms).
    """

    target: Target
    mode: str
    value: Tensor
    embed: Tensor
    features: dict[int, Tensor]
    errors: dict[int, Tensor]
    patterns: dict[int, Tensor]
    bias: Tensor

    def heads(self) -> dict[int, Tensor]:
        """Per-head totals over all (dest, src) edges: `{layer: [n, h]}`."""
        return {layer: t.sum((-1, -2)) for layer, t in self.patterns.items()}

    def node_value(self, node: Node, row: int = 0) -> float:
        """Return the attribution of one node (a head node sums its edges over None dest/src)."""
        if isinstance(node, FeatureNode):
            return float(self.features[node.layer][row, node.pos, node.feature])
        if isinstance(node, ErrorNode):
            return float(self.errors[node.layer][row, node.pos])
        if isinstance(node, EmbedNode):
            return float(self.embed[row, node.pos])
        edges = self.patterns[node.layer][row, node.head]
        if node.dest is not None:
            edges = edges[node.dest : node.dest + 1]
        if node.src is not None:
            edges = edges[:, node.src : node.src + 1]
        return float(edges.sum())

    def top_features(
        self, k: int = 10, row: int | None = None, by: Literal["value", "abs"] = "abs"
    ) -> list[tuple[FeatureNode, float]]:
        """Return the `k` largest feature attributions of one row, or summed over rows when `row` is None."""
        scored: list[tuple[FeatureNode, float]] = []
        for layer, t in self.features.items():
            values = t.sum(0) if row is None else t[row]
            flat = values.flatten()
            key = flat if by == "value" else flat.abs()
            top = torch.topk(key, min(k, flat.numel())).indices
            d_sae = values.shape[-1]
            scored += [
                (FeatureNode(layer, int(i) // d_sae, int(i) % d_sae), float(flat[i])) for i in top
            ]
        key_fn = (lambda x: x[1]) if by == "value" else (lambda x: abs(x[1]))
        return sorted(scored, key=key_fn, reverse=True)[:k]

    def top_heads(self, k: int = 10, row: int | None = None) -> list[tuple[HeadNode, float]]:
        """Return the `k` heads (all edges) with the largest |attribution|, one row or summed over rows."""
        scored = []
        for layer, t in self.heads().items():
            values = t.sum(0) if row is None else t[row]
            scored += [(HeadNode(layer, h), float(values[h])) for h in range(values.shape[0])]
        return sorted(scored, key=lambda x: abs(x[1]), reverse=True)[:k]


def _unit(shape: Sequence[int], like: Tensor) -> Tensor:
    return torch.ones(*shape, dtype=like.dtype, device=like.device, requires_grad=True)


def attribute(
    model: ReplacementModel,
    state: ReplacementState,
    target: Target,
    mode: Literal["frozen", "linear"] = "frozen",
    patterns: bool = True,
    batch_size: int | None = None,
) -> Attribution:
    """Return exact gradient × activation attributions of `target` (one backward per chunk of rows).

    `mode` "frozen": every transcoder feature is held (direct effects, graph edges); "linear":
    features follow their pre-activations with frozen gains (total effects through features).
    `patterns=False` skips the per-edge attention attributions (saves memory); `batch_size`
    bounds the rows per backward pass (memory), None means all at once.
    """
    if mode not in ("frozen", "linear"):
        raise SparseCircuitsError(f'mode must be "frozen" or "linear", got {mode!r}')
    if batch_size is not None and len(target) > batch_size:
        parts = [
            attribute(model, state, target.take(slice(i, i + batch_size)), mode, patterns)
            for i in range(0, len(target), batch_size)
        ]
        return Attribution(
            target,
            mode,
            torch.cat([a.value for a in parts]),
            torch.cat([a.embed for a in parts]),
            {k: torch.cat([a.features[k] for a in parts]) for k in parts[0].features},
            {k: torch.cat([a.errors[k] for a in parts]) for k in parts[0].errors},
            {k: torch.cat([a.patterns[k] for a in parts]) for k in parts[0].patterns},
            torch.cat([a.bias for a in parts]),
        )
    sub = state.select(target.batch)
    n, p = sub.n_prompts, sub.n_pos
    rows = torch.arange(n, device=target.batch.device)
    like = sub.embed
    mults = Multipliers(
        embed=_unit((n, p, 1), like),
        features={layer: _unit(t.shape, like) for layer, t in sub.feature_acts.items()},
        errors={layer: _unit((n, p, 1), like) for layer in range(model.n_layers)},
        patterns={layer: _unit(t.shape, like) for layer, t in enumerate(sub.patterns)}
        if patterns
        else {},
    )
    with torch.enable_grad():
        out = model.run_with_multipliers(sub, mults, features=mode)
        value = target.evaluate(out, rows)
        assert mults.embed is not None
        leaves: list[Tensor] = (
            [mults.embed]
            + list(mults.features.values())
            + list(mults.errors.values())
            + list(mults.patterns.values())
        )
        raw = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    grads = [
        torch.zeros_like(leaf) if g is None else g for g, leaf in zip(raw, leaves, strict=False)
    ]
    it = iter(grads)
    embed = next(it).squeeze(-1)
    features = {layer: next(it) for layer in mults.features}
    errors = {layer: next(it).squeeze(-1) for layer in mults.errors}
    pattern_attr = {layer: next(it) for layer in mults.patterns}
    zero = Multipliers(
        embed=torch.zeros(n, p, 1, dtype=like.dtype, device=like.device),
        features={layer: torch.zeros_like(t) for layer, t in sub.feature_acts.items()}
        if mode == "frozen"
        else {},
        errors={
            layer: torch.zeros(n, p, 1, dtype=like.dtype, device=like.device)
            for layer in range(model.n_layers)
        },
    )
    with torch.no_grad():
        bias = target.evaluate(model.run_with_multipliers(sub, zero, features=mode), rows)
    return Attribution(target, mode, value.detach(), embed, features, errors, pattern_attr, bias)


def target_rows(target: Target, row: int, copies: int) -> Target:
    """Return a target with `copies` identical rows 0..copies-1 of `target`'s row `row`.

    Used to evaluate one prompt's target on a batch of edited copies of that prompt.
    """
    copied = target.take(torch.full((copies,), row, device=target.batch.device))
    return replace(copied, batch=torch.arange(copies, device=target.batch.device))
