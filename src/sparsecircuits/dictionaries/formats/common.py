"""What every format reader and writer shares: building our dictionary from tensors already in
our parametrisation, thresholds, file reading, the stored sparsecircuits config block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from sparsecircuits.config import dtype_name
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.dictionaries.io import _resolve_device
from sparsecircuits.errors import SparseCircuitsError

# the key under which writers store our own config beside a library's (ignored by the library)
OWN_KEY = "sparsecircuits"


def build(
    fields: dict[str, Any],
    tensors: dict[str, Tensor],
    where: str,
    device: str | torch.device | None,
) -> Dictionary | CrossLayerTranscoder:
    """Our dictionary from config `fields` and a complete state dict `tensors` in our naming
    (`W_enc [d_in, d_sae]`, `b_in`, `b_enc`, `W_dec [d_sae, d_out]`, `b_dec`, ...; a CLT's
    family state stacked). A missing `b_in` is zero (the libraries' formats have no input
    bias). `d_in`, `d_sae` and `d_out` are those of `W_enc` and `W_dec`, dtype that of
    `W_dec`; `device` defaults to the CPU.

    Raises `SparseCircuitsError` naming `where` when the tensors do not fit the config.
    """
    decoder = tensors["W_dec"] if "W_dec" in tensors else tensors["W_dec.0"]
    W_enc = tensors["W_enc"]
    d_in, d_sae = W_enc.shape[-2:]
    if "b_in" not in tensors:  # a new mapping: the caller's stays as it was
        tensors = {**tensors, "b_in": torch.zeros(W_enc.shape[:-1], dtype=decoder.dtype)}
    fields = {"dtype": dtype_name(decoder.dtype), **fields, "d_in": d_in, "d_sae": d_sae}
    fields["d_out"] = decoder.shape[-1]
    fields["device"] = _resolve_device(device, "cpu")
    try:
        cfg = DictionaryConfig(**fields)
    except TypeError as exc:  # pragma: no cover - fields are ours
        raise SparseCircuitsError(f"{where}: {exc}") from None
    from sparsecircuits.dictionaries import make
    from sparsecircuits.dictionaries.io import load_weights
    from sparsecircuits.dictionaries.validate import check_parameters

    check_parameters(tensors, where=where)
    return load_weights(make(cfg, init=False), tensors, where)


def log_threshold(threshold: Tensor, where: str) -> Tensor:
    """`log θ` for our JumpReLU from a stored threshold `θ [..., d_sae]`.

    Every library's JumpReLU agrees with ours for `θ ≥ 0` (§1.2: `relu(u)·1[u > θ]` and
    `u·1[u > θ]` differ only where `θ < 0`), so a negative threshold is refused. A zero threshold
    becomes the smallest normal float of its dtype: the outputs then differ only for
    pre-activations in `(0, tiny]`, by at most `tiny`.
    """
    if bool((threshold < 0).any()):
        count = int((threshold < 0).sum())
        raise SparseCircuitsError(
            f"{where}: {count} JumpReLU thresholds are negative; that activation keeps negative "
            "pre-activations, which our JumpReLU (log-threshold) cannot represent"
        )
    tiny = torch.finfo(threshold.dtype).tiny
    return threshold.clamp_min(tiny).log()


def read_mapping(path: Path) -> dict[str, Any]:
    """A JSON (`.json`) or YAML file holding one mapping."""
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SparseCircuitsError(f"cannot read {path} ({exc})") from None
    if not isinstance(raw, dict):
        raise SparseCircuitsError(f"{path} must hold a mapping")
    return raw


def stored_config(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Our config as a writer stored it under `OWN_KEY` in a library's config (None if absent)."""
    own = raw.get(OWN_KEY)
    if isinstance(own, dict) and isinstance(own.get("config"), dict):
        return dict(own["config"])
    return None


def own_block(coder: Dictionary | CrossLayerTranscoder | dict[int, Dictionary]) -> dict[str, Any]:
    """What writers store under `OWN_KEY`: our library version and the full config (`config`),
    or one config per layer (`layers`, keyed by the layer as a string) for a set."""
    from sparsecircuits import __version__
    from sparsecircuits.config import to_dict

    if isinstance(coder, dict):
        configs = {str(layer): to_dict(one.cfg) for layer, one in coder.items()}
        return {"library_version": __version__, "layers": configs}
    return {"library_version": __version__, "config": to_dict(coder.cfg)}


# config fields a library's tensors and config determine; a stored config supplies the rest
_FROM_LIBRARY = ("architecture", "kind", "d_in", "d_sae", "d_out", "n_layers", "k", "topk_relu")


def combine(derived: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """Config fields for `build`: those a reader `derived` from the library's files, over our
    stored config when a writer of ours left one (so hooks, model name, training record and
    family settings survive a round trip); the library's word wins on architecture and shapes."""
    if stored is None:
        return derived
    fields = {key: value for key, value in stored.items() if key not in ("device", "dtype")}
    fields.update({key: derived[key] for key in _FROM_LIBRARY if key in derived})
    for key in ("hook_in", "hook_out", "model_name"):
        if not fields.get(key) and derived.get(key):
            fields[key] = derived[key]
    return fields


def cpu(tensor: Tensor) -> Tensor:
    """`tensor` detached, contiguous, on the CPU (what safetensors writes)."""
    return tensor.detach().to("cpu").contiguous()
