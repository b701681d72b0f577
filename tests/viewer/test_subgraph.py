"""Subgraph state, automatic labels and (sub)graph scores: the HTTP API and circuit-tracer parity."""

from __future__ import annotations

import json
import subprocess

import pytest

from sparsecircuits.circuits.graph.neuronpedia import validate_graph_json
from sparsecircuits.circuits.graph.scores import graph_scores, node_roles
from testkit import circuit_tracer_python

from .test_server import fetch

CT_PYTHON = circuit_tracer_python()

# Runs in circuit-tracer's environment: reads {adjacency, roles, logit_probs} on stdin, orders the
# nodes as circuit-tracer's Graph does (features, errors padded to n_tokens * n_layers, tokens,
# logits) and prints circuit-tracer's own compute_graph_scores (float32: its logit weights are).
CT_WORKER = r"""
import json, math, sys
from types import SimpleNamespace
import torch
from circuit_tracer.graph import compute_graph_scores

spec = json.load(sys.stdin)
adjacency = torch.tensor(spec["adjacency"], dtype=torch.float32)
roles = spec["roles"]
groups = {r: [i for i, x in enumerate(roles) if x == r] for r in ("feature", "error", "token", "logit")}
n_tokens = len(groups["token"])
n_layers = max(1, math.ceil(len(groups["error"]) / n_tokens))
pad = n_tokens * n_layers - len(groups["error"])
order = groups["feature"] + groups["error"] + [-1] * pad + groups["token"] + groups["logit"]
n = len(order)
matrix = torch.zeros(n, n, dtype=torch.float32)
for a, i in enumerate(order):
    for b, j in enumerate(order):
        if i >= 0 and j >= 0:
            matrix[a, b] = adjacency[i, j]
# circuit-tracer's error nodes are leaves: no inputs
for a in range(len(groups["feature"]), len(groups["feature"]) + n_tokens * n_layers):
    matrix[a] = 0
graph = SimpleNamespace(
    logit_targets=groups["logit"], input_tokens=groups["token"],
    selected_features=groups["feature"], cfg=SimpleNamespace(n_layers=n_layers),
    adjacency_matrix=matrix,
    logit_probabilities=torch.tensor([spec["logit_probs"][i] for i in groups["logit"]], dtype=torch.float32),
)
print(json.dumps(compute_graph_scores(graph)))
"""


