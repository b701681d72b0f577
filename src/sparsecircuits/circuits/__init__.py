"""Circuit analysis with transcoders (Dunefsky, Chlenski & Nanda 2024).

* `replacement`: `ReplacementModel` — the LM with transcoders, exact error terms, frozen
  attention / norms; `edits` (`Edits`, `FeatureEdit`, `HeadEdit`, ...); `state`
  (`ReplacementState`).
* `attribution`: targets (feature pre-activation, logit, logit difference, direction, metric
  gradient), one-hop decompositions (features, heads × source positions, embeddings,
  errors, biases) and exact gradient × activation attributions.
* `deembed`: input-invariant connections, de-embeddings and feature logits.
* `paths`: the paper's greedy path search, path → graph merge with error nodes, JSON and PNG.
* `verify`: ablation checks of attributions.
* `graph`: full attribution graphs (Neuronpedia JSON).

Submodules are imported lazily so `import sparsecircuits.circuits` stays cheap.
"""

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
