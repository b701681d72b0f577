"""One explicit table per supported model family: where each hook site lives, and the weights.

A family table names, as dotted module paths, the modules that carry every canonical hook site
(token embedding, the block list, and inside each block the two norms, the attention module,
its output projection and the MLP; then the final norm and the unembedding), plus the MLP's
output projection, whose input is the MLP's neuron activations (no hook site; read where neurons
are compared with dictionary features). `hooks.py` turns the hook sites into hooks the same way
for every family:

=========================  ==========================  ======================================
hook name                  module (role in the table)  how it is read / replaced
=========================  ==========================  ======================================
hook_embed                 embed                       forward output
blocks.L.hook_resid_pre    block                       forward input `hidden_states`
blocks.L.ln1.hook_...      ln1                         LayerNorm: forward output; RMSNorm:
                                                       recomputed from its input before the
                                                       gain, a replacement re-applies it
blocks.L.attn.hook_pattern attn                        inside the attention function
                                                       (`hooks.ATTN_IMPLEMENTATION`)
blocks.L.attn.hook_z       attn_out_proj               forward input, viewed [b,p,h,d_head]
blocks.L.hook_attn_out     attn_post_norm or attn      forward output (Gemma: the post-attention
                                                       norm's output, what is added)
blocks.L.hook_resid_mid    ln1 + attn_out module       ln1's input (= resid_pre) + attn_out;
                                                       a replacement is written back as
                                                       attn_out = new - resid_pre
blocks.L.hook_mlp_in       ln2                         forward input
blocks.L.ln2.hook_...      ln2                         as ln1
blocks.L.mlp.hook_in       mlp                         forward input
blocks.L.mlp.hook_out      mlp                         forward output (before any post-norm)
blocks.L.hook_mlp_out      mlp_post_norm or mlp        forward output (Gemma: the post-MLP
                                                       norm's output, what is added)
blocks.L.hook_resid_post   block                       forward output
ln_final.hook_normalized   ln_final                    as ln1
=========================  ==========================  ======================================

Gemma-2/3 differ from the pre-norm families in five ways the tables carry: norms store their
gain as `1 + weight` (`norm_offset`), token embeddings are scaled by sqrt(d_model) inside the
embedding module (so `hook_embed` and `W_E` include the scale), attention and MLP outputs pass
through a post-norm before they join the residual (`attn_post_norm`, `mlp_post_norm`), attention
scores and final logits may be soft-capped (`attn_softcap_key`, `logit_softcap_key`), and
Gemma-3 gives local and global layers their own rotary base (`rotary_by_layer_type`).

The weight accessors return views of the model's parameters in TransformerLens orientation:
`W_Q/W_K/W_V [n_heads, d_model, d_head]` (grouped-query key/value heads repeated so that query
head h reads kv head h // (n_heads / n_kv_heads)), `W_O [n_heads, d_head, d_model]`,
biases `[n_heads, d_head]` / `[d_model]` (zeros where the model has none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sparsecircuits.errors import SparseCircuitsError

NormKind = Literal["layernorm", "rmsnorm"]
PositionalKind = Literal["learned", "rotary"]


@dataclass(frozen=True)
class ModelDims:
    """Sizes read from a model config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    max_context: int
    parallel_residual: bool
    # per layer: attention looks back at most this many positions (None: the whole prefix)
    sliding_windows: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class NormParams:
    """A norm's parameters: `out = normalized * gain (+ bias)`, `gain = weight + offset`.

    `normalized` is `(x - mean) / sqrt(var + eps)` for LayerNorm and `x / sqrt(mean(x^2) + eps)`
    for RMSNorm (computed in fp32, cast back to the input dtype). `bias` is None for RMSNorm.
    `offset` is 1 for Gemma, whose norms store the gain as `1 + weight`, else 0.
    """

    kind: NormKind
    weight: Tensor
    bias: Tensor | None
    eps: float
    offset: float = 0.0

    @property
    def gain(self) -> Tensor:
        """Return the multiplier `[d]` applied after normalising (`weight + offset`, added in fp32
        as Gemma does, in the weight's dtype)."""
        if self.offset == 0.0:
            return self.weight
        return (self.weight.float() + self.offset).to(self.weight.dtype)

    def to(self, dtype: torch.dtype) -> NormParams:
        """Return the same norm with its tensors cast to `dtype`."""
        return NormParams(
            kind=self.kind,
            weight=self.weight.to(dtype),
            bias=None if self.bias is None else self.bias.to(dtype),
            eps=self.eps,
            offset=self.offset,
        )


@dataclass(frozen=True)
class AttentionWeights:
    """One layer's attention weights in TransformerLens orientation (see module docstring)."""

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    W_O: Tensor
    b_O: Tensor


