"""ReplacementModel: the LM with transcoders in place of its MLPs, exact thanks to error terms.

The model is re-implemented as one functional forward pass from the weight accessors of
`ModelAdapter` (GPT-2, GPT-NeoX with parallel residual and partial rotary, Llama / Qwen2 /
Qwen3 / Mistral with RoPE (Llama-3's scaled RoPE included), grouped-query attention, RMSNorm,
Qwen3's q/k norms, Mistral's sliding window; Gemma-2 / Gemma-3 with their scaled embeddings,
norms around attention and MLP, attention-score and logit soft-capping, per-layer sliding
windows and Gemma-3's per-layer rotary bases). At every layer that has a transcoder the MLP output is

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

Gemma. The MLP output is what joins the residual stream, after the post-MLP norm. A transcoder
writing `blocks.L.hook_mlp_out` (as Gemma Scope's do) replaces MLP and post-norm together; one
writing `blocks.L.mlp.hook_out` replaces the MLP alone (circuit-tracer's `mlp.hook_out`), and
its output, error included, then passes through the post-MLP norm, whose denominator is frozen
like every other norm's (so a feature writes `act · W_dec ⊙ gain / scale[pos]` into the
residual; `post_mlp_map`). Such a transcoder must be per-layer. Attention
output passes through the post-attention norm: `attn_out = ln1_post(z W_O + b_O)`, its
denominator frozen like every other norm, so each head's share stays additive. Soft-capped
attention scores are computed explicitly (`c · tanh(s / c)` before the mask); frozen patterns
need nothing more. The state's `logits` are the model's, after the final soft-cap;
`final_normed @ W_U + b_U` are the logits before it, which attribution targets read (as
circuit-tracer attributes Gemma's pre-cap logits): the cap is the one non-linearity after the
residual stream and would make logit targets non-additive.

Freezing. `forward_with(state, edits, freeze=True)` re-runs the prompt with the attention
patterns, the norm denominators (LayerNorm's `sqrt(var + eps)`, RMSNorm's `sqrt(mean(x²) + eps)`,
Gemma's post-norms included; the LayerNorm mean is still subtracted, which is linear) and the
error terms taken from the clean `state`. Transcoder features then follow `features`:

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

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor

from sparsecircuits.circuits.edits import (
    Edits,
    EmbedEdit,
    ErrorEdit,
    FeatureEdit,
    HeadEdit,
    Multipliers,
    edit_features,
    edit_pattern,
    scale_positions,
)
from sparsecircuits.circuits.state import BlockRecord, ReplacementState, TranscoderRecord
from sparsecircuits.dictionaries import (
    Dictionary,
    EncoderWeights,
    TranscoderSet,
    as_transcoder_set,
    load_transcoders,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import AttentionWeights, ModelAdapter, NormParams
from sparsecircuits.models.architectures import apply_gain, norm_scale, normalize_with_scale
from sparsecircuits.models.hooks import NormStage, pre_mlp_norm_stage, softcap

__all__ = [
    "FEATURE_MODES",
    "TRANSCODER_INPUTS",
    "TRANSCODER_OUTPUTS",
    "EmbedEdit",
    "ErrorEdit",
    "FeatureEdit",
    "FeatureMode",
    "HeadEdit",
    "Edits",
    "Multipliers",
    "ReplacementModel",
    "ReplacementState",
]

FeatureMode = Literal["frozen", "linear", "live"]
FEATURE_MODES = ("frozen", "linear", "live")
# Where a transcoder may read its input, as the suffix of `blocks.L.<suffix>` (`hook_resid_mid`
# only without a parallel residual, where it is the MLP's residual input).
TRANSCODER_INPUTS = ("mlp.hook_in", "ln2.hook_normalized", "hook_mlp_in", "hook_resid_mid")
# Where it may write: what joins the residual, or the MLP's own output where that is the same
# tensor (every family without a post-MLP norm).
TRANSCODER_OUTPUTS = ("hook_mlp_out", "mlp.hook_out")


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Layer(AttentionWeights):
    """One layer's attention weights (cast to the model's dtype), norms and attention settings."""

    ln1: NormParams
    ln2: NormParams
    attn_scale: float
    qk_norms: tuple[NormParams, NormParams] | None
    sliding_window: int | None
    ln1_post: NormParams | None = None  # Gemma: between attention and the residual
    ln2_post: NormParams | None = None  # Gemma: between the MLP and the residual
    attn_softcap: float | None = None


def _through_norm(x: Tensor, params: NormParams, scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """`x [..., d]` through a norm whose denominator is `scale [..., 1]` (x's own when None):
    returns (output, the scale used)."""
    if scale is None:
        scale = norm_scale(x, params)
    return apply_gain(normalize_with_scale(x, params, scale), params), scale


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
        """Check that each transcoder layer L maps `blocks.L.<MLP input>` to `blocks.L.<MLP output>`
        (`TRANSCODER_INPUTS`, `TRANSCODER_OUTPUTS`) of this model with the model's width."""
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
        # per transcoder layer: its input is the pre-MLP norm's input, or its output before or
        # after the gain (`models.hooks.pre_mlp_norm_stage`)
        self.tc_stage: dict[int, NormStage] = {}
        self.tc_output: dict[int, str] = {}
        self._encoders: dict[int, EncoderWeights] = {}
        self._output_bias: dict[int, Tensor] = {}
        self._skip: dict[int, Tensor] = {}
        # source layer -> [(target layer, block [d_sae, d])]; target layer -> [(source, block)]
        self._decoders: dict[int, list[tuple[int, Tensor]]] = {}
        self._writers: dict[int, list[tuple[int, Tensor]]] = {}
        for layer in self.feature_layers:
            self._cache_transcoder(layer)
            self.tc_input[layer], self.tc_output[layer] = self._check_transcoder(layer)
            stage = pre_mlp_norm_stage(self.tc_input[layer], adapter.norm_kind)
            assert stage is not None  # every TRANSCODER_INPUTS suffix has a stage
            self.tc_stage[layer] = stage
        self._layers = [self._layer_weights(layer) for layer in range(self.n_layers)]
        # transcoder layers whose output still passes through a post-MLP norm
        self._post_mlp: dict[int, NormParams] = {}
        for layer, output in self.tc_output.items():
            post = self._layers[layer].ln2_post
            if output == "mlp.hook_out" and post is not None:
                self._post_mlp[layer] = post
        self.ln_final = adapter.norm("ln_final").to(dtype)
        self.logit_softcap = adapter.logit_softcap
        W_pos = adapter.W_pos
        self.W_pos = None if W_pos is None else W_pos.to(dtype)
        self.W_U = adapter.W_U.to(dtype)
        self.b_U = adapter.b_U.to(dtype)
        self._mlps = [block.get_submodule(adapter.spec.mlp) for block in adapter.blocks]

    def _layer_weights(self, layer: int) -> _Layer:
        """Attention weights and norms of `layer`, cast to `dtype`."""
        adapter, dtype = self.adapter, self.dtype
        w = adapter.attention_weights(layer)
        weights: dict[str, Any] = {f.name: getattr(w, f.name).to(dtype) for f in fields(w)}
        qk = adapter.qk_norms(layer)
        ln1_post, ln2_post = adapter.post_norm("attn", layer), adapter.post_norm("mlp", layer)
        return _Layer(
            **weights,
            ln1=adapter.norm("ln1", layer).to(dtype),
            ln2=adapter.norm("ln2", layer).to(dtype),
            attn_scale=adapter.attn_scale(layer),
            qk_norms=None if qk is None else (qk[0].to(dtype), qk[1].to(dtype)),
            sliding_window=adapter.sliding_window(layer),
            ln1_post=None if ln1_post is None else ln1_post.to(dtype),
            ln2_post=None if ln2_post is None else ln2_post.to(dtype),
            attn_softcap=adapter.attn_softcap(layer),
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

    def _check_transcoder(self, layer: int) -> tuple[str, str]:
        """Raise unless transcoder layer `layer` (cached) fits this model; return its input and
        output hooks' suffixes."""
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(
                f"transcoder for layer {layer}, but the model has layers 0..{self.n_layers - 1}"
            )
        hook_in, hook_out = self.transcoders.hook_in(layer), self.transcoders.hook_out(layer)
        valid_in = [f"blocks.{layer}.{s}" for s in TRANSCODER_INPUTS]
        if self.parallel_residual:
            valid_in.remove(f"blocks.{layer}.hook_resid_mid")
        valid_out = [f"blocks.{layer}.{s}" for s in TRANSCODER_OUTPUTS]
        if hook_in not in valid_in or hook_out not in valid_out:
            raise SparseCircuitsError(
                f"transcoder for layer {layer} maps {hook_in} -> {hook_out}; a ReplacementModel needs "
                f"one of {', '.join(valid_in)} -> {' or '.join(valid_out)} (each transcoder layer "
                "reads and writes its own block, layers increasing)"
            )
        post_mlp = self.adapter.post_norm("mlp", layer) is not None
        targets = [target for target, _ in self._decoders[layer]]
        if post_mlp and hook_out == valid_out[1] and targets != [layer]:
            raise SparseCircuitsError(
                f"the cross-layer transcoder writes {hook_out}, before this model's post-MLP "
                f"norm; cross-layer transcoders here must write blocks.{layer}.hook_mlp_out"
            )
        d_in, d_out = self._encoders[layer].W_enc.shape[0], self._output_bias[layer].shape[-1]
        if d_in != self.d_model or d_out != self.d_model:
            raise SparseCircuitsError(
                f"transcoder for layer {layer} is {d_in} -> {d_out} wide but the model has "
                f"d_model {self.d_model}; use transcoders trained on this model"
            )
        return hook_in.split(".", 2)[2], hook_out.split(".", 2)[2]

    def transcoder_post_norm(self, layer: int) -> NormParams | None:
        """Return the post-MLP norm transcoder `layer`'s output still passes through (Gemma, a
        transcoder writing `mlp.hook_out`), else None."""
        return self._post_mlp.get(layer)

    def post_mlp_map(
        self, state: ReplacementState, layer: int, vectors: Tensor, batch: Tensor, pos: Tensor
    ) -> Tensor:
        """Return `vectors [n, d]` (transcoder `layer`'s output space, rows `batch`, `pos`) as
        they join the residual stream: `vectors ⊙ gain / scale` through a post-MLP norm frozen at
        `state`'s scale when the transcoder writes before it, else `vectors`. The map is
        diagonal, so it also carries a residual functional back to the transcoder's output."""
        post = self._post_mlp.get(layer)
        scale = state.ln2_post_scale[layer] if post is not None else None
        if post is None or scale is None:
            return vectors
        return _through_norm(vectors, post, scale[batch, pos])[0]

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
        A transcoder writing before Gemma's post-MLP norm reaches the residual through that norm
        (`post_mlp_map`); the rows here are before it.
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

    def transcoder_output(self, layer: int, acts: Mapping[int, Tensor], tc_in: Tensor) -> Tensor:
        """Return what the transcoders write into transcoder layer `layer`'s MLP output `[b, p, d]`
        (before a post-MLP norm): `b_dec` plus every source layer's activations `acts[source]
        [b, p, d_sae]` times its decoder block into `layer`, plus the skip term of `tc_in`."""
        out = self._output_bias[layer]
        for source, block in self._writers[layer]:
            out = out + acts[source] @ block
        if layer in self._skip:
            out = out + tc_in @ self._skip[layer].T
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

    def cap_logits(self, logits: Tensor) -> Tensor:
        """Return the model's logits from the logits before its final soft-cap (Gemma), else
        `logits` unchanged."""
        return logits if self.logit_softcap is None else softcap(logits, self.logit_softcap)

    @functools.cached_property
    def W_E(self) -> Tensor:
        """Return the token embedding matrix `[vocab, d_model]` in this model's dtype. For Gemma it
        is a scaled copy, made on first use (de-embeddings) and kept; the forward pass embeds only
        the prompt's rows and never makes it."""
        return self.adapter.embed_tokens(None, self.dtype)

    def _embed(self, input_ids: Tensor) -> Tensor:
        embed = self.adapter.embed_tokens(input_ids, self.dtype)
        if self.W_pos is not None:
            embed = embed + self.W_pos[: input_ids.shape[1]][None]
        return embed

    def _live_pattern(
        self, layer: int, attn_in: Tensor, rotary: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """Attention probabilities `[b,h,q,k]` of `layer` recomputed from its input."""
        w = self._layers[layer]
        q = _per_head(attn_in, w.W_Q) + w.b_Q
        k = _per_head(attn_in, w.W_K) + w.b_K
        if w.qk_norms is not None:
            q_norm, k_norm = w.qk_norms
            q = apply_gain(normalize_with_scale(q, q_norm, norm_scale(q, q_norm)), q_norm)
            k = apply_gain(normalize_with_scale(k, k_norm, norm_scale(k, k_norm)), k_norm)
        if rotary is not None:
            cos, sin = rotary
            q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * w.attn_scale
        if w.attn_softcap is not None:
            scores = softcap(scores, w.attn_softcap)
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
        run = _Pass(clean, freeze, features, edits or Edits(), mults or Multipliers())
        embed = scale_positions(self._embed(input_ids), run.edits.embeds)
        if run.mults.embed is not None:
            embed = embed * run.mults.embed
        if self.adapter.positional == "rotary" and not freeze:
            positions = torch.arange(input_ids.shape[1], device=self.device)
            for layer in range(self.n_layers):
                cs = self.adapter.rotary_cos_sin(positions, layer)
                if cs is not None:
                    run.rotary[layer] = (cs[0].to(self.dtype), cs[1].to(self.dtype))
        blocks: list[BlockRecord] = []
        resid = embed
        for layer in range(self.n_layers):
            blocks.append(self._block(layer, resid, run))
            resid = blocks[-1].resid_post
        frozen = run.frozen
        scale_f = frozen.ln_final_scale if frozen else norm_scale(resid, self.ln_final)
        final_normed = apply_gain(
            normalize_with_scale(resid, self.ln_final, scale_f), self.ln_final
        )
        logits = self.cap_logits(final_normed @ self.W_U + self.b_U)
        return ReplacementState.assemble(
            input_ids,
            embed,
            blocks,
            run.transcoders,
            scale_f,
            final_normed,
            logits,
            self.parallel_residual,
        )

    def _block(self, layer: int, resid_pre: Tensor, run: _Pass) -> BlockRecord:
        """One block of the forward pass from its input residual `[b,p,d]`."""
        w, frozen = self._layers[layer], run.frozen
        scale2_post: Tensor | None = None
        scale1 = frozen.ln1_scale[layer] if frozen else norm_scale(resid_pre, w.ln1)
        attn_in = apply_gain(normalize_with_scale(resid_pre, w.ln1, scale1), w.ln1)
        values = _per_head(attn_in, w.W_V) + w.b_V
        pattern = (
            frozen.patterns[layer]
            if frozen
            else self._live_pattern(layer, attn_in, run.rotary.get(layer))
        )
        pattern = edit_pattern(pattern, [e for e in run.edits.heads if e.layer == layer])
        if layer in run.mults.patterns:
            pattern = pattern * run.mults.patterns[layer]
        z = torch.matmul(pattern, values.transpose(1, 2)).transpose(1, 2)  # [b, q, h, e]
        attn_out = z.flatten(2) @ w.W_O.flatten(0, 1) + w.b_O
        scale1_post = None
        if w.ln1_post is not None:
            frozen_scale = frozen.ln1_post_scale[layer] if frozen else None
            attn_out, scale1_post = _through_norm(attn_out, w.ln1_post, frozen_scale)
        resid_mid = resid_pre + attn_out
        mlp_read = resid_pre if self.parallel_residual else resid_mid
        scale2 = frozen.ln2_scale[layer] if frozen else norm_scale(mlp_read, w.ln2)
        normalized2 = normalize_with_scale(mlp_read, w.ln2, scale2)
        mlp_in = apply_gain(normalized2, w.ln2)
        if layer in self._encoders:
            stage = self.tc_stage[layer]
            tc_in = {"residual": mlp_read, "normalized": normalized2, "gained": mlp_in}[stage]
            mlp_out = self._transcoder_layer(layer, tc_in, mlp_in, run)
            post = self._post_mlp.get(layer)
            if post is not None:
                frozen_scale = frozen.ln2_post_scale[layer] if frozen else None
                mlp_out, scale2_post = _through_norm(mlp_out, post, frozen_scale)
        else:
            mlp_out = self._mlp_layer(layer, mlp_in, run)
        return BlockRecord(
            resid_pre,
            resid_mid,
            resid_mid + mlp_out,
            attn_out,
            mlp_in,
            mlp_out,
            scale1,
            scale2,
            values,
            pattern,
            scale1_post,
            scale2_post,
        )

    def _mlp_layer(self, layer: int, mlp_in: Tensor, run: _Pass) -> Tensor:
        """The real MLP's output (the clean one when frozen); it plays the error term's role."""
        mlp_out = run.frozen.mlp_out[layer] if run.frozen else self._mlp(layer, mlp_in)
        mlp_out = scale_positions(mlp_out, [e for e in run.edits.errors if e.layer == layer])
        if layer in run.mults.errors:
            mlp_out = mlp_out * run.mults.errors[layer]
        return mlp_out

    def _mlp(self, layer: int, mlp_in: Tensor) -> Tensor:
        """What the real MLP of `layer` writes for `mlp_in`, in `dtype`: into the residual (Gemma:
        after its post-norm, recomputed), or before that norm when the layer's transcoder
        writes there."""
        out = self._mlps[layer](mlp_in).to(self.dtype)
        post = self._layers[layer].ln2_post
        if post is not None and layer not in self._post_mlp:
            out, _ = _through_norm(out, post, None)
        return out

    def _transcoder_layer(self, layer: int, tc_in: Tensor, mlp_in: Tensor, run: _Pass) -> Tensor:
        """The transcoders' output plus the error term at `layer`; records the layer in `run`."""
        clean, edits, mults = run.clean, run.edits, run.mults
        encoder = self._encoders[layer]
        pre = (tc_in - encoder.b_in) @ encoder.W_enc + encoder.b_enc
        if clean is None or run.features == "live":
            with torch.no_grad():
                acts = self.transcoders.encode_layer(tc_in, layer).to(self.device, self.dtype)
        elif run.features == "frozen":
            acts = clean.feature_acts[layer]
        else:
            acts = clean.feature_gain[layer] * pre
        acts = edit_features(acts, [e for e in edits.features if e.layer == layer])
        if layer in edits.feature_fns:
            acts = edits.feature_fns[layer](acts)
        if layer in mults.features:
            acts = acts * mults.features[layer]
        run.feature_acts[layer] = acts  # sources before `layer` (a CLT's) are already there, edited
        tc_out = self.transcoder_output(layer, run.feature_acts, tc_in)
        if clean is None:
            error = self._mlp(layer, mlp_in) - tc_out
            safe_pre = torch.where(pre != 0, pre, torch.ones_like(pre))
            gain = torch.where(acts != 0, acts / safe_pre, torch.zeros_like(acts))
        else:
            error, gain = clean.errors[layer], clean.feature_gain[layer]
        if layer in edits.drop_errors:
            error = torch.zeros_like(error)
        error = scale_positions(error, [e for e in edits.errors if e.layer == layer])
        if layer in mults.errors:
            error = error * mults.errors[layer]
        run.transcoders[layer] = TranscoderRecord(tc_in, pre, acts, gain, tc_out, error)
        return tc_out + error


@dataclass
class _Pass:
    """The settings of one forward pass and what it has recorded so far."""

    clean: ReplacementState | None
    freeze: bool
    features: FeatureMode
    edits: Edits
    mults: Multipliers
    rotary: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # per layer
    feature_acts: dict[int, Tensor] = field(default_factory=dict)
    transcoders: dict[int, TranscoderRecord] = field(default_factory=dict)

    @property
    def frozen(self) -> ReplacementState | None:
        """The clean state whose attention, norms and MLP outputs this pass reuses, if any."""
        return self.clean if self.freeze else None
