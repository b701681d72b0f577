"""Target specs on the command line (`--target`): parse a spec and build the `Target` it names."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from torch import Tensor

    from sparsecircuits.circuits.attribution import Target
    from sparsecircuits.circuits.graph.targets import GraphTarget
    from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState

TARGET_SPEC_HELP = (
    "logit:TOKEN | logit-diff:GOOD,BAD | feature:LAYER:INDEX | greater-than (the prob. diff.'s "
    "gradient) | greater-than-logits (mean logit of later minus earlier years), where a token is a "
    'JSON string (" 40") or an integer id, e.g. logit-diff:" 40"," 20"'
)


def _spec_tokens(text: str) -> list[int | str]:
    out: list[int | str] = []
    for quoted, bare in re.findall(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^,]+))\s*(?:,|$)', text):
        if quoted:
            out.append(json.loads(f'"{quoted}"'))
        elif bare.strip().isdigit():
            out.append(int(bare))
        elif bare.strip():
            out.append(bare)
    return out


def parse_target_spec(spec: str) -> tuple[str, list[int | str]]:
    """Return `(kind, arguments)` of a target spec (see `TARGET_SPEC_HELP`); raise on a bad spec."""
    kind, _, rest = spec.partition(":")
    if kind in ("greater-than", "greater-than-logits") and not rest:
        return kind, []
    if kind == "direction" and rest:
        return kind, [rest]
    if kind == "feature":
        parts = rest.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return kind, [int(parts[0]), int(parts[1])]
    elif kind in ("logit", "logit-diff"):
        tokens = _spec_tokens(rest)
        if len(tokens) == (1 if kind == "logit" else 2):
            return kind, tokens
    raise SparseCircuitsError(f"cannot parse target {spec!r}; use {TARGET_SPEC_HELP}")


def target_from_spec(
    model: ReplacementModel,
    state: ReplacementState,
    spec: str,
    pos: Tensor,
    texts: Sequence[str] | None = None,
) -> Target:
    """Build the `Target` a spec names, at `pos [n]` of every prompt.

    "greater-than" reads each prompt's start year from its first four-digit number in `texts`.
    """
    import torch

    from sparsecircuits.circuits.attribution import feature_target, logit_diff_target, logit_target
    from sparsecircuits.circuits.case_studies.greater_than import greater_than_target
    from sparsecircuits.tasks.greater_than import year_token_ids

    kind, args = parse_target_spec(spec)
    if kind == "logit":
        return logit_target(model, state, args[0], pos)
    if kind == "logit-diff":
        return logit_diff_target(model, state, args[0], args[1], pos)
    if kind == "feature":
        return feature_target(model, state, int(args[0]), int(args[1]), pos)
    if texts is None:
        raise SparseCircuitsError(
            "the greater-than target needs the prompt texts to read the start years"
        )
    years = []  # each prompt's two-digit start year YY
    for text in texts:
        match = re.search(r"\b\d{4}\b", text)
        if match is None:
            raise SparseCircuitsError(
                f"no four-digit start year in prompt {text!r}; write e.g. 'from the year 1732 to the year 17'"
            )
        years.append(int(match.group(0)[2:]))
    year_ids = year_token_ids(model.adapter.tokenizer)
    gt_kind: Literal["prob_diff", "logit_diff"] = (
        "prob_diff" if kind == "greater-than" else "logit_diff"
    )
    return greater_than_target(model, state, torch.tensor(years), year_ids, pos, kind=gt_kind)


GRAPH_TARGET_HELP = (
    "logit:TOKEN (its de-meaned logit) | logit-diff:GOOD,BAD | direction:FILE (a .pt, .npy or "
    ".safetensors file holding one d_model vector, read against the final norm's output), where "
    'a token is a JSON string (" 40") or an integer id'
)


def graph_target_from_spec(
    model: ReplacementModel, state: ReplacementState, spec: str
) -> GraphTarget:
    """The attribution-graph output node a spec names (see `GRAPH_TARGET_HELP`), at the last
    position of the one prompt of `state`."""
    from sparsecircuits.circuits.graph.targets import (
        direction_target,
        logit_diff_target,
        token_target,
    )

    kind, args = parse_target_spec(spec)
    if kind == "logit":
        return token_target(model, state.logits[0, -1], args[0])
    if kind == "logit-diff":
        return logit_diff_target(model, args[0], args[1])
    if kind == "direction":
        return direction_target(model, _read_vector(str(args[0])), f"direction {args[0]}")
    raise SparseCircuitsError(f"{spec!r} is not a graph target; use {GRAPH_TARGET_HELP}")


def _read_vector(path: str) -> Tensor:
    """The one tensor stored in a .pt, .npy or .safetensors file."""
    from pathlib import Path

    import torch

    file = Path(path)
    if not file.is_file():
        raise SparseCircuitsError(
            f"no direction file at {path}; give a .pt, .npy or .safetensors file"
        )
    try:
        if file.suffix == ".npy":
            import numpy as np

            return torch.from_numpy(np.load(file))
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = list(load_file(str(file)).values())
            if len(tensors) != 1:
                raise SparseCircuitsError(f"{path} holds {len(tensors)} tensors; keep one")
            return tensors[0]
        loaded = torch.load(file, weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SparseCircuitsError(f"cannot read the direction in {path} ({exc})") from None
    if not isinstance(loaded, torch.Tensor):
        raise SparseCircuitsError(f"{path} does not hold a tensor; save one with torch.save")
    return loaded
