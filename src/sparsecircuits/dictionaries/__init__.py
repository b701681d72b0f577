"""Sparse dictionaries — SAEs and transcoders — with SAELens-compatible save/load.

Public API::

    cfg = DictionaryConfig(architecture="topk", kind="transcoder", d_in=256, d_sae=4096,
                           hook_in="blocks.0.hook_mlp_in", hook_out="blocks.0.hook_mlp_out", k=32)
    tc = make_dictionary(cfg)               # SAE or Transcoder
    tc.init_biases_from_data(mlp_in, mlp_out)
    loss, parts = tc.loss(mlp_in, mlp_out, dead_mask=dead)
    save_dictionary(tc, "out/blocks.0"); tc2 = load_dictionary("out/blocks.0")

See `base.py` for the per-step trainer contract.
"""

from __future__ import annotations

from sparsecircuits.dictionaries.activations import ACTIVATIONS, Activation
from sparsecircuits.dictionaries.activations.topafa import epsilon_lbo
from sparsecircuits.dictionaries.base import Dictionary, ForwardOutput, geometric_median
from sparsecircuits.dictionaries.clt import CLTLayerView, CrossLayerTranscoder
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.dictionaries.io import (
    load_circuit_transcoders,
    load_dictionary,
    load_sparse_coder,
    load_transcoders,
    save_dictionary,
)
from sparsecircuits.dictionaries.sae import SAE
from sparsecircuits.dictionaries.transcoder import Transcoder
from sparsecircuits.errors import SparseCircuitsError

# Anything a training run, an evaluation or a saved folder can hold: a per-layer dictionary or a
# cross-layer transcoder (`load_sparse_coder`, `make_sparse_coder`).
SparseCoder = Dictionary | CrossLayerTranscoder


def make_dictionary(cfg: DictionaryConfig, init: bool = True) -> Dictionary:
    """Return an `SAE` (kind "sae") or a `Transcoder` ("transcoder"/"skip_transcoder") for `cfg`.

    `init=False` skips the random initialisation (loaders fill every tensor themselves). A
    cross-layer transcoder (kind "clt") has its own class: use `make_sparse_coder` or
    `CrossLayerTranscoder(cfg)`.
    """
    if cfg.kind == "sae":
        return SAE(cfg, init=init)
    if cfg.kind == "clt":
        raise SparseCircuitsError(
            "kind 'clt' builds a CrossLayerTranscoder: use make_sparse_coder(cfg) or CrossLayerTranscoder(cfg)"
        )
    return Transcoder(cfg, init=init)


def make_sparse_coder(
    cfg: DictionaryConfig, init: bool = True
) -> Dictionary | CrossLayerTranscoder:
    """Any kind, cross-layer transcoders included: `make_dictionary` or `CrossLayerTranscoder`."""
    if cfg.kind == "clt":
        return CrossLayerTranscoder(cfg, init=init)
    return make_dictionary(cfg, init=init)


__all__ = [
    "ACTIVATIONS",
    "CLTLayerView",
    "SAE",
    "SparseCoder",
    "Activation",
    "CrossLayerTranscoder",
    "Dictionary",
    "DictionaryConfig",
    "ForwardOutput",
    "epsilon_lbo",
    "Transcoder",
    "geometric_median",
    "load_circuit_transcoders",
    "load_dictionary",
    "load_sparse_coder",
    "load_transcoders",
    "make_dictionary",
    "make_sparse_coder",
    "save_dictionary",
]
