"""Interventions on a replacement model's forward pass: point edits (`Edits`) and the unit
multipliers attribution differentiates through (`Multipliers`), with the functions that apply them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError

FEATURE_EDIT_MODES = ("set", "scale", "ablate")


@dataclass
class FeatureEdit:
    """Edit feature(s) `feature` of transcoder layer `layer` at position `pos` of prompt `batch`
    (None: all): "set" to `value` (the default, 0, ablates), "scale" by `value`, or "ablate"."""

    layer: int
    pos: int | None
    feature: int | Sequence[int]
    mode: str = "set"
    value: float = 0.0
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in FEATURE_EDIT_MODES:
            raise SparseCircuitsError(
                f"unknown feature edit mode {self.mode!r}; use one of {', '.join(FEATURE_EDIT_MODES)}"
            )


@dataclass
class HeadEdit:
    """Multiply head `head` of `layer`'s attention weights dest<-src by `scale` (0: ablate;
    `dest`/`src`/`batch` None: all), unrenormalised: scale 0 removes exactly what the head moved."""

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
    """Interventions applied by `ReplacementModel.forward_with`: point edits, `feature_fns[layer]`
    mapping that layer's activations `[b, p, d_sae]` after them (e.g. mean ablation), and
    `drop_errors`, layers whose error term is removed everywhere."""

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
    """Unit tensors (ones with `requires_grad`, or None) multiplied into the forward pass so that
    d(target)/d(multiplier) = attribution: `embed [b,p,1]`, `features[L] [b,p,d_sae]`,
    `errors[L] [b,p,1]` (the whole MLP output without a transcoder), `patterns[L] [b,h,q,k]`."""

    embed: Tensor | None = None
    features: dict[int, Tensor] = field(default_factory=dict)
    errors: dict[int, Tensor] = field(default_factory=dict)
    patterns: dict[int, Tensor] = field(default_factory=dict)


def _index(batch: int | None, pos: int | None) -> tuple[slice | int, slice | int]:
    return (slice(None) if batch is None else batch, slice(None) if pos is None else pos)


def scale_positions(x: Tensor, edits: Sequence[ErrorEdit | EmbedEdit]) -> Tensor:
    """Return `x [b,p,d]` with `x[batch, pos] *= scale` for each edit (out of place)."""
    if not edits:
        return x
    factor = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
    for edit in edits:
        bi, pi = _index(edit.batch, edit.pos)
        factor[bi, pi] = factor[bi, pi] * edit.scale
    return x * factor


def edit_pattern(pattern: Tensor, edits: Sequence[HeadEdit]) -> Tensor:
    """Return `pattern [b,h,q,k]` with each head edit's weights scaled (out of place)."""
    if not edits:
        return pattern
    factor = torch.ones_like(pattern)
    for e in edits:
        bi = slice(None) if e.batch is None else e.batch
        di = slice(None) if e.dest is None else e.dest
        si = slice(None) if e.src is None else e.src
        factor[bi, e.head, di, si] = factor[bi, e.head, di, si] * e.scale
    return pattern * factor


def edit_features(acts: Tensor, edits: Sequence[FeatureEdit]) -> Tensor:
    """Return `acts [b,p,d_sae]` with each feature edit applied in order (a copy when edited)."""
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
        if e.mode == "scale":
            view[..., feats] = view[..., feats] * e.value
        else:
            view[..., feats] = 0.0 if e.mode == "ablate" else e.value
        acts[bi, pi] = view
    return acts
