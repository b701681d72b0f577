"""ReplacementModel: the LM with transcoders in place of its MLPs, exact thanks to error terms.

The model is re-implemented as one functional forward pass from the weight accessors of
`ModelAdapter` (GPT-2, GPT-NeoX with parallel residual and partial rotary, Llama / Qwen2 /
Qwen3 / Mistral with RoPE, grouped-query attention, RMSNorm, Qwen3's q/k norms, Mistral's sliding
window). At every layer that has a transcoder the MLP output is

    mlp_out = transcoder(x) + error,    error = true MLP(x) - transcoder(x)   (from the clean run)

so `run(input_ids)` reproduces the model's logits exactly. Layers without a transcoder keep
their real MLP (frozen to its clean output under `freeze`).

The transcoders are a `TranscoderSet` (`dictionaries/transcoders.py`): per-layer transcoders or
a cross-layer transcoder, whose layer-ℓ features are encoded from layer ℓ's MLP input and write
`act · W_dec block` into the MLP output of every layer t >= ℓ, so

    mlp_out_t = Σ_{ℓ <= t} acts_ℓ W_dec[ℓ → t] + b_dec[t] + error_t.

Every layer of the set is a "transcoder layer" (a source of features and an MLP that is
replaced). Per source layer the model keeps the set's decoder blocks, `decoders(layer) ->
[(target layer, W_dec block [d_sae, d])]` (one block, to its own layer, for a per-layer
transcoder); `decoder_vectors` sums a feature's blocks over the targets a reader sees.

Freezing. `forward_with(state, edits, freeze=True)` re-runs the prompt with the attention
patterns, the norm denominators (LayerNorm's `sqrt(var + eps)`, RMSNorm's `sqrt(mean(x²) + eps)`;
the LayerNorm mean is still subtracted, which is linear) and the error terms taken from the clean
`state`. Transcoder features then follow `features`:

* `"frozen"`: activations held at their clean values (edits apply on top): the map from
  (embeddings, feature activations, errors, biases) to every downstream quantity is affine, and
  an edit measures *direct* effects (attribution-graph edges).
* `"linear"`: each active feature follows its own pre-activation with the clean gain
  `act / pre` (1 for ReLU/TopK), inactive ones stay 0: still affine, but effects now flow
  through downstream features (the paper's path sums).
* `"live"`: the transcoders' real activation functions (nonlinear).

With `freeze=False` attention and norms are recomputed (the real model, features live).

Residual "read points" order the stream so writers and readers can be compared: attention of
layer L reads at `2L`, its MLP at `2L + 1` (`2L` with a parallel residual), the unembedding at
`2 n_layers`; attention L writes at `2L`, MLP L at `2L + 1`; a writer reaches a reader iff
`write < read`. `ReplacementState.resid_at(read)` is the residual a reader sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor

from sparsecircuits.dictionaries import (
    Dictionary,
    EncoderWeights,
    TranscoderSet,
    as_transcoder_set,
    load_transcoders,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter, NormParams

FeatureMode = Literal["frozen", "linear", "live"]
FEATURE_MODES = ("frozen", "linear", "live")
# Where a transcoder may read its input, as the suffix of `blocks.L.<suffix>`.
TRANSCODER_INPUTS = ("hook_mlp_in", "ln2.hook_normalized", "hook_resid_mid")


# ---------------------------------------------------------------------------- edits


@dataclass
class FeatureEdit:
    """Set feature(s) `feature` of `layer` to `value` at `pos` (None: all) of prompt `batch` (None: all)."""

    layer: int
    feature: int | Sequence[int]
    pos: int | None = None
    value: float = 0.0
    batch: int | None = None


@dataclass
class HeadEdit:
    """Multiply head `head` of `layer`'s attention weights dest<-src by `scale` (0: ablate).

    `dest`/`src`/`batch` None means all. The weights are not renormalised, so scale 0 removes
    exactly what the head moved from src to dest (its value vectors, biases included).
    """

    layer: int
    head: int
    dest: int | None = None
    src: int | None = None
    batch: int | None = None
    scale: float = 0.0


@dataclass
class ErrorEdit:
    """Multiply the error term of `layer` at `pos` (None: all) by `scale` (0: remove it).

    For a layer without a transcoder the whole (frozen) MLP output is scaled.
    """

    layer: int
    pos: int | None = None
    batch: int | None = None
    scale: float = 0.0


@dataclass
class EmbedEdit:
    """Multiply the input embedding (token + learned position) at `pos` by `scale`."""

    pos: int | None = None
    batch: int | None = None
    scale: float = 0.0


@dataclass
class Edits:
    """Interventions applied by `ReplacementModel.forward_with`.

    `feature_fns[layer]` maps that layer's activations `[b, p, d_sae]` to new ones (after the
    point edits are applied), e.g. for mean ablation. `drop_errors` lists layers whose error
    term is removed everywhere (the pure transcoder output is used).
    """

    features: list[FeatureEdit] = field(default_factory=list)
    heads: list[HeadEdit] = field(default_factory=list)
    errors: list[ErrorEdit] = field(default_factory=list)
    embeds: list[EmbedEdit] = field(default_factory=list)
    feature_fns: dict[int, Callable[[Tensor], Tensor]] = field(default_factory=dict)
    drop_errors: set[int] = field(default_factory=set)

    def __add__(self, other: Edits) -> Edits:
        return Edits(
            features=self.features + other.features,
            heads=self.heads + other.heads,
            errors=self.errors + other.errors,
            embeds=self.embeds + other.embeds,
            feature_fns={**self.feature_fns, **other.feature_fns},
            drop_errors=self.drop_errors | other.drop_errors,
        )


@dataclass
class Multipliers:
    """Unit tensors multiplied into the forward pass so that d(target)/d(multiplier) = attribution.

    Each is None (absent) or a tensor of ones with `requires_grad`: `embed [b,p,1]`,
    `features[L] [b,p,d_sae]`, `errors[L] [b,p,1]` (whole MLP output for layers without a
    transcoder), `patterns[L] [b,h,q,k]`.
    """

    embed: Tensor | None = None
    features: dict[int, Tensor] = field(default_factory=dict)
    errors: dict[int, Tensor] = field(default_factory=dict)
    patterns: dict[int, Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------- state


@dataclass
class ReplacementState:
    """Everything a replacement-model run computed, batched over prompts (`b` prompts, `p` positions).

    Per layer (lists indexed by layer): `resid_pre`, `resid_mid`, `resid_post`, `attn_out`,
    `mlp_in` (what the MLP / transcoder sees after ln2 and its gain), `mlp_out` (what was
    added to the residual) `[b,p,d]`; `ln1_scale`, `ln2_scale` `[b,p,1]` (norm denominators);
    `values [b,p,h,d_head]` (value vectors, bias included); `patterns [b,h,q,k]`.
    Per transcoder layer (dicts): `tc_in` (the transcoder's input), `feature_pre`,
    `feature_acts`, `feature_gain` (`act/pre` where active, else 0) `[b,p,d_sae]`; `tc_out`,
    `errors` `[b,p,d]`. Global: `input_ids [b,p]`, `embed [b,p,d]` (token + learned position),
    `ln_final_scale [b,p,1]`, `final_normed [b,p,d]` (ln_final output, gain applied),
    `logits [b,p,vocab]`. `frozen` is the default `freeze` of `forward_with`.
    """

    input_ids: Tensor
    embed: Tensor
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    resid_post: list[Tensor]
    attn_out: list[Tensor]
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    ln1_scale: list[Tensor]
    ln2_scale: list[Tensor]
    values: list[Tensor]
    patterns: list[Tensor]
    tc_in: dict[int, Tensor]
    feature_pre: dict[int, Tensor]
    feature_acts: dict[int, Tensor]
    feature_gain: dict[int, Tensor]
    tc_out: dict[int, Tensor]
    errors: dict[int, Tensor]
    ln_final_scale: Tensor
    final_normed: Tensor
    logits: Tensor
    parallel_residual: bool = False
    frozen: bool = True

    @property
    def n_prompts(self) -> int:
        """Number of prompts (batch size)."""
        return int(self.input_ids.shape[0])

    @property
    def n_pos(self) -> int:
        """Number of positions."""
        return int(self.input_ids.shape[1])

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return len(self.resid_pre)

    @property
    def resid_final(self) -> Tensor:
        """Residual stream after the last block `[b,p,d]` (input of ln_final)."""
        return self.resid_post[-1]

    def resid_at(self, read: int) -> Tensor:
        """Return the residual stream `[b,p,d]` that reader `read` sees (see module docstring)."""
        n = self.n_layers
        if not 0 <= read <= 2 * n:
            raise SparseCircuitsError(f"read point {read} is out of range 0..{2 * n}")
        if read == 2 * n:
            return self.resid_final
        layer, odd = divmod(read, 2)
        return self.resid_mid[layer] if odd else self.resid_pre[layer]

    def select(self, index: Tensor | Sequence[int]) -> ReplacementState:
        """Return the state of prompts `index` (repeats allowed: used to batch many targets)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                values[f.name] = value.index_select(0, index)
            elif isinstance(value, list):
                values[f.name] = [t.index_select(0, index) for t in value]
            elif isinstance(value, dict):
                values[f.name] = {k: t.index_select(0, index) for k, t in value.items()}
        return replace(self, **values)

    def detach(self) -> ReplacementState:
        """Return the same state with every tensor detached from autograd."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                values[f.name] = value.detach()
            elif isinstance(value, list):
                values[f.name] = [t.detach() for t in value]
            elif isinstance(value, dict):
                values[f.name] = {k: t.detach() for k, t in value.items()}
        return replace(self, **values)


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Layer:
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    b_O: Tensor
    ln1: NormParams
    ln2: NormParams
    attn_scale: float
    qk_norms: tuple[NormParams, NormParams] | None
    sliding_window: int | None


def _cast_norm(params: NormParams, dtype: torch.dtype) -> NormParams:
    return NormParams(
        kind=params.kind,
        weight=params.weight.to(dtype),
        bias=None if params.bias is None else params.bias.to(dtype),
        eps=params.eps,
    )


def norm_scale(x: Tensor, params: NormParams) -> Tensor:
    """Return the norm's denominator `[..., 1]`: sqrt(var + eps) (LayerNorm) or sqrt(mean(x²) + eps)."""
    if params.kind == "layernorm":
        return torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + params.eps)
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + params.eps)


