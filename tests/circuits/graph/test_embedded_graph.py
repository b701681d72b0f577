"""Attribution graph on the shipped model with its shipped transcoders (skipped until both exist)."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
from sparsecircuits.circuits.graph.neuronpedia import (
    export_graph,
    to_neuronpedia,
    validate_graph_json,
)
from sparsecircuits.circuits.replacement import (
    Edits,
    EmbedEdit,
    ErrorEdit,
    FeatureEdit,
    ReplacementModel,
)
from sparsecircuits.models.embedded import embedded_dir

EMBEDDED = embedded_dir()
HAVE = (EMBEDDED / "model.safetensors").is_file() and (EMBEDDED / "transcoders").is_dir()
pytestmark = pytest.mark.skipif(not HAVE, reason="embedded model or its transcoders not built yet")


def test_embedded_graph_edges_equal_frozen_ablations():
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model

    adapter = load_model("embedded", device="cpu")
    rm = ReplacementModel(adapter, load_transcoders("embedded", device="cpu"))
    graph = build_graph(
        rm,
        "The war lasted from the year 1732 to the year 17",
        GraphConfig(row_mass=1.0, max_edges_per_row=None, store="all"),
    )
    state = rm.run(graph.input_ids[None])
    dense = graph.adjacency.to_dense().double()

    def targets(st) -> torch.Tensor:
        values = torch.zeros(graph.n_nodes, dtype=torch.float64)
        for i, (layer, pos, feat) in enumerate(graph.active_features.tolist()):
            values[i] = float(st.feature_pre[layer][0, pos, feat])
        logits = st.logits[0, -1].double()
        for k, token in enumerate(graph.logit_ids.tolist()):
            values[graph.logit_index(k)] = logits[token] - logits.mean()
        return values

    clean = targets(state)
    gen = torch.Generator().manual_seed(0)
    features = torch.randperm(graph.n_features, generator=gen)[:6].tolist()
    edits = [
        Edits(features=[FeatureEdit(*graph.active_features[i].tolist(), value=0.0)])
        for i in features
    ]
    columns = list(features)
    for layer, pos in ((0, 3), (2, graph.n_pos - 1)):
        edits.append(Edits(errors=[ErrorEdit(layer, pos=pos, scale=0.0)]))
        columns.append(graph.error_index(layer, pos))
    edits.append(Edits(embeds=[EmbedEdit(pos=graph.n_pos - 1, scale=0.0)]))
    columns.append(graph.token_index(graph.n_pos - 1))
    for edit, column in zip(edits, columns, strict=True):
        change = clean - targets(rm.run_with(state, edit, freeze=True, features="frozen"))
        torch.testing.assert_close(change, dense[:, column], atol=1e-4, rtol=1e-3)
    data = export_graph(to_neuronpedia(graph, slug="gt", scan="embedded"))
    validate_graph_json(data)
    replacement_score, completeness = graph.scores()
    assert 0.0 < replacement_score <= 1.0 and 0.0 < completeness <= 1.0
