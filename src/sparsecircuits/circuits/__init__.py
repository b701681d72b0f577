"""Circuit analysis with transcoders (Dunefsky, Chlenski & Nanda 2024): replacement model, attribution,
paths, graphs, interventions, case studies; submodules import lazily (docs/internals.md)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReplacementModel": "replacement",
    "ReplacementState": "replacement",
    "Edits": "replacement",
    "FeatureEdit": "replacement",
    "HeadEdit": "replacement",
    "ErrorEdit": "replacement",
    "EmbedEdit": "replacement",
    "FeatureNode": "nodes",
    "HeadNode": "nodes",
    "ErrorNode": "nodes",
    "EmbedNode": "nodes",
    "Target": "attribution",
    "attribute": "attribution",
    "decompose": "attribution",
    "search_paths": "paths",
    "paths_to_graph": "paths",
    "verify_nodes": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"sparsecircuits.circuits.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'sparsecircuits.circuits' has no attribute {name!r}")
