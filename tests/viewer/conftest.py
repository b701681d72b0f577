"""A viewer data folder built from a tiny model: one graph, dashboards over hostile text, a server."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from testkit import topk_transcoders

# Dataset and prompt text that would run script if any of it reached innerHTML.
XSS_TEXTS = [
    "<script>window.__xss = 1</script> the cat saw the house",
    '"><img src=x onerror="window.__xss = 2"> a dog found two books',
    "<b>bold</b> & <i>it</i> in the year 1999 or 42",
]
XSS_PROMPT = 'The cat <img src=x onerror="window.__xss=3"> saw the house in the year 17'


@pytest.fixture(scope="session")
def viewer_data(tiny_model_dir, tmp_path_factory):
    """`SimpleNamespace(dir, rm, graph, graph_id, dashboards)` for a tiny GPT-2 with random transcoders."""
    from sparsecircuits.circuits.graph.build import build_graph
    from sparsecircuits.circuits.graph.neuronpedia import save_graph, to_neuronpedia
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.interpret import DashboardConfig, compute_dashboards, save_dashboards
    from sparsecircuits.models import load_model

    adapter = load_model(tiny_model_dir("gpt2"), device="cpu")
    transcoders = topk_transcoders(adapter, d_sae=32, k=4)
    rm = ReplacementModel(adapter, transcoders)
    folder = tmp_path_factory.mktemp("viewer")
    graph = build_graph(rm, XSS_PROMPT)
    save_graph(to_neuronpedia(graph, slug="xss-graph", scan="tiny-gpt2"), folder / "graph.json")
    ids = adapter.tokenize(XSS_TEXTS * 4)
    batches = list(ids.split(4))
    dashboards = compute_dashboards(
        adapter,
        {f"layer{k}": v for k, v in transcoders.items()},
        batches,
        DashboardConfig(n_top=5, n_samples=5, context_left=8, context_right=4),
    )
    save_dashboards(dashboards, folder / "dashboards")
    (folder / "trace.json").write_text("{}")  # not a graph: must not be listed
    (folder / "notes.json").write_text("[1, 2]")
    return SimpleNamespace(
        dir=folder, rm=rm, graph=graph, graph_id="graph.json", dashboards=dashboards
    )


@pytest.fixture(scope="session")
def viewer_server(viewer_data):
    """A running `ViewerServer` on 127.0.0.1 and a free port, with a real intervention engine."""
    from sparsecircuits.circuits.interventions import InterventionEngine
    from sparsecircuits.viewer import ViewerApp, ViewerServer

    torch.manual_seed(0)
    app = ViewerApp(
        Path(viewer_data.dir), intervention_engine=lambda: InterventionEngine(viewer_data.rm)
    )
    server = ViewerServer(app, "127.0.0.1", 0).start()
    yield server
    server.stop()
