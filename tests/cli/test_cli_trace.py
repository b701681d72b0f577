"""`sparsecircuits trace` on a tiny model: graph.json validates, trace.json has the numbers."""

from __future__ import annotations

import argparse
import json

import pytest

from sparsecircuits.circuits.graph.build import GraphConfig
from sparsecircuits.circuits.graph.neuronpedia import validate_graph_json
from sparsecircuits.cli import dashboards as dashboards_cli
from sparsecircuits.cli import serve as serve_cli
from sparsecircuits.cli import trace as trace_cli
from testkit import save_topk_transcoders


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsecircuits")
    sub = p.add_subparsers()
    for module in (trace_cli, dashboards_cli, serve_cli):
        module.register(sub)
    return p


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    model = tiny_model_dir("gpt2")
    folder = tmp_path_factory.mktemp("transcoders")
    save_topk_transcoders(folder, hook_in="mlp.hook_in", hook_out="hook_mlp_out")
    return model, folder


def test_trace_writes_graph_and_report(saved, tmp_path, capsys):
    model, transcoders = saved
    args = parser().parse_args(
        [
            "trace",
            "The cat saw the house in the year 17",
            "--model",
            str(model),
            "--transcoders",
            str(transcoders),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    graph = json.loads((tmp_path / "graph.json").read_text())
    validate_graph_json(graph)
    assert graph["metadata"]["slug"] == "the-cat-saw-the-house-in-the-year-17"
    assert graph["metadata"]["scan"] == model.name  # the model's id, not its local path
    report = json.loads((tmp_path / "trace.json").read_text())
    assert report["n_nodes"] == len(graph["nodes"]) and report["n_edges"] == len(graph["links"])
    assert 0 <= report["replacement_score"] <= 1 and report["peak_rss_mb"] > 0
    assert 0 <= report["completeness_score"] <= 1 and report["seconds"] > 0
    out = capsys.readouterr().out
    summary = json.loads(out.splitlines()[0])  # the printed line repeats trace.json's numbers
    assert summary["n_nodes"] == report["n_nodes"] and summary.items() <= report.items()
    assert "sparsecircuits serve" in out and "--port 8041" in out


@pytest.mark.parametrize(
    "family", ["llama3", "gemma2", "gemma3_text", "gemma3", "gemma2-mlp.hook_out"]
)
def test_trace_on_every_new_family_writes_a_valid_graph(tiny_model_dir, tmp_path, family):
    """A local random-weight folder of each family with random per-layer TopK transcoders saved
    by our writer (the last writes Gemma's MLP output before its post-norm)."""
    name, _, hook_out = family.partition("-")
    model = tiny_model_dir(name)
    transcoders = tmp_path / "transcoders"
    save_topk_transcoders(transcoders, hook_in="mlp.hook_in", hook_out=hook_out or "hook_mlp_out")
    args = parser().parse_args(
        [
            "trace",
            "The cat saw the house in the year 17",
            *("--model", str(model), "--transcoders", str(transcoders)),
            *("--out", str(tmp_path / "out"), "--device", "cpu"),
        ]
    )
    assert args.func(args) == 0
    graph = json.loads((tmp_path / "out" / "graph.json").read_text())
    validate_graph_json(graph)
    kinds = {node["feature_type"] for node in graph["nodes"]}
    assert {"cross layer transcoder", "logit", "embedding"} <= kinds, kinds
    report = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert 0 <= report["replacement_score"] <= 1 and report["n_edges"] == len(graph["links"])


def test_trace_store_modes_write_the_same_pruned_graph(saved, tmp_path):
    """--store influential (the default) keeps only the pruned graph's rows; graph.json is the
    same as from the full graph."""
    model, transcoders = saved
    graphs = {}
    for store in ("all", "influential"):
        args = parser().parse_args(
            [
                "trace",
                "The cat saw the house in the year 17 and the cat",
                *("--model", str(model), "--transcoders", str(transcoders)),
                *("--out", str(tmp_path / store), "--device", "cpu", "--store", store),
            ]
        )
        assert args.func(args) == 0
        graphs[store] = json.loads((tmp_path / store / "graph.json").read_text())
        report = json.loads((tmp_path / store / "trace.json").read_text())
        assert report["config"]["store"] == store
    full, streamed = graphs["all"], graphs["influential"]
    assert [n["node_id"] for n in full["nodes"]] == [n["node_id"] for n in streamed["nodes"]]
    links = {(lk["source"], lk["target"]): lk["weight"] for lk in full["links"]}
    assert links.keys() == {(lk["source"], lk["target"]) for lk in streamed["links"]}
    for lk in streamed["links"]:
        assert lk["weight"] == pytest.approx(
            links[(lk["source"], lk["target"])], rel=1e-4, abs=1e-6
        )


def test_trace_flags_are_the_graph_config_fields():
    """One flag per GraphConfig field, defaulting to the field's default."""
    args = parser().parse_args(["trace", "a prompt"])
    assert trace_cli.config_from_args(args, GraphConfig) == GraphConfig()
    args = parser().parse_args(
        ["trace", "a prompt", "--store", "all", "--no-skip-bos", "--edge-budget", "100"]
    )
    config = trace_cli.config_from_args(args, GraphConfig)
    assert (config.store, config.skip_bos, config.edge_budget) == ("all", False, 100)
    with pytest.raises(SystemExit):
        parser().parse_args(["trace", "a prompt", "--store", "some"])


def test_dashboards_cli(saved, tmp_path, capsys):
    model, transcoders = saved
    text = tmp_path / "text.txt"
    text.write_text("the cat saw the house in the year 1999. " * 200)
    args = parser().parse_args(
        [
            "dashboards",
            "--model",
            str(model),
            "--transcoders",
            str(transcoders),
            "--dataset",
            str(text),
            "--tokens",
            "2000",
            "--context-size",
            "32",
            "--out",
            str(tmp_path / "dash"),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    index = json.loads((tmp_path / "dash" / "index.json").read_text())
    assert sorted(index["dictionaries"]) == ["layer0", "layer1", "layer2"]
    assert index["dictionaries"]["layer1"]["n_tokens"] > 1000
    assert '"name": "layer2"' in capsys.readouterr().out


def test_serve_arguments():
    args = parser().parse_args(["serve", "somewhere"])
    assert (args.host, args.port, args.model, args.no_interventions) == (
        "127.0.0.1",
        8041,
        "embedded",
        False,
    )


def test_trace_dtype_budget_and_targets(saved, tmp_path, capsys):
    """--dtype bf16, --max-feature-nodes and a logit-difference plus a direction target."""
    import torch

    model, transcoders = saved
    direction = tmp_path / "direction.pt"
    torch.save(torch.ones(32), direction)
    args = parser().parse_args(
        [
            "trace",
            "The cat saw the house in the year 17",
            "--model",
            str(model),
            "--transcoders",
            str(transcoders),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--max-feature-nodes",
            "6",
            "--target",
            "logit-diff:5,9",
            "--target",
            f"direction:{direction}",
        ]
    )
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / "trace.json").read_text())
    assert report["dtype"] == "bfloat16" and report["n_active_features"] > 6
    data = json.loads((tmp_path / "out" / "graph.json").read_text())
    validate_graph_json(data)
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == 2 and "logit(" in logits[0]["clerp"]
    assert data["metadata"]["generation_settings"]["max_feature_nodes"] == 6
    features = {
        n["node_id"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"
    }
    assert len(features) <= 6
    bad = parser().parse_args(
        [
            "trace",
            "x",
            "--model",
            str(model),
            "--transcoders",
            str(transcoders),
            "--target",
            "feature:0:1",
        ]
    )
    with pytest.raises(Exception, match="not a graph target"):
        bad.func(bad)