@dataclass(frozen=True)
class ArchitectureSpec:
    """The table for one family. Module paths are dotted; block-relative ones start at a block.

    `dims` and the config keys read the text model's config (`config.get_text_config()`: the
    config itself, or an image-text model's `text_config`)."""

    family: str
    model_types: tuple[str, ...]
    embed: str
    pos_embed: str | None
    blocks: str
    ln1: str
    attn: str
    attn_out_proj: str
    ln2: str
    mlp: str
    mlp_out_proj: str  # the MLP's output projection; its input is the neuron activations
    ln_final: str
    unembed: str
    rotary_emb: str | None
    norm_kind: NormKind
    positional: PositionalKind
    dims: Callable[[Any], ModelDims]
    attention_weights: Callable[[Any, ModelDims], AttentionWeights]
    qk_norms: tuple[str, str] | None = None  # attn-relative paths of per-head q/k norms, if any
    norm_offset: float = 0.0  # norms multiply by `offset + weight` (Gemma: 1)
    attn_post_norm: str | None = None  # block-relative norm between attention and the residual
    mlp_post_norm: str | None = None  # block-relative norm between the MLP and the residual
    attn_softcap_key: str | None = None  # config key: scores -> cap * tanh(scores / cap)
    logit_softcap_key: str | None = None  # config key: logits -> cap * tanh(logits / cap)
    rotary_by_layer_type: bool = False  # the rotary module takes the layer type (Gemma-3)


def _zeros_like_heads(weight: Tensor, n_heads: int, d_head: int) -> Tensor:
    return torch.zeros(n_heads, d_head, dtype=weight.dtype, device=weight.device)


def _bias_or_zeros(bias: Tensor | None, size: int, like: Tensor) -> Tensor:
    if bias is None:
        return torch.zeros(size, dtype=like.dtype, device=like.device)
    return bias.detach()


# ---------------------------------------------------------------- GPT-2


def _gpt2_dims(config: Any) -> ModelDims:
    d_model = config.n_embd
    return ModelDims(
        n_layers=config.n_layer,
        d_model=d_model,
        n_heads=config.n_head,
        n_kv_heads=config.n_head,
        d_head=d_model // config.n_head,
        d_mlp=config.n_inner if config.n_inner is not None else 4 * d_model,
        vocab_size=config.vocab_size,
        max_context=config.n_positions,
        parallel_residual=False,
    )


def _gpt2_attention(attn: Any, dims: ModelDims) -> AttentionWeights:
    # Conv1D stores weight as [in, out]; c_attn's out axis is [q | k | v], each head-major.
    d, h, dh = dims.d_model, dims.n_heads, dims.d_head
    w_qkv = attn.c_attn.weight.detach()  # [d, 3*h*dh]
    b_qkv = attn.c_attn.bias.detach()  # [3*h*dh]
    w_q, w_k, w_v = (
        w_qkv[:, i * h * dh : (i + 1) * h * dh].reshape(d, h, dh).permute(1, 0, 2) for i in range(3)
    )
    b_q, b_k, b_v = (b_qkv[i * h * dh : (i + 1) * h * dh].reshape(h, dh) for i in range(3))
    w_o = attn.c_proj.weight.detach().reshape(h, dh, d)
    b_o = _bias_or_zeros(attn.c_proj.bias, d, w_o)
    return AttentionWeights(w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o)


GPT2 = ArchitectureSpec(
    family="gpt2",
    model_types=("gpt2",),
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    blocks="transformer.h",
    ln1="ln_1",
    attn="attn",
    attn_out_proj="attn.c_proj",
    ln2="ln_2",
    mlp="mlp",
    mlp_out_proj="mlp.c_proj",
    ln_final="transformer.ln_f",
    unembed="lm_head",
    rotary_emb=None,
    norm_kind="layernorm",
    positional="learned",
    dims=_gpt2_dims,
    attention_weights=_gpt2_attention,
)


# ---------------------------------------------------------------- GPT-NeoX (Pythia)


def _neox_dims(config: Any) -> ModelDims:
    return ModelDims(
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_attention_heads,
        d_head=config.hidden_size // config.num_attention_heads,
        d_mlp=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_context=config.max_position_embeddings,
        parallel_residual=bool(config.use_parallel_residual),
    )


def _neox_attention(attn: Any, dims: ModelDims) -> AttentionWeights:
    # query_key_value's out axis is [head, (q|k|v), d_head]: interleaved per head, unlike GPT-2.
    d, h, dh = dims.d_model, dims.n_heads, dims.d_head
    w_qkv = attn.query_key_value.weight.detach().reshape(h, 3, dh, d)
    w_q, w_k, w_v = (w_qkv[:, i].transpose(1, 2) for i in range(3))
    bias = attn.query_key_value.bias
    if bias is None:
        b_q = b_k = b_v = _zeros_like_heads(w_qkv, h, dh)
    else:
        b_qkv = bias.detach().reshape(h, 3, dh)
        b_q, b_k, b_v = (b_qkv[:, i] for i in range(3))
    w_o = attn.dense.weight.detach().T.reshape(h, dh, d)
    b_o = _bias_or_zeros(attn.dense.bias, d, w_o)
    return AttentionWeights(w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o)


