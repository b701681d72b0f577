"""The transcoder paper's GPT-2 small transcoders (Dunefsky, Chlenski & Nanda 2024): `.pt` files.

Layout (spec §1.10; `jacobdunefsky/transcoder_circuits` `sae_training/sparse_autoencoder.py`
`save_model`): `torch.save({"cfg": LanguageModelSAERunnerConfig, "state_dict": {...}})` with
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_in]` (subtracted from
the input before encoding) and, for a transcoder, `b_dec_out [d_out]` (the output bias). The
encoder is `relu((x - b_dec) W_enc + b_enc)`: our ReLU with `b_in = b_dec`.

A `.pt` is a pickle, which can run code when loaded. It is read with
`torch.load(weights_only=True)`, torch's restricted unpickler, which builds only tensors,
dicts, lists, tuples, numbers, strings and torch's dtypes/devices; the one extra class it admits
is a stand-in for the config class that only collects the config's fields into a dict. Any other
global (a function a payload would call) stops the load with an error.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.formats.common import build
from sparsecircuits.errors import SparseCircuitsError

CONFIG_CLASS = "sae_training.config.LanguageModelSAERunnerConfig"


class _ConfigFields:
    """Stand-in for the paper's config class: unpickling fills `__dict__` with its fields."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """`{"cfg": {field: value}, "state_dict": {name: tensor}}` of the `.pt` at `path`, read
    without running code from the file; raises `SparseCircuitsError` for anything else."""
    try:
        with torch.serialization.safe_globals([(_ConfigFields, CONFIG_CLASS)]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SparseCircuitsError(
            f"{path}: refused to unpickle ({_refusal(exc)}); only tensors, dicts, lists, numbers, "
            "strings and the transcoder paper's config are read from a .pt file"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise SparseCircuitsError(f"cannot read {path} as a torch file ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise SparseCircuitsError(
            f"{path}: not a transcoder_circuits checkpoint (expected a dict with 'cfg' and 'state_dict')"
        )
    cfg = raw.get("cfg")
    fields = dict(vars(cfg)) if isinstance(cfg, _ConfigFields) else cfg
    if not isinstance(fields, dict):
        raise SparseCircuitsError(f"{path}: its 'cfg' is neither the paper's config nor a dict")
    return {"cfg": fields, "state_dict": raw["state_dict"]}


def _refusal(exc: Exception) -> str:
    """The line of torch's refusal that names what was refused (not its advice to unpickle)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("global", "GLOBAL", "Can only", "Trying to")):
            return line.rstrip(".")
    return type(exc).__name__


def read(path: Path, device: str | torch.device | None) -> Dictionary:
    """The transcoder (or SAE) in the paper's `.pt` file `path`."""
    checkpoint = load_checkpoint(path)
    cfg, state = checkpoint["cfg"], checkpoint["state_dict"]
    where = str(path)
    missing = sorted({"W_enc", "b_enc", "W_dec", "b_dec"} - set(state))
    if missing:
        raise SparseCircuitsError(f"{where}: state_dict lacks {', '.join(missing)}")
    tensors: dict[str, Tensor] = {name: t for name, t in state.items() if isinstance(t, Tensor)}
    transcoder = bool(cfg.get("is_transcoder")) or "b_dec_out" in tensors
    if transcoder and "b_dec_out" not in tensors:
        raise SparseCircuitsError(f"{where}: a transcoder checkpoint without b_dec_out")
    ours = {
        "W_enc": tensors["W_enc"],
        "b_enc": tensors["b_enc"],
        "b_in": tensors["b_dec"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec_out"] if transcoder else tensors["b_dec"],
    }
    fields: dict[str, Any] = {
        "architecture": "relu",
        "kind": "transcoder" if transcoder else "sae",
        "hook_in": str(cfg.get("hook_point") or ""),
        "model_name": str(cfg.get("model_name") or ""),
    }
    if transcoder:
        fields["hook_out"] = str(cfg.get("out_hook_point") or "")
    if "l1_coefficient" in cfg:
        fields["l1_coefficient"] = float(cfg["l1_coefficient"])
    built = build(fields, ours, where, device)
    assert isinstance(built, Dictionary)
    return built
