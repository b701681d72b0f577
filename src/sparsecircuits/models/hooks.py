"""Canonical hook names, and forward hooks on HF modules that read or replace them.

A hook function takes the activation and returns None (read only) or a tensor of the same shape
that replaces it downstream. Returning the very same tensor object counts as "no replacement",
so identity hooks are bit-exact.

`attn.hook_pattern` cannot be reached with module hooks (the probabilities live inside the
attention function), so models are run with our own attention implementation,
`ATTN_IMPLEMENTATION`: it calls HF's SDPA function unchanged unless a layer has a pattern hook
or soft-caps its scores (Gemma-2; SDPA has no soft-cap), and then computes
softmax(softcap(q k^T * scale) + mask) explicitly, with `softcap(s) = c * tanh(s / c)`, so the
pattern can be read and replaced. HF builds its masks for it exactly as for SDPA.

Every name means what it means in TransformerLens for the same unfolded model (no weight
processing), plus circuit-tracer's `mlp.hook_in` / `mlp.hook_out`; `HOOK_MEANINGS` states each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.architectures import (
    ArchitectureSpec,
    NormKind,
    apply_gain,
    norm_params,
    normalize,
)

HookFn = Callable[[Tensor], "Tensor | None"]

ATTN_IMPLEMENTATION = "sparsecircuits"
_PATTERN_FNS = "_sparsecircuits_pattern_fns"

# Per-block hook suffixes, in the order a forward pass produces them.
BLOCK_HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_normalized",
    "mlp.hook_in",
    "mlp.hook_out",
    "hook_mlp_out",
    "hook_resid_post",
)

# What each hook carries (`[batch, pos, d_model]` unless stated); README's hook table says the same.
HOOK_MEANINGS: dict[str, str] = {
    "hook_embed": "token embeddings W_E[input_ids] (Gemma's x sqrt(d_model) included; learned "
    "positions are added after it)",
    "hook_resid_pre": "the block's input residual stream",
    "ln1.hook_normalized": "the pre-attention norm's output as TransformerLens defines it: "
    "LayerNorm with its gain and bias, RMSNorm before its gain",
    "attn.hook_pattern": "attention probabilities [batch, n_heads, q_pos, k_pos]",
    "attn.hook_z": "per-head attention values mixed by the pattern [batch, pos, n_heads, d_head]",
    "hook_attn_out": "attention's contribution to the residual stream (after Gemma's "
    "post-attention norm)",
    "hook_resid_mid": "hook_resid_pre + hook_attn_out",
    "hook_mlp_in": "the residual stream the pre-MLP norm reads (hook_resid_mid; "
    "hook_resid_pre with a parallel residual)",
    "ln2.hook_normalized": "the pre-MLP norm's output as TransformerLens defines it: "
    "LayerNorm with its gain and bias, RMSNorm before its gain",
    "mlp.hook_in": "the MLP module's input: the pre-MLP norm's output with its gain (and bias)",
    "mlp.hook_out": "the MLP module's output, before any post-MLP norm",
    "hook_mlp_out": "the MLP's contribution to the residual stream (after Gemma's post-MLP norm)",
    "hook_resid_post": "the block's output residual stream",
    "ln_final.hook_normalized": "the final norm's output as TransformerLens defines it: "
    "LayerNorm with its gain and bias, RMSNorm before its gain",
}

NormStage = Literal["residual", "normalized", "gained"]


def pre_mlp_norm_stage(kind: str, norm_kind: NormKind) -> NormStage | None:
    """Where hook `kind` (a `BLOCK_HOOKS` suffix) sits around the pre-MLP norm, or None.

    "residual": the norm's input (`hook_mlp_in`, `hook_resid_mid`); "normalized": its output
    before the gain (`ln2.hook_normalized` of an RMSNorm model); "gained": its output with gain
    (and bias), the MLP's input (`mlp.hook_in`, `ln2.hook_normalized` of a LayerNorm model).
    """
    if kind in ("hook_mlp_in", "hook_resid_mid"):
        return "residual"
    if kind == "mlp.hook_in":
        return "gained"
    if kind == "ln2.hook_normalized":
        return "gained" if norm_kind == "layernorm" else "normalized"
    return None


_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


class Handle(Protocol):
    def remove(self) -> None: ...


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook name. `layer` is the block index (None for hook_embed / ln_final)."""

    name: str
    kind: str
    layer: int | None
    order: tuple[int, int]


