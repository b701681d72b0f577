"""Save nested training state (optimizer, counters, data position) without pickle.

Tensors go to one safetensors file; everything else (numbers, strings, lists, dicts with int or
str keys) goes to a JSON file that points at the tensors by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_DICT = "__dict__"
_TUPLE = "__tuple__"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().contiguous().cpu()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {_DICT: [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _DICT in obj:
            return {k: _unflatten(v, tensors) for k, v in obj[_DICT]}
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(state: dict[str, Any], folder: Path, stem: str = "trainer_state") -> None:
    """Write `state` as `folder/{stem}.json` + `folder/{stem}.safetensors`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(state, tensors)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(tree))


def load_state(folder: Path, stem: str = "trainer_state") -> dict[str, Any]:
    """Return the state written by `save_state` (tensors on CPU)."""
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    tree = json.loads((folder / f"{stem}.json").read_text())
    return _unflatten(tree, tensors)