GPT_NEOX = ArchitectureSpec(
    family="gpt_neox",
    model_types=("gpt_neox",),
    embed="gpt_neox.embed_in",
    pos_embed=None,
    blocks="gpt_neox.layers",
    ln1="input_layernorm",
    attn="attention",
    attn_out_proj="attention.dense",
    ln2="post_attention_layernorm",
    mlp="mlp",
    mlp_out_proj="mlp.dense_4h_to_h",
    ln_final="gpt_neox.final_layer_norm",
    unembed="lm_head",
    rotary_emb="gpt_neox.rotary_emb",
    norm_kind="layernorm",
    positional="rotary",
    dims=_neox_dims,
    attention_weights=_neox_attention,
)


# ---------------------------------------------------------------- Llama family


def _llama_dims(config: Any) -> ModelDims:
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return ModelDims(
        n_layers=config.num_hidden_layers,
        d_model=config.hidden_size,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_head=d_head,
        d_mlp=config.intermediate_size,
        vocab_size=config.vocab_size,
        max_context=config.max_position_embeddings,
        parallel_residual=False,
        sliding_windows=_sliding_windows(config, config.num_hidden_layers),
    )


def _sliding_windows(config: Any, n_layers: int) -> tuple[int | None, ...]:
    """Per layer, the config's `sliding_window` where that layer slides (`layer_types` names
    "sliding_attention" layers; without it every layer uses the window), else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None:
        return (None,) * n_layers
    if layer_types is None:
        return (int(window),) * n_layers
    return tuple(int(window) if kind == "sliding_attention" else None for kind in layer_types)


def _split_heads(proj: Any, n_heads: int, d_head: int, repeat: int) -> tuple[Tensor, Tensor]:
    """nn.Linear weight [n*dh, d] -> ([n*repeat, d, dh], bias [n*repeat, dh])."""
    weight = proj.weight.detach().reshape(n_heads, d_head, -1).transpose(1, 2)
    if proj.bias is None:
        bias = _zeros_like_heads(weight, n_heads, d_head)
    else:
        bias = proj.bias.detach().reshape(n_heads, d_head)
    if repeat > 1:
        weight = weight.repeat_interleave(repeat, dim=0)
        bias = bias.repeat_interleave(repeat, dim=0)
    return weight, bias


def _llama_attention(attn: Any, dims: ModelDims) -> AttentionWeights:
    h, kv, dh, d = dims.n_heads, dims.n_kv_heads, dims.d_head, dims.d_model
    w_q, b_q = _split_heads(attn.q_proj, h, dh, 1)
    w_k, b_k = _split_heads(attn.k_proj, kv, dh, h // kv)
    w_v, b_v = _split_heads(attn.v_proj, kv, dh, h // kv)
    w_o = attn.o_proj.weight.detach().T.reshape(h, dh, d)
    b_o = _bias_or_zeros(attn.o_proj.bias, d, w_o)
    return AttentionWeights(w_q, w_k, w_v, b_q, b_k, b_v, w_o, b_o)


def _llama_like(
    family: str, model_types: tuple[str, ...], qk_norms: tuple[str, str] | None = None
) -> ArchitectureSpec:
    return ArchitectureSpec(
        family=family,
        model_types=model_types,
        embed="model.embed_tokens",
        pos_embed=None,
        blocks="model.layers",
        ln1="input_layernorm",
        attn="self_attn",
        attn_out_proj="self_attn.o_proj",
        ln2="post_attention_layernorm",
        mlp="mlp",
        mlp_out_proj="mlp.down_proj",
        ln_final="model.norm",
        unembed="lm_head",
        rotary_emb="model.rotary_emb",
        norm_kind="rmsnorm",
        positional="rotary",
        dims=_llama_dims,
        attention_weights=_llama_attention,
        qk_norms=qk_norms,
    )


LLAMA = _llama_like("llama", ("llama", "qwen2", "mistral"))
# Qwen3 RMS-normalises each query and key head (over d_head) before the rotary embedding.
QWEN3 = _llama_like("qwen3", ("qwen3",), qk_norms=("q_norm", "k_norm"))


# ---------------------------------------------------------------- Gemma-2 / Gemma-3


def _gemma_dims(config: Any) -> ModelDims:
    if getattr(config, "use_bidirectional_attention", False):
        raise SparseCircuitsError(
            "this Gemma config sets use_bidirectional_attention (an embedding model); only causal "
            "language models can be hooked"
        )
    return _llama_dims(config)


def _gemma(
    family: str,
    model_types: tuple[str, ...],
    gemma3: bool,
    text_model: str = "model",
    logit_softcap: bool = True,
) -> ArchitectureSpec:
    # HF's `post_attention_layernorm` is Gemma's post-attention output norm (in Llama it is the
    # pre-MLP norm); the pre-MLP norm is `pre_feedforward_layernorm`.
    return ArchitectureSpec(
        family=family,
        model_types=model_types,
        embed=f"{text_model}.embed_tokens",
        pos_embed=None,
        blocks=f"{text_model}.layers",
        ln1="input_layernorm",
        attn="self_attn",
        attn_out_proj="self_attn.o_proj",
        ln2="pre_feedforward_layernorm",
        mlp="mlp",
        mlp_out_proj="mlp.down_proj",
        ln_final=f"{text_model}.norm",
        unembed="lm_head",
        rotary_emb=f"{text_model}.rotary_emb",
        norm_kind="rmsnorm",
        positional="rotary",
        dims=_gemma_dims,
        attention_weights=_llama_attention,
        qk_norms=("q_norm", "k_norm") if gemma3 else None,
        norm_offset=1.0,
        attn_post_norm="post_attention_layernorm",
        mlp_post_norm="post_feedforward_layernorm",
        # transformers 5 passes Gemma-3's attn_logit_softcapping to no attention function
        attn_softcap_key=None if gemma3 else "attn_logit_softcapping",
        logit_softcap_key="final_logit_softcapping" if logit_softcap else None,
        rotary_by_layer_type=gemma3,
    )


GEMMA2 = _gemma("gemma2", ("gemma2",), gemma3=False)
# Gemma-3 text models (270m, 1b, and the language model of a 4b+ checkpoint saved on its own)
GEMMA3 = _gemma("gemma3", ("gemma3_text",), gemma3=True)
# Gemma-3 4b+ checkpoints (image-text; only the text path is hooked). Their settings live in
# `config.text_config`; transformers 5 applies no final logit soft-cap in this class.
GEMMA3_MULTIMODAL = _gemma(
    "gemma3", ("gemma3",), gemma3=True, text_model="model.language_model", logit_softcap=False
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    GPT2,
    GPT_NEOX,
    LLAMA,
    QWEN3,
    GEMMA2,
    GEMMA3,
    GEMMA3_MULTIMODAL,
)


def supported_model_types() -> list[str]:
    """Return every HF `config.model_type` this package can hook, sorted."""
    return sorted(t for spec in ARCHITECTURES for t in spec.model_types)


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    """Return the table for a HF `config.model_type`; raise SparseCircuitsError if unsupported."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise SparseCircuitsError(
        f"model architecture {model_type!r} is not supported; use one of: {', '.join(supported_model_types())}"
    )