def parse_hook_name(name: str, n_layers: int) -> HookPoint:
    """Return the HookPoint for a canonical name; raise SparseCircuitsError listing valid names."""
    if name == "hook_embed":
        return HookPoint(name, "hook_embed", None, (-1, 0))
    if name == "ln_final.hook_normalized":
        return HookPoint(name, "ln_final.hook_normalized", None, (n_layers, 0))
    match = _BLOCK_RE.fullmatch(name)
    if match and match.group(2) in BLOCK_HOOKS and int(match.group(1)) < n_layers:
        layer, kind = int(match.group(1)), match.group(2)
        return HookPoint(name, kind, layer, (layer, BLOCK_HOOKS.index(kind)))
    raise SparseCircuitsError(
        f"unknown hook name {name!r}; valid names: {valid_names_summary(n_layers)}"
    )


def valid_names_summary(n_layers: int) -> str:
    """Return a one-line description of every valid hook name for a model with n_layers blocks."""
    block = ", ".join(f"blocks.{{0..{n_layers - 1}}}.{kind}" for kind in BLOCK_HOOKS)
    return f"hook_embed, {block}, ln_final.hook_normalized"


def all_hook_names(n_layers: int) -> list[str]:
    """Return every canonical hook name in forward order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        names.extend(f"blocks.{layer}.{kind}" for kind in BLOCK_HOOKS)
    names.append("ln_final.hook_normalized")
    return names


@dataclass(frozen=True)
class BlockModules:
    block: nn.Module
    ln1: nn.Module
    attn: Any  # HF attention module: `.scaling` is read from it
    attn_out_proj: nn.Module
    ln2: nn.Module
    mlp: nn.Module
    attn_out: nn.Module  # whose output joins the residual: the post-attention norm, else attn
    mlp_out: nn.Module  # whose output joins the residual: the post-MLP norm, else mlp


@dataclass(frozen=True)
class ModelParts:
    """The modules of one model that carry hook sites, resolved once from its ArchitectureSpec."""

    spec: ArchitectureSpec
    embed: Any
    blocks: tuple[BlockModules, ...]
    ln_final: nn.Module
    unembed: Any
    n_heads: int
    d_head: int

    @classmethod
    def resolve(
        cls, model: nn.Module, spec: ArchitectureSpec, n_heads: int, d_head: int
    ) -> ModelParts:
        """Look up every module path of `spec` in `model`."""

        def get(root: nn.Module, path: str) -> nn.Module:
            try:
                return root.get_submodule(path)
            except AttributeError:
                raise SparseCircuitsError(
                    f"model of type {type(model).__name__} has no module {path!r} expected for family "
                    f"{spec.family!r}; this transformers version may lay the model out differently"
                ) from None

        blocks = tuple(
            BlockModules(
                block=block,
                ln1=get(block, spec.ln1),
                attn=get(block, spec.attn),
                attn_out_proj=get(block, spec.attn_out_proj),
                ln2=get(block, spec.ln2),
                mlp=get(block, spec.mlp),
                attn_out=get(block, spec.attn_post_norm or spec.attn),
                mlp_out=get(block, spec.mlp_post_norm or spec.mlp),
            )
            for block in get(model, spec.blocks)  # type: ignore[attr-defined]
        )
        return cls(
            spec=spec,
            embed=get(model, spec.embed),
            blocks=blocks,
            ln_final=get(model, spec.ln_final),
            unembed=get(model, spec.unembed),
            n_heads=n_heads,
            d_head=d_head,
        )


# ---------------------------------------------------------------- hook plumbing


def _replacement(new: Tensor | None, old: Tensor) -> Tensor | None:
    """Return the tensor that replaces `old` (cast to its dtype), or None when the hook only read it."""
    if new is None or new is old:
        return None
    if new.shape != old.shape:
        raise SparseCircuitsError(
            f"a hook function returned shape {tuple(new.shape)} for an activation of shape "
            f"{tuple(old.shape)}; return a tensor of the same shape (or None to only read)"
        )
    return new.to(old.dtype)


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], new: Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _first_output(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_first_output(output: Any, new: Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _on_input(module: nn.Module, fn: HookFn) -> Handle:
    def pre_hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        act = _first_input(args, kwargs)
        new = _replacement(fn(act), act)
        return None if new is None else _with_first_input(args, kwargs, new)

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _on_output(module: nn.Module, fn: HookFn) -> Handle:
    def post_hook(_: nn.Module, __: Any, output: Any) -> Any:
        act = _first_output(output)
        new = _replacement(fn(act), act)
        return None if new is None else _with_first_output(output, new)

    return module.register_forward_hook(post_hook)


def _on_normalized(module: nn.Module, spec: ArchitectureSpec, fn: HookFn) -> Handle:
    # TransformerLens takes LayerNorm's hook_normalized after the gain and bias, RMSNorm's before
    # the gain: a LayerNorm site is the module's output, an RMSNorm one is recomputed from its
    # input and a replacement has the gain re-applied.
    if spec.norm_kind == "layernorm":
        return _on_output(module, fn)
    params = norm_params(module, spec.norm_kind, spec.norm_offset)

    def post_hook(_: nn.Module, args: tuple[Any, ...], output: Tensor) -> Any:
        normalized = normalize(args[0], params)
        new = _replacement(fn(normalized), normalized)
        return None if new is None else apply_gain(new, params)

    return module.register_forward_hook(post_hook)


def _on_z(out_proj: nn.Module, n_heads: int, d_head: int, fn: HookFn) -> Handle:
    def pre_hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        flat = _first_input(args, kwargs)
        z = flat.reshape(*flat.shape[:-1], n_heads, d_head)
        new = _replacement(fn(z), z)
        if new is None:
            return None
        return _with_first_input(args, kwargs, new.reshape(flat.shape))

    return out_proj.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _on_resid_mid(modules: BlockModules, fn: HookFn) -> list[Handle]:
    # No module receives resid_mid in every family (NeoX's parallel MLP reads resid_pre), so it
    # is built as resid_pre + attn_out, and a replacement goes back in as attn_out = new - resid_pre.
    # resid_pre is taken from ln1's input: that is the block's residual after every pre-hook ran.
    stash: dict[str, Tensor] = {}

    def keep_resid_pre(act: Tensor) -> None:
        stash["resid_pre"] = act

    def on_attn_out(attn_out: Tensor) -> Tensor | None:
        resid_pre = stash.pop("resid_pre")
        resid_mid = resid_pre + attn_out
        new = _replacement(fn(resid_mid), resid_mid)
        return None if new is None else new - resid_pre

    return [_on_input(modules.ln1, keep_resid_pre), _on_output(modules.attn_out, on_attn_out)]


class _PatternHandle:
    def __init__(self, attn: nn.Module, fn: HookFn) -> None:
        self.attn, self.fn = attn, fn
        attn.__dict__.setdefault(_PATTERN_FNS, []).append(fn)

    def remove(self) -> None:
        fns = self.attn.__dict__.get(_PATTERN_FNS, [])
        if self.fn in fns:
            fns.remove(self.fn)


def _not_reentrant(fn: HookFn) -> HookFn:
    # A hook fn may call the very module it hooks (e.g. splice fn = the MLP itself); the inner
    # call must run the plain module rather than recurse into the hook.
    busy = False

    def guarded(act: Tensor) -> Tensor | None:
        nonlocal busy
        if busy:
            return None
        busy = True
        try:
            return fn(act)
        finally:
            busy = False

    return guarded


def attach(parts: ModelParts, point: HookPoint, fn: HookFn) -> list[Handle]:
    """Register `fn` at `point`; return the handles whose remove() undoes it."""
    kind, spec = point.kind, parts.spec
    fn = _not_reentrant(fn)
    if point.layer is None:
        if kind == "hook_embed":
            return [_on_output(parts.embed, fn)]
        return [_on_normalized(parts.ln_final, spec, fn)]
    modules = parts.blocks[point.layer]
    if kind == "hook_resid_pre":
        return [_on_input(modules.block, fn)]
    if kind == "hook_resid_post":
        return [_on_output(modules.block, fn)]
    if kind == "hook_attn_out":
        return [_on_output(modules.attn_out, fn)]
    if kind == "hook_resid_mid":
        return _on_resid_mid(modules, fn)
    if kind == "hook_mlp_in":
        return [_on_input(modules.ln2, fn)]
    if kind == "mlp.hook_in":
        return [_on_input(modules.mlp, fn)]
    if kind == "mlp.hook_out":
        return [_on_output(modules.mlp, fn)]
    if kind == "hook_mlp_out":
        return [_on_output(modules.mlp_out, fn)]
    if kind == "attn.hook_z":
        return [_on_z(modules.attn_out_proj, parts.n_heads, parts.d_head, fn)]
    if kind == "attn.hook_pattern":
        return [_PatternHandle(modules.attn, fn)]
    if kind == "ln1.hook_normalized":
        return [_on_normalized(modules.ln1, spec, fn)]
    if kind == "ln2.hook_normalized":
        return [_on_normalized(modules.ln2, spec, fn)]
    raise AssertionError(f"unhandled hook kind {kind}")


# ---------------------------------------------------------------- attention function


def _attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """HF attention-interface function: SDPA unless this layer has pattern hooks or soft-caps."""
    pattern_fns = module.__dict__.get(_PATTERN_FNS)
    softcap = kwargs.get("softcap")
    if not pattern_fns and softcap is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return _attention_with_pattern(
        query, key, value, attention_mask, kwargs.get("scaling"), pattern_fns or [], softcap
    )


def softcap(x: Tensor, cap: float) -> Tensor:
    """Return `cap * tanh(x / cap)` (Gemma's soft-capping of attention scores and logits), in the
    order of operations HF uses."""
    return torch.tanh(x / cap) * cap


def _attention_with_pattern(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None,
    pattern_fns: list[HookFn],
    cap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """query [b,h,q,dh], key/value [b,kv,k,dh] -> (output [b,q,h,dh], pattern [b,h,q,k]);
    scores are soft-capped at `cap` (before the mask) when given."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: query head h reads kv head h // n_rep
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if cap is not None:
        scores = softcap(scores, cap)
    q_len, k_len = scores.shape[-2:]
    # finfo.min rather than -inf keeps fully masked (padding) rows finite.
    masked = torch.finfo(scores.dtype).min
    if attention_mask is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(
            k_len - q_len
        )
        scores = scores.masked_fill(~allowed, masked)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], masked)
    else:
        scores = scores + attention_mask[..., :k_len]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for fn in list(pattern_fns):
        new = _replacement(fn(pattern), pattern)
        if new is not None:
            pattern = new
    output = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return output, pattern


def register_attention() -> None:
    """Make `ATTN_IMPLEMENTATION` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def to_attention_implementation(model: Any) -> None:
    """Switch a loaded HF model to `ATTN_IMPLEMENTATION`; raise if the model cannot switch."""
    register_attention()
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)  # type: ignore[operator]
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise SparseCircuitsError(
            f"{type(model).__name__} does not accept a custom attention function, so attention "
            "patterns cannot be hooked; use a model built on transformers' AttentionInterface"
        )
