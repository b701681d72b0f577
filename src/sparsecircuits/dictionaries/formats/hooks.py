"""Hook names of other libraries and ours, in one table (§1.12 of the formats spec).

Our names (`ours`, `{L}` = the layer) are TransformerLens names plus circuit-tracer's MLP
wrapper: `blocks.L.mlp.hook_in` is the MLP's input after its norm (with the gain),
`blocks.L.mlp.hook_out` the MLP's output before any post-norm (Gemma) — equal to
`hook_mlp_out` elsewhere — and `blocks.L.hook_mlp_in` is TransformerLens' (the residual before
the pre-MLP norm, = `hook_resid_mid`).

Columns:

* `circuit_tracer`: `feature_input_hook` / `feature_output_hook` in its `config.yaml`
  (TransformerLens suffixes without `blocks.L.`);
* `sparsify`: `<module>:in` / `<module>:out`, the input or output of the module a hookpoint
  names (relative to `model.base_model`; an SAE reads the module's output, a transcoder maps the
  module's input to its output);
* `huggingface`: Gemma Scope 2's `hf_hook_point_in` / `hf_hook_point_out` (`config.json`);
* `gemma_scope`: the site of a Gemma Scope 1 `params.npz`, from its repository name
  (`…-transcoders` in/out, `…-res`, `…-mlp`, `…-att`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class HookRow:
    """One site and its name in each library (empty: the library has no name for it)."""

    ours: str
    circuit_tracer: tuple[str, ...] = ()
    sparsify: tuple[str, ...] = ()
    huggingface: tuple[str, ...] = ()
    gemma_scope: tuple[str, ...] = ()


HOOK_TABLE: tuple[HookRow, ...] = (
    HookRow("hook_embed", ("hook_embed",), ("embed_tokens:out", "wte:out", "embed_in:out")),
    HookRow("blocks.{L}.hook_resid_pre", ("hook_resid_pre",), ("layers.{L}:in", "h.{L}:in")),
    HookRow("blocks.{L}.attn.hook_z", ("attn.hook_z",), (),
            ("model.layers.{L}.self_attn.o_proj.input",), ("att",)),
    HookRow("blocks.{L}.hook_attn_out", ("hook_attn_out",),
            ("layers.{L}.self_attn:out", "h.{L}.attn:out", "layers.{L}.attention:out")),
    HookRow("blocks.{L}.hook_resid_mid", ("hook_resid_mid",)),
    HookRow("blocks.{L}.hook_mlp_in", ("hook_mlp_in",)),  # TransformerLens: = hook_resid_mid
    HookRow("blocks.{L}.ln2.hook_normalized", ("ln2.hook_normalized",), (), (),
            ("transcoder:in",)),
    HookRow("blocks.{L}.mlp.hook_in", ("mlp.hook_in",), ("layers.{L}.mlp:in", "h.{L}.mlp:in"),
            ("model.layers.{L}.pre_feedforward_layernorm.output", "model.layers.{L}.mlp.input")),
    HookRow("blocks.{L}.mlp.hook_out", ("mlp.hook_out",), ("layers.{L}.mlp:out", "h.{L}.mlp:out"),
            ("model.layers.{L}.mlp.output",)),
    HookRow("blocks.{L}.hook_mlp_out", ("hook_mlp_out",), (),
            ("model.layers.{L}.post_feedforward_layernorm.output",), ("transcoder:out", "mlp")),
    HookRow("blocks.{L}.hook_resid_post", ("hook_resid_post",), ("layers.{L}:out", "h.{L}:out"),
            ("model.layers.{L}.output",), ("res",)),
)  # fmt: skip


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name).replace(re.escape("{L}"), r"(\d+)") + r"\Z")


def to_ours(library: str, name: str, layer: int | None = None) -> str | None:
    """Our hook name for `library`'s `name` (a column value above, the layer written in it or
    given as `layer`); None when the table has no such name."""
    for row in HOOK_TABLE:
        for foreign in getattr(row, library):
            found = _pattern(foreign).match(name)
            if found is None:
                continue
            digits = found.group(1) if found.groups() else None
            at = int(digits) if digits is not None else layer
            if "{L}" in row.ours and at is None:
                return None
            return row.ours.replace("{L}", str(at))
    return None


def from_ours(library: str, hook: str) -> str | None:
    """`library`'s name for our `hook` (the first of its names in the table, the layer filled
    in where the name has one); None when the table has none."""
    for row in HOOK_TABLE:
        found = _pattern(row.ours).match(hook)
        names = getattr(row, library)
        if found is None or not names:
            continue
        digits = found.group(1) if found.groups() else ""
        return str(names[0]).replace("{L}", digits)
    return None


def layer_template(hook: str) -> str:
    """`hook` with its layer replaced by `{layer}` (`blocks.3.x` -> `blocks.{layer}.x`), the
    form a cross-layer transcoder's config holds."""
    return re.sub(r"^blocks\.\d+\.", "blocks.{layer}.", hook)


def suffix(hook: str) -> str:
    """`hook` without its `blocks.L.` (or `blocks.{layer}.`) prefix."""
    return re.sub(r"^blocks\.(\d+|\{layer\})\.", "", hook)
