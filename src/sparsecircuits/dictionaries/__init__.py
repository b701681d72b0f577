"""Sparse dictionaries — SAEs, transcoders and cross-layer transcoders — with SAELens-compatible
save/load (usage in docs/internals.md)."""

from __future__ import annotations

from sparsecircuits.dictionaries.activations import ACTIVATIONS, Activation
from sparsecircuits.dictionaries.activations.topafa import epsilon_lbo
from sparsecircuits.dictionaries.base import (
    Dictionary,
    EncoderWeights,
    ForwardOutput,
    geometric_median,
)
from sparsecircuits.dictionaries.clt import CLTLayer, CrossLayerTranscoder
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.dictionaries.io import load, load_transcoders, save_dictionary
from sparsecircuits.dictionaries.transcoders import (
    PerLayerTranscoders,
    TranscoderSet,
    as_transcoder_set,
)

# Anything a training run, an evaluation or a saved folder can hold.
SparseCoder = Dictionary | CrossLayerTranscoder


def make(cfg: DictionaryConfig, init: bool = True) -> SparseCoder:
    """Return the dictionary `cfg` describes: a `CrossLayerTranscoder` for kind "clt", else a
    `Dictionary`; `init=False` skips the random initialisation (loaders fill every tensor)."""
    if cfg.kind == "clt":
        return CrossLayerTranscoder(cfg, init=init)
    return Dictionary(cfg, init=init)


__all__ = [
    "ACTIVATIONS",
    "Activation",
    "CLTLayer",
    "CrossLayerTranscoder",
    "Dictionary",
    "DictionaryConfig",
    "EncoderWeights",
    "ForwardOutput",
    "PerLayerTranscoders",
    "SparseCoder",
    "TranscoderSet",
    "as_transcoder_set",
    "epsilon_lbo",
    "geometric_median",
    "load",
    "load_transcoders",
    "make",
    "save_dictionary",
]
