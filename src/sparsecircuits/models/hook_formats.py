"""Hook names in saved dictionary folders, per hook-name format, read into `hooks.HOOK_MEANINGS`.

Format 2 (`HOOK_FORMAT`) is today's vocabulary: TransformerLens's names plus circuit-tracer's
`mlp.hook_in` / `mlp.hook_out`. Format 1 used two names differently:

* `blocks.L.hook_mlp_in` was the MLP module's input (after the pre-MLP norm and its gain), which
  is `blocks.L.mlp.hook_in` in format 2;
* every `*.hook_normalized` was the norm's output before its gain (and bias). On RMSNorm models
  that is format 2's `*.hook_normalized`; on LayerNorm models no format-2 hook carries it.

A folder without a hook-format marker is format 1 when sparsecircuits wrote it; a SAELens folder
already uses TransformerLens's names and is read as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.architectures import NormKind, spec_for_model_type

HOOK_FORMAT = 2

_log = logging.getLogger("sparsecircuits")
_reported: set[tuple[str, str]] = set()


def model_norm_kind(model_name: str) -> NormKind | None:
    """The norm kind of the model a dictionary names (`"embedded"` or a local HF folder), or None
    when the name is neither or its `config.json` names no supported family."""
    from sparsecircuits.models.embedded import embedded_dir

    folder = embedded_dir() if model_name == "embedded" else Path(model_name).expanduser()
    try:
        model_type = json.loads((folder / "config.json").read_text())["model_type"]
        return spec_for_model_type(str(model_type)).norm_kind
    except (OSError, ValueError, KeyError, TypeError, SparseCircuitsError):
        return None


def hook_from_format_1(hook: str, model_name: str, where: str) -> str:
    """Return the format-2 name of `hook` as format 1 meant it (`{layer}` templates included).

    Raises SparseCircuitsError for a `*.hook_normalized` hook of a LayerNorm model (no format-2
    hook carries the norm's output before its gain) or of a model whose norm cannot be told.
    """
    head, _, kind = hook.rpartition(".")
    if kind == "hook_mlp_in":
        return f"{head}.mlp.hook_in"
    if kind != "hook_normalized":
        return hook
    norm_kind = model_norm_kind(model_name)
    if norm_kind == "rmsnorm":
        return hook
    if norm_kind == "layernorm":
        raise SparseCircuitsError(
            f"{where}: its hook {hook} is the LayerNorm's output before its gain and bias (hook "
            "format 1), a tensor no hook name carries now; retrain the dictionary at "
            "blocks.L.mlp.hook_in (the norm's output with its gain) or blocks.L.hook_mlp_in"
        )
    raise SparseCircuitsError(
        f"{where}: its hook {hook} is the norm's output before its gain (hook format 1), and its "
        f"model {model_name!r} is not a local folder whose norm can be read; on an RMSNorm model "
        'that is today\'s name: add "hook_format": 2 to the "sparsecircuits" object of its cfg.json'
    )


def hooks_from_format_1(
    hook_in: str, hook_out: str, model_name: str, where: str
) -> tuple[str, str]:
    """Return `(hook_in, hook_out)` in format 2 (`hook_from_format_1`); log once per distinct
    translation that a folder's hooks were translated."""
    new_in = hook_from_format_1(hook_in, model_name, where)
    new_out = hook_from_format_1(hook_out, model_name, where) if hook_out else hook_out
    for old, new in ((hook_in, new_in), (hook_out, new_out)):
        key = (_suffix(old), _suffix(new))
        if old != new and key not in _reported:
            _reported.add(key)
            _log.warning(
                "%s was saved with hook-name format 1: its %s is read as %s (the same tensor)",
                where,
                old,
                new,
            )
    return new_in, new_out


def _suffix(hook: str) -> str:
    return hook.split(".", 2)[2] if hook.startswith("blocks.") else hook
