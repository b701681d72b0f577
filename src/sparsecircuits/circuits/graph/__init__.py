"""Attribution graphs: build (direct effects), prune (influence), export (Neuronpedia JSON)."""

from __future__ import annotations

from sparsecircuits.circuits.graph.neuronpedia import (
    NeuronpediaGraph,
    export_graph,
    import_graph,
    load_graph,
    save_graph,
    to_neuronpedia,
    validate_graph_json,
)

__all__ = [
    "NeuronpediaGraph",
    "export_graph",
    "import_graph",
    "load_graph",
    "save_graph",
    "to_neuronpedia",
    "validate_graph_json",
]