def _circuit_tracer_scores(graph: dict, pinned: list[str]) -> tuple[float, float]:
    if not CT_PYTHON.is_file():
        pytest.skip("circuit-tracer's environment (.venv-bench-ct) is absent")
    index = {n["node_id"]: i for i, n in enumerate(graph["nodes"])}
    n = len(index)
    adjacency = [[0.0] * n for _ in range(n)]
    for link in graph["links"]:
        adjacency[index[link["target"]]][index[link["source"]]] += link["weight"]
    spec = {
        "adjacency": adjacency,
        "roles": node_roles(graph, pinned),
        "logit_probs": [float(node.get("token_prob") or 0.0) for node in graph["nodes"]],
    }
    done = subprocess.run(
        [str(CT_PYTHON), "-c", CT_WORKER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"circuit-tracer's worker failed:\n{done.stderr}"
    replacement, completeness = json.loads(done.stdout)
    return replacement, completeness


def _graph(viewer_data) -> dict:
    return json.loads((viewer_data.dir / viewer_data.graph_id).read_text())


def test_scores_equal_circuit_tracers_for_the_whole_graph_and_for_pins(viewer_data):
    graph = _graph(viewer_data)
    features = [
        n["node_id"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"
    ]
    features.sort(key=lambda i: next(n["influence"] for n in graph["nodes"] if n["node_id"] == i))
    assert len(features) >= 4
    for pinned in ([], features[:3], features[: len(features) // 2]):
        ours = graph_scores(graph, pinned)
        theirs = _circuit_tracer_scores(graph, pinned)
        assert ours["replacement"] == pytest.approx(theirs[0], rel=1e-5, abs=1e-7)
        assert ours["completeness"] == pytest.approx(theirs[1], rel=1e-5, abs=1e-7)
    # fewer pinned features explain less
    assert graph_scores(graph, features[:1])["replacement"] <= graph_scores(graph)["replacement"]


def test_scores_endpoint(viewer_server, viewer_data):
    graph = _graph(viewer_data)
    pins = [n["node_id"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"][
        :2
    ]
    status, _, body = fetch(viewer_server, "/api/scores?graph=graph.json&pinned=" + ",".join(pins))
    assert status == 200
    assert json.loads(body)["replacement"] == pytest.approx(
        graph_scores(graph, pins)["replacement"]
    )
    status, _, body = fetch(viewer_server, "/api/scores?graph=graph.json&pinned=nope")
    assert status == 400 and b"nope" in body
    assert fetch(viewer_server, "/api/scores?graph=missing.json")[0] == 404


def test_labels_come_from_the_dashboards(viewer_server, viewer_data):
    status, _, body = fetch(viewer_server, "/api/labels?graph=graph.json")
    labels = json.loads(body)
    assert status == 200 and labels
    graph = _graph(viewer_data)
    keys = {
        "_".join(n["node_id"].split("_")[:2])
        for n in graph["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    }
    assert set(labels) == keys
    assert any("→" in label for label in labels.values())


def test_subgraph_state_saves_beside_the_graph_and_reloads(viewer_server, viewer_data):
    state = {
        "pinnedIds": ["a", "b"],
        "supernodes": [["<img src=x onerror=alert(1)>", "a", "b"]],
        "clerps": {"0_1": "my label"},
        "pruningThreshold": 0.5,
    }
    path = viewer_data.dir / "graph.subgraph.json"
    try:
        status, _, body = fetch(
            viewer_server, "/api/subgraph?graph=graph.json", json.dumps(state).encode(), "POST"
        )
        assert status == 200, body
        assert json.loads(path.read_text()) == state
        assert json.loads(fetch(viewer_server, "/api/subgraph?graph=graph.json")[2]) == state
        # not listed as a graph; no temporary files left
        assert all(g["id"] != path.name for g in json.loads(fetch(viewer_server, "/api/graphs")[2]))
        assert not list(viewer_data.dir.glob(".subgraph-*"))
        # the graph with this subgraph, as one Neuronpedia graph JSON
        graph = json.loads((viewer_data.dir / "graph.json").read_text())
        feature = next(
            n for n in graph["nodes"] if n.get("feature_type", "").endswith("transcoder")
        )
        layer, index = feature["node_id"].split("_")[:2]
        labelled = {
            **state,
            "pinnedIds": [feature["node_id"]],
            "clerps": {f"{layer}_{index}": "<b>label</b>"},
        }
        assert (
            fetch(
                viewer_server,
                "/api/subgraph?graph=graph.json",
                json.dumps(labelled).encode(),
                "POST",
            )[0]
            == 200
        )
        exported = json.loads(fetch(viewer_server, "/api/export?graph=graph.json")[2])
        validate_graph_json(exported)
        assert exported["qParams"]["pinnedIds"] == [feature["node_id"]]
        assert exported["qParams"]["supernodes"] == state["supernodes"]
        clerps = {n["node_id"]: n["clerp"] for n in exported["nodes"]}
        assert clerps[feature["node_id"]] == "<b>label</b>"
        assert len(exported["nodes"]) == len(graph["nodes"]) and exported["links"] == graph["links"]
        for bad in (b"[1]", b'{"pinnedIds": [1]}', b'{"supernodes": [[]]}', b"not json"):
            assert fetch(viewer_server, "/api/subgraph?graph=graph.json", bad, "POST")[0] == 400
        assert fetch(viewer_server, "/api/subgraph?graph=../x", b"{}", "POST")[0] == 404
    finally:
        path.unlink(missing_ok=True)


# Reads circuit-tracer's feature-file layout as its frontend does (index.json.gz, byte ranges,
# 4-byte little-endian length, zlib JSON) and validates each record with circuit-tracer's own
# pydantic feature model.
CT_FEATURES_WORKER = r"""
import gzip, json, struct, sys, zlib
from pathlib import Path
from circuit_tracer.frontend.feature_models import Model

root = Path(sys.argv[1])
index = json.loads(gzip.decompress((root / "index.json.gz").read_bytes()))
out = {}
for layer, entry in enumerate(index):
    if entry["filename"] is None:
        continue
    data = (root / entry["filename"]).read_bytes()
    offsets = entry["offsets"]
    for f in range(len(offsets) - 1):
        chunk = data[offsets[f]:offsets[f + 1]]
        (n,) = struct.unpack("<I", chunk[:4])
        record = json.loads(zlib.decompress(chunk[4:4 + n]))
        Model(**record)
        out[f"{layer}_{f}"] = record
print(json.dumps(out))
"""


def test_feature_files_open_in_circuit_tracers_layout(viewer_data, tmp_path):
    from sparsecircuits.interpret import load_dashboards
    from sparsecircuits.interpret.feature_files import write_feature_files

    if not CT_PYTHON.is_file():
        pytest.skip("circuit-tracer's environment (.venv-bench-ct) is absent")
    store = load_dashboards(viewer_data.dir / "dashboards")
    folder = write_feature_files(store, tmp_path)
    done = subprocess.run(
        [str(CT_PYTHON), "-c", CT_FEATURES_WORKER, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    name = store.names[0]
    layer, d_sae = store.info(name)["layer"], store.info(name)["d_sae"]
    assert sum(key.startswith(f"{layer}_") for key in records) == d_sae
    for index in (0, d_sae - 1):
        ours = store.feature(name, index)
        theirs = records[f"{layer}_{index}"]
        assert theirs["index"] == index and theirs["top_logits"] == ours["top_logits"]
        assert theirs["act_max"] == pytest.approx(ours["act_max"])
        assert theirs["histogram"] == [float(c) for c in ours["histogram"]["counts"]]
        assert [len(q["examples"]) for q in theirs["examples_quantiles"]] == [
            len(q["examples"]) for q in ours["examples_quantiles"]
        ]
