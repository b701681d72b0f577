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
from sparsecircuits.dictionaries.base import Dictionary, ForwardOutput, geometric_median
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.dictionaries.io import load_dictionary, load_transcoders, save_dictionary
from sparsecircuits.dictionaries.sae import SAE
from sparsecircuits.dictionaries.transcoder import Transcoder


def make_dictionary(cfg: DictionaryConfig, init: bool = True) -> Dictionary:
    """Return an `SAE` (kind "sae") or a `Transcoder` (kind "transcoder"/"skip_transcoder") for `cfg`.

    `init=False` skips the random initialisation (the tensors are left uninitialised; loaders use it).
    """
    if cfg.kind == "sae":
        return SAE(cfg, init=init)
    return Transcoder(cfg, init=init)


__all__ = [
    "ACTIVATIONS",
    "SAE",
    "Activation",
    "Dictionary",
    "DictionaryConfig",
    "ForwardOutput",
    "Transcoder",
    "geometric_median",
    "load_dictionary",
    "load_transcoders",
    "make_dictionary",
    "save_dictionary",
]
