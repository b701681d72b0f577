"""On the shipped model with its shipped transcoders (skipped until both exist)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sparsecircuits.models.embedded as embedded_pkg
from sparsecircuits.circuits import attribution as A
from sparsecircuits.circuits.case_studies.greater_than import greater_than_target
from sparsecircuits.circuits.nodes import FeatureNode, HeadNode
from sparsecircuits.circuits.verify import ablation_effects, max_relative_error

EMBEDDED = Path(embedded_pkg.__file__).resolve().parent
HAVE = (EMBEDDED / "model.safetensors").is_file() and (EMBEDDED / "transcoders").is_dir()
pytestmark = pytest.mark.skipif(not HAVE, reason="embedded model or its transcoders not built yet")


@pytest.fixture(scope="module")
def embedded():
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model
    from sparsecircuits.tasks.greater_than import make_greater_than_prompts

    adapter = load_model("embedded", device="cpu")
    model = ReplacementModel(adapter, load_transcoders("embedded", device="cpu"))
    prompts = make_greater_than_prompts(adapter.tokenizer, 6, seed=1)
    return model, prompts


def test_replacement_is_exact_and_attribution_equals_ablation(embedded):
    model, prompts = embedded
    state = model.run(prompts.input_ids)
    torch.testing.assert_close(
        state.logits, model.adapter.forward(prompts.input_ids), atol=1e-4, rtol=1e-4
    )
    target = greater_than_target(model, state, prompts.yy, prompts.year_ids, prompts.last_pos)
    attr = A.attribute(model, state, target, mode="linear")
    nodes = [n for n, _ in attr.top_features(8, row=0)] + [h for h, _ in attr.top_heads(4, row=0)]
    predicted = torch.tensor([attr.node_value(n, 0) for n in nodes])
    effects = ablation_effects(model, state, target, nodes, row=0, freeze=True, features="linear")
    assert max_relative_error(predicted, effects) < 1e-3
    assert all(isinstance(n, (FeatureNode, HeadNode)) for n in nodes)


@pytest.mark.slow
def test_greater_than_case_study_runs(embedded, tmp_path):
    import json

    from sparsecircuits.circuits.case_studies.greater_than import (
        GreaterThanConfig,
        run_greater_than,
    )

    model, _ = embedded
    cfg = GreaterThanConfig(
        n_prompts=16, max_k=3, corpus_contexts=4, random_draws=1, path_iters=2, path_branches=5
    )
    summary = run_greater_than(
        cfg, tmp_path, adapter=model.adapter, transcoders=model.transcoders, quiet=True
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in (
        "prob_diff_clean",
        "prob_diff_replacement",
        "top10_ablation_drop",
        "random10_ablation_drop",
    ):
        assert isinstance(saved[key], float)
    assert saved["attribution_vs_intervention"]["max_rel_error"] < 1e-3
    assert set(saved["features_vs_neurons"]) == {"1", "2", "3"}
    assert (tmp_path / "report.md").read_text().startswith("# Greater-than")
    assert summary["top10_ablation_drop"] > summary["random10_ablation_drop"]
