"""The pieces of the GPU plan (scripts/device/) that run here: the Gemma-2-2B-shaped benchmark
model's builder, train-step cases with a TopK k, graph lengths, and (SC_DEVICE_DRYRUN=1, after
scripts/device/prepare.sh) the whole device run at toy size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from benchmarks import bench_graph, bench_train_step, scale_model

REPO = Path(__file__).resolve().parents[1]


def test_gemma2_width_model_is_written_once_and_loads(tmp_path, monkeypatch):
    small = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": 600,
        "n_layers": 26,
    }
    monkeypatch.setattr(scale_model, "GEMMA2_2B", small)
    folder = scale_model.ensure_gemma2_width_model(tmp_path, n_layers=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma2" and config["num_hidden_layers"] == 2
    assert (config["hidden_size"], config["num_key_value_heads"], config["head_dim"]) == (64, 2, 16)
    assert config["final_logit_softcapping"] == 30.0 and config["tie_word_embeddings"]
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    weights = next(folder.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert scale_model.ensure_gemma2_width_model(tmp_path, n_layers=2) == folder
    assert weights.stat().st_mtime_ns == stamp

    from sparsecircuits.models import load_model

    adapter = load_model(folder, device="cpu")
    assert adapter.n_layers == 2 and adapter.hook_dim("blocks.1.hook_mlp_out") == 64


def test_train_step_cases_take_a_topk_k():
    grid = bench_train_step.configs(False, "topk:16384:64,topk:65536:64")
    assert [(c["kind"], c["d_sae"], c["k"]) for c in grid] == [
        ("transcoder", 16384, 64),
        ("sae", 16384, 64),
        ("transcoder", 65536, 64),
        ("sae", 65536, 64),
    ]
    plain = bench_train_step.configs(False, "topk:4096")
    assert {c["k"] for c in plain} == {32, 128} and {c["d_sae"] for c in plain} == {4096}


def test_graph_lengths_are_chosen_and_capped_by_the_context():
    assert bench_graph.lengths(False, 128, [32, 256]) == [32, 128]
    assert bench_graph.lengths(True, 128) == [17]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SC_DEVICE_DRYRUN") != "1", reason="set SC_DEVICE_DRYRUN=1 (minutes)"
)
def test_device_run_at_toy_size_on_the_cpu():
    if not (REPO / ".device" / "v3" / "corpus_train.jsonl.xz").is_file():
        pytest.skip("run scripts/device/prepare.sh first")
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "device" / "dryrun.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = [
        json.loads(line)
        for line in (REPO / "out" / "device-dryrun" / "results" / "stages.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [s["stage"] for s in stages] == [
        "model",
        "tests",
        "transcoders",
        "train_step",
        "graph",
        "end_to_end",
        "overlap",
        "train_step_bf16",
    ]
    assert all(s["rc"] == 0 for s in stages)