def norm_params(module: Any, kind: NormKind, offset: float = 0.0) -> NormParams:
    """Return the weight, bias and eps of a LayerNorm or an HF RMSNorm module (`offset`: see
    `NormParams`)."""
    eps = getattr(module, "eps", None)
    if eps is None:
        eps = module.variance_epsilon
    bias = getattr(module, "bias", None)
    return NormParams(
        kind=kind,
        weight=module.weight.detach(),
        bias=None if bias is None else bias.detach(),
        eps=float(eps),
        offset=offset,
    )


def normalize(x: Tensor, params: NormParams) -> Tensor:
    """Return the norm's output before its affine gain (and bias); same shape and dtype as x."""
    if params.kind == "layernorm":
        return nn.functional.layer_norm(x, x.shape[-1:], None, None, params.eps)
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + params.eps)).to(x.dtype)


def apply_gain(normalized: Tensor, params: NormParams) -> Tensor:
    """Return `normalized * gain (+ bias)`: the norm's output for a given normalized input."""
    if params.kind == "layernorm":
        out = normalized * params.gain
        return out if params.bias is None else out + params.bias
    return params.gain * normalized


# Frozen-scale norm math: a norm is linear in x once its denominator is held fixed, which is
# what replacement models and attributions use.


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


def pull_back_norm(vector: Tensor, params: NormParams, scale: Tensor, gain: bool = True) -> Tensor:
    """Return the residual-space vector u with `u · x == vector · (norm(x) - bias)` at a frozen scale.

    `vector [..., d]` lives after the norm (after its gain when `gain`, else before);
    `scale [..., 1]` is the frozen denominator. LayerNorm's mean subtraction is included.
    """
    u = vector * params.gain if gain else vector
    if params.kind == "layernorm":
        u = u - u.mean(-1, keepdim=True)
    return u / scale
