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


# Numbers of the summary without an interval: settings and counts, the empirical share of random
# draws reaching the top drop, and the per-draw drops (themselves the baseline's distribution).
NO_INTERVAL = {
    "n_prompts",
    "n_selection_prompts",
    "n_evaluation_prompts",
    "features_vs_neurons_layer",
    "random10_at_least_top10",
    "runtime_s",
}
# Descriptive parts (selection half, one prompt's path graph) and the in-sample block.
NOT_MEASURED = {"top_features", "top_heads", "node_checks", "graph_verification", "top_paths"}


def _numbers_without_interval(value, path=""):
    """Paths of floats in `value` with no sibling `<key>_ci = [low, high]`."""
    missing = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in NO_INTERVAL or key in NOT_MEASURED or key in ("config", "in_sample"):
                continue
            if isinstance(item, float) and not key.endswith("_ci"):
                ci = value.get(f"{key}_ci")
                if not (isinstance(ci, list) and len(ci) == 2):
                    missing.append(f"{path}{key}")
            elif isinstance(item, dict):
                missing += _numbers_without_interval(item, f"{path}{key}.")
    return missing


@pytest.mark.slow
def test_greater_than_case_study_runs(embedded, tmp_path):
    import json

    from sparsecircuits.circuits.case_studies.greater_than import (
        GreaterThanConfig,
        run_greater_than,
    )

    model, _ = embedded
    cfg = GreaterThanConfig(
        n_prompts=16,
        max_k=2,
        corpus_contexts=4,
        random_draws=4,
        neuron_random_draws=2,
        bootstrap=50,
        in_sample_random_draws=1,
        path_iters=2,
        path_branches=5,
    )
    summary = run_greater_than(
        cfg, tmp_path, adapter=model.adapter, transcoders=model.transcoders, quiet=True
    )
    saved = json.loads((tmp_path / "summary.json").read_text())
    headline = (
        "prob_diff_clean",
        "prob_diff_replacement",
        "top10_ablation_drop",
        "random10_ablation_drop",
    )
    for key in headline:
        assert isinstance(saved[key], float)
        low, high = saved[f"{key}_ci"]
        assert low <= saved[key] <= high
        assert isinstance(saved["in_sample"][key], float)
    assert _numbers_without_interval(saved) == []
    assert saved["n_selection_prompts"] + saved["n_evaluation_prompts"] == 16
    assert saved["attribution_vs_intervention"]["max_rel_error"] < 1e-3
    assert saved["in_sample"]["attribution_vs_intervention"]["max_rel_error"] < 1e-3
    assert set(saved["features_vs_neurons"]) == {"1", "2"}
    assert {"features_ci", "neurons_ci", "random_features", "random_neurons"} <= set(
        saved["features_vs_neurons"]["2"]
    )
    assert len(saved["random10_drops"]) == 4
    assert "top10_ablation_drop_ci" in saved["swapped_halves"]
    assert (tmp_path / "report.md").read_text().startswith("# Greater-than")
    assert summary["top10_ablation_drop"] > summary["random10_ablation_drop"]