def normalize_with_scale(x: Tensor, params: NormParams, scale: Tensor) -> Tensor:
    """Return the norm's output before its gain, dividing by a given `scale` (linear in x)."""
    if params.kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    return x / scale


def apply_norm_gain(normalized: Tensor, params: NormParams) -> Tensor:
    """Return `normalized * weight (+ bias)`."""
    out = normalized * params.weight
    return out if params.bias is None else out + params.bias


def pull_back_norm(vector: Tensor, params: NormParams, scale: Tensor, gain: bool = True) -> Tensor:
    """Return the residual-space vector u with `u · x == vector · (norm(x) - bias)` at a frozen scale.

    `vector [..., d]` lives after the norm (after its gain when `gain`, else before);
    `scale [..., 1]` is the frozen denominator. LayerNorm's mean subtraction is included.
    """
    u = vector * params.weight if gain else vector
    if params.kind == "layernorm":
        u = u - u.mean(-1, keepdim=True)
    return u / scale


def _per_head(x: Tensor, weight: Tensor) -> Tensor:
    """`x [b,p,d]` times per-head `weight [h,d,e]` -> `[b,p,h,e]` (one matmul)."""
    h, d, e = weight.shape
    return (x @ weight.permute(1, 0, 2).reshape(d, h * e)).view(*x.shape[:-1], h, e)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first `cos.shape[-1]` dims of `x [b,p,h,dh]` with `cos/sin [p, r]`."""
    r = cos.shape[-1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


class ReplacementModel:
    """The adapter's model with transcoders in place of its MLPs.

    `transcoders` is a `TranscoderSet` (per-layer transcoders, skip transcoders included, or
    one cross-layer transcoder), or a `{layer: transcoder}` mapping. `run(input_ids)` returns
    the clean `ReplacementState` (exact model logits); `forward_with(state, edits)` /
    `run_with(state, edits)` re-run it with edits under frozen attention, norms and errors (see
    module docstring). All computation is in `dtype` (float32 by default) on the adapter's
    device. `feature_layers` lists the transcoder layers.
    """

    @classmethod
    def load(
        cls, model: str = "embedded", transcoders: str = "embedded", device: str | None = None
    ) -> ReplacementModel:
        """Return the replacement model of `load_model(model)` with `load_transcoders(transcoders)`
        (a folder of per-layer transcoders, a saved cross-layer transcoder, or "embedded")."""
        from sparsecircuits.models import load_model

        adapter = load_model(model, device=device)
        return cls(adapter, load_transcoders(transcoders, device=adapter.device))

    def __init__(
        self,
        adapter: ModelAdapter,
        transcoders: TranscoderSet | Mapping[int, Dictionary],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Check that each transcoder layer L maps `blocks.L.<MLP input>` to `blocks.L.hook_mlp_out`
        of this model with the model's width."""
        self.adapter = adapter
        self.dtype = dtype
        self.device = adapter.device
        self.n_layers = adapter.n_layers
        self.n_heads = adapter.n_heads
        self.d_model = adapter.d_model
        self.parallel_residual = bool(adapter.parallel_residual)
        self.transcoders = as_transcoder_set(transcoders)
        self.feature_layers: list[int] = self.transcoders.layers
        if self.feature_layers != sorted(set(self.feature_layers)):
            raise SparseCircuitsError(
                f"the transcoders' layers {self.feature_layers} must be distinct and increasing"
            )
        self.tc_input: dict[int, str] = {}
        self._encoders: dict[int, EncoderWeights] = {}
        self._output_bias: dict[int, Tensor] = {}
        self._skip: dict[int, Tensor] = {}
        # source layer -> [(target layer, block [d_sae, d])]; target layer -> [(source, block)]
        self._decoders: dict[int, list[tuple[int, Tensor]]] = {}
        self._writers: dict[int, list[tuple[int, Tensor]]] = {}
        for layer in self.feature_layers:
            self.tc_input[layer] = self._check_transcoder(layer)
            self._cache_transcoder(layer)
        self._layers = [self._layer_weights(layer) for layer in range(self.n_layers)]
        self.ln_final = _cast_norm(adapter.norm("ln_final"), dtype)
        self.W_E = adapter.W_E.to(dtype)
        W_pos = adapter.W_pos
        self.W_pos = None if W_pos is None else W_pos.to(dtype)
        self.W_U = adapter.W_U.to(dtype)
        self.b_U = adapter.b_U.to(dtype)
        self._mlps = [block.get_submodule(adapter.spec.mlp) for block in adapter.blocks]

    def _layer_weights(self, layer: int) -> _Layer:
        """Attention weights and norms of `layer`, cast to `dtype`."""
        adapter, dtype = self.adapter, self.dtype
        w = adapter.attention_weights(layer)
        qk = adapter.qk_norms(layer)
        return _Layer(
            W_Q=w.W_Q.to(dtype),
            W_K=w.W_K.to(dtype),
            W_V=w.W_V.to(dtype),
            W_O=w.W_O.to(dtype),
            b_Q=w.b_Q.to(dtype),
            b_K=w.b_K.to(dtype),
            b_V=w.b_V.to(dtype),
            b_O=w.b_O.to(dtype),
            ln1=_cast_norm(adapter.norm("ln1", layer), dtype),
            ln2=_cast_norm(adapter.norm("ln2", layer), dtype),
            attn_scale=adapter.attn_scale(layer),
            qk_norms=None if qk is None else (_cast_norm(qk[0], dtype), _cast_norm(qk[1], dtype)),
            sliding_window=adapter.sliding_window(layer),
        )

    def _cache_transcoder(self, layer: int) -> None:
        """Keep layer `layer`'s transcoder weights detached, in `dtype`, on the model's device."""

        def cast(t: Tensor) -> Tensor:
            return t.detach().to(self.device, self.dtype)

        encoder = self.transcoders.encoder(layer)
        self._encoders[layer] = EncoderWeights(
            cast(encoder.W_enc), cast(encoder.b_enc), cast(encoder.b_in)
        )
        self._output_bias[layer] = cast(self.transcoders.output_bias(layer))
        skip = self.transcoders.skip(layer)
        if skip is not None:
            self._skip[layer] = cast(skip)
        self._decoders[layer] = [
            (target, cast(block).contiguous()) for target, block in self.transcoders.decoders(layer)
        ]
        for target, block in self._decoders[layer]:
            self._writers.setdefault(target, []).append((layer, block))

    # ------------------------------------------------------------------ checks and accessors

    def _check_transcoder(self, layer: int) -> str:
        """Raise unless transcoder layer `layer` fits this model; return its input hook's suffix."""
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(
                f"transcoder for layer {layer}, but the model has layers 0..{self.n_layers - 1}"
            )
        hook_in, hook_out = self.transcoders.hook_in(layer), self.transcoders.hook_out(layer)
        valid_in = [f"blocks.{layer}.{s}" for s in TRANSCODER_INPUTS]
        if self.parallel_residual:
            valid_in = valid_in[:2]
        if hook_in not in valid_in or hook_out != f"blocks.{layer}.hook_mlp_out":
            raise SparseCircuitsError(
                f"transcoder for layer {layer} maps {hook_in} -> {hook_out}; a ReplacementModel needs "
                f"one of {', '.join(valid_in)} -> blocks.{layer}.hook_mlp_out (each transcoder layer "
                "reads and writes its own block, layers increasing)"
            )
        encoder = self.transcoders.encoder(layer)
        d_in, d_out = encoder.W_enc.shape[0], self.transcoders.output_bias(layer).shape[-1]
        if d_in != self.d_model or d_out != self.d_model:
            raise SparseCircuitsError(
                f"transcoder for layer {layer} is {d_in} -> {d_out} wide but the model has "
                f"d_model {self.d_model}; use transcoders trained on this model"
            )
        return hook_in.split(".", 2)[2]

    def layer_weights(self, layer: int) -> _Layer:
        """Return the cached attention weights and norms of `layer` (TransformerLens orientation)."""
        return self._layers[layer]

    def encoder(self, layer: int) -> EncoderWeights:
        """Return the transcoder of `layer`'s encoder (`W_enc [d, d_sae]`, `b_enc [d_sae]`,
        `b_in [d]`) in `dtype`, detached."""
        if layer not in self._encoders:
            raise SparseCircuitsError(
                f"layer {layer} has no transcoder; layers with transcoders: {self.feature_layers}"
            )
        return self._encoders[layer]

    def output_bias(self, layer: int) -> Tensor:
        """Return the bias `[d]` the transcoders add to `layer`'s MLP output (`b_dec`)."""
        self.encoder(layer)
        return self._output_bias[layer]

    def d_sae(self, layer: int) -> int:
        """Number of features of transcoder layer `layer`."""
        return int(self.encoder(layer).W_enc.shape[1])

    def decoders(self, layer: int) -> list[tuple[int, Tensor]]:
        """Return `[(target layer, W_dec block [d_sae, d])]`: where the features of `layer` write.

        One block (to `layer` itself) for a per-layer transcoder; for a cross-layer transcoder one
        per layer it covers from `layer` on, in increasing order.
        """
        self.encoder(layer)
        return self._decoders[layer]

    def decoder_projections(self, layer: int, vectors: Tensor, before_read: int) -> Tensor:
        """Return `[n, d_sae]`: `vectors [n, d] · decoder_vectors(layer, None, before_read)[f]` for every
        feature f (one matmul per decoder block, without summing the blocks first)."""
        out: Tensor | None = None
        for target, block in self.decoders(layer):
            if self.mlp_write(target) < before_read:
                projection = vectors @ block.T
                out = projection if out is None else out + projection
        if out is None:
            return vectors.new_zeros(vectors.shape[0], self.d_sae(layer))
        return out

    def decoder_vectors(
        self,
        layer: int,
        features: int | Sequence[int] | Tensor | None = None,
        before_read: int | None = None,
    ) -> Tensor:
        """Return the features' total write into the residual stream as a reader at `before_read` sees it.

        The sum of the features' decoder rows over the target layers whose MLP writes before read
        point `before_read` (all targets when None). Shape `[d]` for an int feature, `[n, d]` for
        `n` features, `[d_sae, d]` for None (every feature). Zeros when no block writes before it.
        """
        blocks = [
            block
            for target, block in self.decoders(layer)
            if before_read is None or self.mlp_write(target) < before_read
        ]
        if features is None:
            index: int | Tensor | slice = slice(None)
        elif isinstance(features, int):
            index = features
        else:
            index = torch.as_tensor(features, dtype=torch.long, device=self.device)
        if not blocks:
            rows = torch.zeros(
                self.d_sae(layer), self.d_model, dtype=self.dtype, device=self.device
            )
            return rows[index]
        out = blocks[0][index]
        for block in blocks[1:]:
            out = out + block[index]
        return out

    def skip_weight(self, layer: int) -> Tensor | None:
        """Return `W_skip [d_out, d_in]` of a skip transcoder, else None."""
        return self._skip.get(layer)

    def attn_read(self, layer: int) -> int:
        """Read point of attention `layer`'s input (its ln1 reads `resid_pre[layer]`)."""
        return 2 * layer

    def mlp_read(self, layer: int) -> int:
        """Read point of MLP `layer`'s input (`resid_mid`, or `resid_pre` with a parallel residual)."""
        return 2 * layer if self.parallel_residual else 2 * layer + 1

    @property
    def final_read(self) -> int:
        """Read point of the unembedding (ln_final reads the final residual)."""
        return 2 * self.n_layers

    @staticmethod
    def attn_write(layer: int) -> int:
        """Write point of attention `layer`."""
        return 2 * layer

    @staticmethod
    def mlp_write(layer: int) -> int:
        """Write point of MLP `layer`."""
        return 2 * layer + 1

    # ------------------------------------------------------------------ public runs

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool = True) -> Tensor:
        """Return input_ids `[n, p]` from the adapter's tokenizer."""
        return self.adapter.tokenize(texts, prepend_bos=prepend_bos)

    @torch.no_grad()
    def run(self, input_ids: Tensor, freeze: bool = True) -> ReplacementState:
        """Run the clean prompts `[b, p]` and return their `ReplacementState`.

        The logits equal the model's. `freeze` becomes the state's default for `forward_with`.
        """
        input_ids = self._check_ids(input_ids)
        state = self._forward(
            input_ids, clean=None, freeze=False, features="live", edits=None, mults=None
        )
        state.frozen = freeze
        return state

    @torch.no_grad()
    def forward_with(
        self,
        state: ReplacementState,
        edits: Edits | None = None,
        freeze: bool | None = None,
        features: FeatureMode | None = None,
    ) -> Tensor:
        """Re-run `state`'s prompts with `edits`; return logits `[b, p, vocab]`.

        `freeze` (default `state.frozen`) keeps attention patterns, norm denominators and
        non-transcoder MLP outputs at their clean values; errors are always the clean ones.
        `features` defaults to "frozen" when freezing, else "live".
        """
        return self.run_with(state, edits, freeze=freeze, features=features).logits

    @torch.no_grad()
    def run_with(
        self,
        state: ReplacementState,
        edits: Edits | None = None,
        freeze: bool | None = None,
        features: FeatureMode | None = None,
    ) -> ReplacementState:
        """Like `forward_with` but return the whole edited `ReplacementState`."""
        freeze = state.frozen if freeze is None else freeze
        features = features or ("frozen" if freeze else "live")
        return self._run_edited(state, edits, freeze, features, None)

    def run_with_multipliers(
        self,
        state: ReplacementState,
        mults: Multipliers,
        features: FeatureMode = "frozen",
        edits: Edits | None = None,
    ) -> ReplacementState:
        """Frozen re-run with unit multipliers in the graph (grad enabled) for attribution."""
        return self._run_edited(state, edits, True, features, mults)

    def _run_edited(
        self,
        state: ReplacementState,
        edits: Edits | None,
        freeze: bool,
        features: FeatureMode,
        mults: Multipliers | None,
    ) -> ReplacementState:
        if features not in FEATURE_MODES:
            raise SparseCircuitsError(f"features must be one of {FEATURE_MODES}, got {features!r}")
        if features == "linear" and not freeze:
            raise SparseCircuitsError(
                'features="linear" needs freeze=True (gains are taken at the clean point)'
            )
        out = self._forward(
            state.input_ids, clean=state, freeze=freeze, features=features, edits=edits, mults=mults
        )
        out.frozen = state.frozen
        return out

    # ------------------------------------------------------------------ the forward pass

    def _check_ids(self, input_ids: Tensor) -> Tensor:
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
            raise SparseCircuitsError(
                "input_ids must be an integer tensor [batch, pos]; tokenize prompts first"
            )
        if input_ids.shape[1] > self.adapter.max_context:
            raise SparseCircuitsError(
                f"prompts of {input_ids.shape[1]} tokens exceed max_context {self.adapter.max_context}; shorten them"
            )
        return input_ids.to(self.device)

    def _embed(self, input_ids: Tensor) -> Tensor:
        embed = self.W_E[input_ids]
        if self.W_pos is not None:
            embed = embed + self.W_pos[: input_ids.shape[1]][None]
        return embed

    def _live_pattern(
        self, layer: int, attn_in: Tensor, rotary: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        w = self._layers[layer]
        q = _per_head(attn_in, w.W_Q) + w.b_Q
        k = _per_head(attn_in, w.W_K) + w.b_K
        if w.qk_norms is not None:
            q_norm, k_norm = w.qk_norms
            q = apply_norm_gain(normalize_with_scale(q, q_norm, norm_scale(q, q_norm)), q_norm)
            k = apply_norm_gain(normalize_with_scale(k, k_norm, norm_scale(k, k_norm)), k_norm)
        if rotary is not None:
            cos, sin = rotary
            q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * w.attn_scale
        p = scores.shape[-1]
        pos = torch.arange(p, device=scores.device)
        allowed = pos[None, :] <= pos[:, None]
        if w.sliding_window is not None:
            allowed = allowed & (pos[None, :] > pos[:, None] - w.sliding_window)
        scores = scores.masked_fill(~allowed, -math.inf)
        return torch.softmax(scores, dim=-1)

    def _forward(
        self,
        input_ids: Tensor,
        clean: ReplacementState | None,
        freeze: bool,
        features: FeatureMode,
        edits: Edits | None,
        mults: Multipliers | None,
    ) -> ReplacementState:
        edits = edits or Edits()
        mults = mults or Multipliers()
        b, p = input_ids.shape
        embed = self._embed(input_ids)
        embed = _scale_positions(embed, edits.embeds)
        if mults.embed is not None:
            embed = embed * mults.embed
        rotary = None
        if self.adapter.positional == "rotary" and not freeze:
            cs = self.adapter.rotary_cos_sin(torch.arange(p, device=self.device))
            if cs is not None:
                rotary = (cs[0].to(self.dtype), cs[1].to(self.dtype))
        caches: dict[str, list[Tensor]] = {
            k: []
            for k in (
                "resid_pre",
                "resid_mid",
                "resid_post",
                "attn_out",
                "mlp_in",
                "mlp_out",
                "ln1_scale",
                "ln2_scale",
                "values",
                "patterns",
            )
        }
        tc_caches: dict[str, dict[int, Tensor]] = {
            k: {}
            for k in ("tc_in", "feature_pre", "feature_acts", "feature_gain", "tc_out", "errors")
        }
        resid = embed
        for layer in range(self.n_layers):
            w = self._layers[layer]
            resid_pre = resid
            scale1 = (
                clean.ln1_scale[layer]
                if (freeze and clean is not None)
                else norm_scale(resid_pre, w.ln1)
            )
            attn_in = apply_norm_gain(normalize_with_scale(resid_pre, w.ln1, scale1), w.ln1)
            values = _per_head(attn_in, w.W_V) + w.b_V
            if freeze and clean is not None:
                pattern = clean.patterns[layer]
            else:
                pattern = self._live_pattern(layer, attn_in, rotary)
            pattern = _edit_pattern(pattern, [e for e in edits.heads if e.layer == layer])
            if layer in mults.patterns:
                pattern = pattern * mults.patterns[layer]
            z = torch.matmul(pattern, values.transpose(1, 2)).transpose(1, 2)  # [b, q, h, e]
            attn_out = z.flatten(2) @ w.W_O.flatten(0, 1) + w.b_O
            resid_mid = resid_pre + attn_out
            mlp_read = resid_pre if self.parallel_residual else resid_mid
            scale2 = (
                clean.ln2_scale[layer]
                if (freeze and clean is not None)
                else norm_scale(mlp_read, w.ln2)
            )
            normalized2 = normalize_with_scale(mlp_read, w.ln2, scale2)
            mlp_in = apply_norm_gain(normalized2, w.ln2)
            if layer in self._encoders:
                tc_in = {
                    "hook_mlp_in": mlp_in,
                    "ln2.hook_normalized": normalized2,
                    "hook_resid_mid": resid_mid,
                }[self.tc_input[layer]]
                mlp_out = self._transcoder_layer(
                    layer, tc_in, mlp_in, clean, features, edits, mults, tc_caches
                )
            else:
                if clean is not None and freeze:
                    mlp_out = clean.mlp_out[layer]
                else:
                    mlp_out = self._mlps[layer](mlp_in).to(self.dtype)
                # Without a transcoder the whole MLP output plays the error term's role.
                mlp_out = _scale_positions(mlp_out, [e for e in edits.errors if e.layer == layer])
                if layer in mults.errors:
                    mlp_out = mlp_out * mults.errors[layer]
            resid = resid_mid + mlp_out
            for name, value in (
                ("resid_pre", resid_pre),
                ("resid_mid", resid_mid),
                ("resid_post", resid),
                ("attn_out", attn_out),
                ("mlp_in", mlp_in),
                ("mlp_out", mlp_out),
                ("ln1_scale", scale1),
                ("ln2_scale", scale2),
                ("values", values),
                ("patterns", pattern),
            ):
                caches[name].append(value)
        scale_f = (
            clean.ln_final_scale
            if (freeze and clean is not None)
            else norm_scale(resid, self.ln_final)
        )
        final_normed = apply_norm_gain(
            normalize_with_scale(resid, self.ln_final, scale_f), self.ln_final
        )
        logits = final_normed @ self.W_U + self.b_U
        return ReplacementState(
            input_ids=input_ids,
            embed=embed,
            **caches,  # type: ignore[arg-type]
            **tc_caches,  # type: ignore[arg-type]
            ln_final_scale=scale_f,
            final_normed=final_normed,
            logits=logits,
            parallel_residual=self.parallel_residual,
        )

    def _transcoder_layer(
        self,
        layer: int,
        tc_in: Tensor,
        mlp_in: Tensor,
        clean: ReplacementState | None,
        features: FeatureMode,
        edits: Edits,
        mults: Multipliers,
        caches: dict[str, dict[int, Tensor]],
    ) -> Tensor:
        encoder = self._encoders[layer]
        pre = (tc_in - encoder.b_in) @ encoder.W_enc + encoder.b_enc
        if clean is None or features == "live":
            with torch.no_grad():
                acts = self.transcoders.encode_layer(tc_in, layer).to(self.device, self.dtype)
        elif features == "frozen":
            acts = clean.feature_acts[layer]
        else:
            acts = clean.feature_gain[layer] * pre
        acts = _set_features(acts, [e for e in edits.features if e.layer == layer])
        if layer in edits.feature_fns:
            acts = edits.feature_fns[layer](acts)
        if layer in mults.features:
            acts = acts * mults.features[layer]
        # Sources before `layer` (a cross-layer transcoder's) already sit, edited, in the cache.
        caches["feature_acts"][layer] = acts
        writers = self._writers[layer]
        tc_out = caches["feature_acts"][writers[0][0]] @ writers[0][1] + self._output_bias[layer]
        for source, block in writers[1:]:
            tc_out = tc_out + caches["feature_acts"][source] @ block
        if layer in self._skip:
            tc_out = tc_out + tc_in @ self._skip[layer].T
        if clean is None:
            error = self._mlps[layer](mlp_in).to(self.dtype) - tc_out
            gain = torch.where(
                acts != 0,
                acts / torch.where(pre != 0, pre, torch.ones_like(pre)),
                torch.zeros_like(acts),
            )
        else:
            error = clean.errors[layer]
            gain = clean.feature_gain[layer]
        if layer in edits.drop_errors:
            error = torch.zeros_like(error)
        error = _scale_positions(error, [e for e in edits.errors if e.layer == layer])
        if layer in mults.errors:
            error = error * mults.errors[layer]
        caches["tc_in"][layer] = tc_in
        caches["feature_pre"][layer] = pre
        caches["feature_gain"][layer] = gain
        caches["tc_out"][layer] = tc_out
        caches["errors"][layer] = error
        return tc_out + error


# ---------------------------------------------------------------------------- edit helpers


def _index(batch: int | None, pos: int | None) -> tuple[slice | int, slice | int]:
    return (slice(None) if batch is None else batch, slice(None) if pos is None else pos)


def _scale_positions(x: Tensor, edits: Sequence[ErrorEdit | EmbedEdit]) -> Tensor:
    """Return `x [b,p,d]` with `x[batch, pos] *= scale` for each edit (out of place)."""
    if not edits:
        return x
    factor = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    for edit in edits:
        bi, pi = _index(edit.batch, edit.pos)
        factor[bi, pi] = factor[bi, pi] * edit.scale
    return x * factor


def _edit_pattern(pattern: Tensor, edits: Sequence[HeadEdit]) -> Tensor:
    if not edits:
        return pattern
    factor = torch.ones_like(pattern)
    for e in edits:
        bi = slice(None) if e.batch is None else e.batch
        di = slice(None) if e.dest is None else e.dest
        si = slice(None) if e.src is None else e.src
        factor[bi, e.head, di, si] = factor[bi, e.head, di, si] * e.scale
    return pattern * factor


def _set_features(acts: Tensor, edits: Sequence[FeatureEdit]) -> Tensor:
    if not edits:
        return acts
    acts = acts.clone()
    for e in edits:
        bi, pi = _index(e.batch, e.pos)
        feats = (
            e.feature
            if isinstance(e.feature, int)
            else torch.as_tensor(list(e.feature), dtype=torch.long)
        )
        view = acts[bi, pi]
        view[..., feats] = e.value
        acts[bi, pi] = view
    return acts
