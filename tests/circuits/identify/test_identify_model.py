"""End to end on a tiny GPT-2 whose circuit is planted: only two heads write to the residual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

PLANTED = {(0, 1), (1, 2)}  # (layer, head); every other head's W_O rows are zero


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with the embedded model's tokenizer (the task words are single
    tokens there); heads outside `PLANTED` write nothing, so patching them changes nothing."""
    import transformers

    from sparsecircuits.models.embedded import embedded_dir

    folder = tmp_path_factory.mktemp("planted-gpt2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_dir())
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
        initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    d_head = 32 // 4
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            for head in range(4):
                if (layer, head) not in PLANTED:
                    block.attn.c_proj.weight[head * d_head : (head + 1) * d_head] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_patching_and_attribution_patching_find_the_planted_heads(planted_model: Path) -> None:
    from sparsecircuits.circuits.identify.baselines import attribution_patching
    from sparsecircuits.circuits.identify.ground_truth import ground_truth_heads, patch_heads
    from sparsecircuits.circuits.identify.task_pairs import make_task_pairs
    from sparsecircuits.models import load_model

    adapter = load_model(planted_model, device="cpu")
    pairs = make_task_pairs("ioi", adapter.tokenizer, 12)
    result = patch_heads(adapter, pairs, batch_size=5)
    planted = torch.tensor([(i // 4, i % 4) in PLANTED for i in range(8)])
    assert torch.all(result.kl[~planted] < 1e-9)
    assert torch.all(result.kl[planted] > 0)
    assert torch.equal(ground_truth_heads(result, 0.01), planted)
    scores = attribution_patching(adapter, pairs, batch_size=5)
    assert torch.all(scores[~planted] == 0) and torch.all(scores[planted] != 0)


def test_cli_identify_end_to_end(planted_model: Path, tmp_path: Path, capsys) -> None:
    from sparsecircuits.cli import main

    out = tmp_path / "run"
    argv = ["identify", "ioi", "--out", str(out), "--model", str(planted_model)]
    argv += ["--transcoders", "none", "--seeds", "3", "--n-prompts", "16", "--threshold", "0.01"]
    argv += ["--epochs", "60", "--latents", "32", "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ground_truth"]["heads"] == ["0.1", "1.2"]
    assert summary["n_candidate_edges"] == 16 and summary["ground_truth"]["n_edges"] == 1
    # heads that write nothing get one code on every prompt, so they never outscore the planted
    # ones (recovery itself is tested on synthetic head outputs in test_identify_planted)
    assert summary["node_roc_auc"] >= 0.5
    low, high = summary["node_roc_auc_ci"]
    assert low <= summary["node_roc_auc"] <= high
    assert len(summary["per_seed"]) == 3
    assert summary["baselines"]["attribution_patching"]["node_roc_auc"] == 1.0
    assert "transcoder_attribution" not in summary["baselines"]
    assert (out / "roc.png").stat().st_size > 0 and (out / "roc_edges.png").stat().st_size > 0
    assert "node_roc_auc" in capsys.readouterr().out


def test_cli_rejects_a_threshold_out_of_range(tmp_path: Path, capsys) -> None:
    from sparsecircuits.cli import main

    assert main(["identify", "ioi", "--out", str(tmp_path), "--threshold", "2"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_cli_names_the_effects_when_the_threshold_keeps_no_head(
    planted_model: Path, tmp_path: Path, capsys
) -> None:
    from sparsecircuits.cli import main

    argv = ["identify", "greater-than", "--out", str(tmp_path), "--model", str(planted_model)]
    # on these six train-split prompts the largest normalised effect is head 0.1's, 0.989
    argv += ["--transcoders", "none", "--n-prompts", "6", "--threshold", "0.999", "--quiet"]
    argv += ["--split", "train"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--threshold" in err and "largest normalised effects: " in err
