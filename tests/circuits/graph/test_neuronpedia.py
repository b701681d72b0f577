"""Neuronpedia graph JSON: every schema field round-trips and exports validate against the schema."""

from __future__ import annotations

import copy
import json

import pytest

from sparsecircuits.circuits.graph.neuronpedia import (
    FeatureDetails,
    GenerationSettings,
    Generator,
    GraphInfo,
    GraphLink,
    GraphMetadata,
    NeuronpediaGraph,
    PruningSettings,
    QParams,
    cantor_pair,
    error_node,
    export_graph,
    feature_node,
    graph_schema,
    import_graph,
    load_graph,
    logit_node,
    token_node,
    validate_graph_json,
)
from sparsecircuits.errors import SparseCircuitsError


def full_graph() -> NeuronpediaGraph:
    """A graph that sets every field the schema names (and circuit-tracer's extras)."""
    meta = GraphMetadata(
        slug="gt-1",
        scan="embedded",
        prompt_tokens=["<bos>", "The", " year"],
        prompt="The year",
        feature_details=FeatureDetails(
            feature_json_base_url="/features",
            neuronpedia_source_set="tc-16k",
            neuronpedia_lorsa_source_set="lorsa-8x",
        ),
        node_threshold=0.8,
        info=GraphInfo(
            description="d",
            creator_name="me",
            creator_url="http://x",
            source_urls=["a"],
            generator=Generator(name="sparsecircuits", version="0.1", url="u", email="e"),
            create_time_ms=123.0,
        ),
        generation_settings=GenerationSettings(
            max_n_logits=10,
            desired_logit_prob=0.95,
            batch_size=64,
            max_feature_nodes=100,
            extra={"extra_key": 1},
        ),
        pruning_settings=PruningSettings(node_threshold=0.8, edge_threshold=0.98),
        transcoder_list=["a", "b"],
        schema_version=1,
    )
    nodes = [
        token_node(2, 0, 3, "<bos>", influence=0.1),
        token_node(7, 1, 3, "The", influence=0.2),
        feature_node(0, 5, 1, 3, activation=1.5, influence=0.3, clerp="a <b> label"),
        error_node(0, 1, 3, "The", influence=0.4),
        logit_node(9, 2, 2, " 1", 0.5, is_target=True),
    ]
    nodes[2].extra["qk_tracing_results"] = {"pair_wise_contributors": []}
    links = [
        GraphLink(nodes[1].node_id, nodes[2].node_id, 1.25),
        GraphLink(nodes[2].node_id, nodes[4].node_id, -0.5),
        GraphLink(nodes[3].node_id, nodes[4].node_id, 0.25),
    ]
    qp = QParams(
        pinnedIds=[nodes[2].node_id],
        supernodes=[["grp", nodes[2].node_id]],
        linkType="both",
        clickedId=nodes[2].node_id,
        sg_pos="",
        extra={"custom": True},
    )
    return NeuronpediaGraph(metadata=meta, qParams=qp, nodes=nodes, links=links)


def test_export_validates_against_schema_and_covers_every_schema_field():
    data = export_graph(full_graph())
    validate_graph_json(data)
    schema = graph_schema()
    props = schema["properties"]
    for key, sub in props["metadata"]["properties"].items():
        assert key in data["metadata"], key
        for inner in sub.get("properties", {}):
            assert inner in data["metadata"][key], (key, inner)
    assert set(
        props["metadata"]["properties"]["info"]["properties"]["generator"]["properties"]
    ) <= set(data["metadata"]["info"]["generator"])
    for key in props["qParams"]["properties"]:
        assert key in data["qParams"]
    for key in props["nodes"]["items"]["properties"]:
        assert all(key in n for n in data["nodes"]), key
    for key in props["links"]["items"]["properties"]:
        assert all(key in e for e in data["links"]), key


def test_import_export_roundtrip_is_identity():
    graph = full_graph()
    data = json.loads(json.dumps(export_graph(graph)))
    assert import_graph(data) == graph
    assert export_graph(import_graph(data)) == data


def test_minimal_graph_roundtrip_and_unknown_keys_kept():
    data = {
        "metadata": {
            "slug": "s",
            "scan": "m",
            "prompt_tokens": ["a"],
            "prompt": "a",
            "mystery": [1],
        },
        "qParams": {},
        "nodes": [
            {
                "node_id": "E_1_0",
                "feature": None,
                "layer": 0,
                "ctx_idx": 0,
                "feature_type": "embedding",
                "jsNodeId": "E_1-0",
                "clerp": "",
                "influence": None,
                "activation": None,
                "new": "x",
            }
        ],
        "links": [{"source": "E_1_0", "target": "E_1_0", "weight": 2}],
    }
    validate_graph_json(data)
    graph = import_graph(data)
    assert graph.metadata.extra == {"mystery": [1]}
    assert graph.nodes[0].extra == {"new": "x"} and graph.nodes[0].layer == 0
    assert isinstance(graph.links[0].weight, float)
    again = export_graph(graph)
    validate_graph_json(again)
    assert import_graph(again) == graph


def test_schema_violations_are_reported():
    data = export_graph(full_graph())
    broken = copy.deepcopy(data)
    del broken["nodes"][0]["jsNodeId"]
    with pytest.raises(SparseCircuitsError, match="nodes/0"):
        validate_graph_json(broken)
    broken = copy.deepcopy(data)
    broken["links"][0]["weight"] = "big"
    with pytest.raises(SparseCircuitsError, match="links/0/weight"):
        validate_graph_json(broken)
    with pytest.raises(SparseCircuitsError, match="lacks required key"):
        import_graph({**data, "metadata": {"slug": "x"}})


def test_save_and_load_file(tmp_path):
    graph = full_graph()
    path = graph.save(tmp_path / "sub" / "g.json")
    assert load_graph(path, validate=True) == graph
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        load_graph(tmp_path / "none.json")


def test_cantor_pairing():
    assert cantor_pair(0, 253) == 253 * 254 // 2 + 253
    assert cantor_pair(2, 3) == 5 * 6 // 2 + 3


def test_node_ids_do_not_collide():
    nodes = [
        feature_node(1, 3, 2, 4, activation=1.0, influence=0.1),
        error_node(1, 3, 4, "x", influence=0.1),
        error_node(0, 1, 4, "x", influence=0.1),
        feature_node(0, 1, 3, 4, activation=1.0, influence=0.1),
    ]
    assert len({n.node_id for n in nodes}) == 4
    assert len({n.jsNodeId for n in nodes}) == 4
    assert logit_node(5, 3, 4, "x", 0.25, is_target=False).clerp == 'Output "x" (p=0.250)'
