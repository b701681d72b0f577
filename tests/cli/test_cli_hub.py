"""`trace --model/--transcoders hf://…` against a local hub cache with HF_HUB_OFFLINE=1, the
offline error, and `sparsecircuits presets`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparsecircuits
from hubkit import add_folder, use_offline_cache
from sparsecircuits.circuits.graph.neuronpedia import validate_graph_json
from sparsecircuits.cli import main
from sparsecircuits.dictionaries import DictionaryConfig, make, save_dictionary
from sparsecircuits.dictionaries.presets import PRESETS
from testkit import save_topk_transcoders

PROMPT = "The cat saw the house in the year 17"


@pytest.fixture(scope="module")
def saved_sets(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 and two transcoder sets for it saved in our format: per-layer and a CLT."""
    model = tiny_model_dir("gpt2")
    root = tmp_path_factory.mktemp("hub-sets")
    save_topk_transcoders(root / "plt", hook_in="hook_mlp_in", hook_out="hook_mlp_out")
    clt = DictionaryConfig(
        architecture="topk",
        kind="clt",
        d_in=32,
        d_sae=40,
        k=4,
        n_layers=3,
        hook_in="blocks.{layer}.hook_mlp_in",
        hook_out="blocks.{layer}.hook_mlp_out",
    )
    save_dictionary(make(clt), root / "clt")
    return model, root


def _trace(tmp_path, model, transcoders, capsys):  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    argv = ["trace", PROMPT, "--model", str(model), "--transcoders", transcoders]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    graph = json.loads((out / "graph.json").read_text())
    validate_graph_json(graph)
    assert "error" not in capsys.readouterr().err
    return graph


def test_trace_with_per_layer_transcoders_from_the_hub(saved_sets, tmp_path, monkeypatch, capsys):
    model, root = saved_sets
    cache = use_offline_cache(tmp_path, monkeypatch)
    add_folder(cache, "tiny-org/tiny-gpt2-transcoders", root / "plt")
    from_hub = _trace(tmp_path / "hub", model, "hf://tiny-org/tiny-gpt2-transcoders", capsys)
    from_disk = _trace(tmp_path / "disk", model, str(root / "plt"), capsys)
    assert from_hub["nodes"] == from_disk["nodes"] and from_hub["links"] == from_disk["links"]


def test_trace_with_a_clt_and_the_model_from_the_hub(saved_sets, tmp_path, monkeypatch, capsys):
    model, root = saved_sets
    cache = use_offline_cache(tmp_path, monkeypatch)
    add_folder(cache, "tiny-org/sets", root / "clt", prefix="clt/topk-k4")
    add_folder(cache, "tiny-org/tiny-gpt2", model)
    graph = _trace(tmp_path, "hf://tiny-org/tiny-gpt2", "hf://tiny-org/sets/clt/topk-k4", capsys)
    layers = {
        node["layer"] for node in graph["nodes"] if node["feature_type"] == "cross layer transcoder"
    }
    assert layers, "the CLT's features are in the graph"
    from sparsecircuits.models import load_model

    assert load_model("tiny-org/tiny-gpt2", device="cpu").n_layers == 3  # a plain hub id too


def test_missing_hub_files_offline_exit_2_with_one_line(saved_sets, tmp_path, monkeypatch):
    """Through the environment only (a fresh process): HF_HUB_OFFLINE=1, an empty HF_HUB_CACHE."""
    model, _ = saved_sets
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": str(Path(sparsecircuits.__file__).parents[1]),
    }
    code = "import sys; from sparsecircuits.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["trace", PROMPT, "--model", str(model), "--transcoders", "hf://tiny-org/absent-set"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv, "--out", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hf://tiny-org/absent-set: "), lines
    assert str(cache) in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "hf download tiny-org/absent-set --include '*.json'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_model_offline_is_a_user_error(tmp_path, monkeypatch, capsys):
    use_offline_cache(tmp_path, monkeypatch)
    assert main(["trace", PROMPT, "--model", "hf://tiny-org/absent-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hf://tiny-org/absent-model: missing from the Hugging Face cache")
    assert "config.json, tokenizer.json, model.safetensors" in err and "\n" not in err


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert name in out and preset.repo_id in out
    assert main(["presets", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["name"] for row in rows] == list(PRESETS)
