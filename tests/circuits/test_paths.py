"""Greedy path search, path -> graph merge with error nodes, JSON round trip, PNG, verification."""

from __future__ import annotations

import json

import pytest

from sparsecircuits.circuits import attribution as A
from sparsecircuits.circuits import paths as P
from sparsecircuits.circuits.verify import verify_graph


@pytest.fixture(params=["gpt2", "gemma2", "gemma2-mlp.hook_out"])
def searched(tiny_models, request):
    rm, ids = tiny_models[request.param]
    state = rm.run(ids)
    target = A.logit_diff_target(rm, state, 5, 9, pos=-1)
    result = P.search_paths(rm, state, target, row=1, num_iters=3, num_branches=6, rank="abs")
    return rm, state, target, result


def test_paths_go_backwards_and_contributions_add_up(searched):
    rm, state, target, result = searched
    assert len(result.paths) == 3 and all(len(level) <= 6 for level in result.paths)

    def read(node):
        return {
            "target": rm.final_read,
            "feature": rm.mlp_read(node.layer or 0),
            "head": rm.attn_read(node.layer or 0),
        }[node.kind]

    def write(node):
        return {
            "feature": rm.mlp_write(node.layer or 0),
            "head": rm.attn_write(node.layer or 0),
            "embed": -1,
            "skip": rm.mlp_write(node.layer or 0),
        }[node.kind]

    for path in result.all_paths():
        assert (
            path[0].key == "target"
            and abs(path[0].contrib - float(target.evaluate(state)[1])) < 1e-5
        )
        for parent, child in zip(path, path[1:], strict=False):
            assert write(child) < read(parent)
            if child.kind != "head":  # only heads move information between positions
                assert child.pos == parent.pos
            if child.vector is not None:
                assert abs(float(child.vector.value(state)[0]) - child.contrib) < 1e-4


def test_complete_expansion_leaves_no_pruning_error(tiny_models):
    rm, ids = tiny_models["llama"]
    state = rm.run(ids)
    target = A.logit_target(rm, state, 3, pos=-1)
    result = P.search_paths(
        rm, state, target, num_iters=1, num_branches=10**6, rank="abs", ignore_bos=False
    )
    graph = P.paths_to_graph(result)
    assert abs(graph.nodes["prune:target"].contrib) < 1e-4 * max(
        1.0, abs(graph.nodes["target"].contrib)
    )
    incoming = sum(w for (child, parent), w in graph.edges.items() if parent == "target")
    assert abs(incoming - graph.nodes["target"].contrib) < 1e-4


def test_graph_balances_at_every_expanded_node(searched):
    _, _, _, result = searched
    graph = P.paths_to_graph(result)
    expanded = {prefix[-1] for prefix in result.expansions}
    for key in expanded:
        incoming = sum(w for (child, parent), w in graph.edges.items() if parent == key)
        assert abs(incoming - graph.nodes[key].contrib) < 1e-4 * max(
            1.0, abs(graph.nodes[key].contrib)
        )


def test_graph_json_and_png(searched, tmp_path):
    rm, state, _, result = searched
    graph = P.paths_to_graph(result, meta={"n_layers": rm.n_layers})
    path = graph.save_json(tmp_path / "graph.json")
    data = json.loads(path.read_text())
    assert {"nodes", "edges", "metadata"} <= set(data) and data["metadata"]["num_branches"] == 6
    png = P.plot_graph(graph, tmp_path / "graph.png", tokens=P.graph_tokens(rm, state, 1))
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert P.path_strings(result, 3)[0].endswith(")")


def test_capping_limits_children_to_their_feature_parent(tiny_models):
    rm, ids = tiny_models["gpt2"]
    state = rm.run(ids)
    target = A.logit_target(rm, state, 3, pos=-1)
    result = P.search_paths(rm, state, target, num_iters=3, num_branches=10, cap=True)
    for path in result.all_paths():
        ceiling = float("inf")
        for node in path[1:]:
            assert node.contrib <= ceiling + 1e-6
            if node.kind == "feature":
                ceiling = min(ceiling, node.contrib)


def test_verify_graph_is_exact_when_frozen(searched):
    rm, state, target, result = searched
    graph = P.paths_to_graph(result)
    report = verify_graph(rm, state, target, graph, top_n=6)
    assert len(report.exact.rows) >= 3
    assert report.exact.max_rel_error < 1e-4 and report.exact.pearson > 0.9999
    assert set(report.to_dict()) == {"exact", "graph", "live"}
