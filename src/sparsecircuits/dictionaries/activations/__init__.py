"""Activation families, one file each, registered by `DictionaryConfig.architecture` name.

Registering a family is one entry in `ACTIVATIONS` (`ACTIVATIONS[cls.name] = cls`); its settings,
defaults and validation come with the class (`Activation.Params`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsecircuits.dictionaries.activations.abstopk import AbsTopKActivation
from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    ForwardOutput,
)
from sparsecircuits.dictionaries.activations.batchtopk import BatchTopKActivation
from sparsecircuits.dictionaries.activations.jumprelu import JumpReLUActivation
from sparsecircuits.dictionaries.activations.mp import MatchingPursuitActivation
from sparsecircuits.dictionaries.activations.relu import ReLUActivation
from sparsecircuits.dictionaries.activations.topafa import TopAFAActivation, epsilon_lbo
from sparsecircuits.dictionaries.activations.topk import TopKActivation

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.config import DictionaryConfig

ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls
    for cls in (
        ReLUActivation,
        TopKActivation,
        BatchTopKActivation,
        JumpReLUActivation,
        AbsTopKActivation,
        TopAFAActivation,
        MatchingPursuitActivation,
    )
}


def make_activation(cfg: DictionaryConfig) -> Activation:
    """Return the activation module for `cfg.architecture` (validated by `DictionaryConfig`)."""
    return ACTIVATIONS[cfg.architecture](cfg)


__all__ = [
    "ACTIVATIONS",
    "AbsTopKActivation",
    "Activation",
    "ActivationParams",
    "BatchTopKActivation",
    "ForwardOutput",
    "JumpReLUActivation",
    "MatchingPursuitActivation",
    "ReLUActivation",
    "TopAFAActivation",
    "TopKActivation",
    "epsilon_lbo",
    "make_activation",
]
