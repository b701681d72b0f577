"""The frozen-vs-live faithfulness measurement (scripts/crosscheck/attribution_faithfulness.py)
on the embedded model: its frozen ablations must reproduce the edges it compares with, or its live
correlations would measure the script rather than the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsecircuits.models.embedded import embedded_dir
from testkit import load_script

EMBEDDED = embedded_dir()
HAVE = (EMBEDDED / "model.safetensors").is_file() and (EMBEDDED / "transcoders").is_dir()
SCRIPT = (
    Path(__file__).resolve().parents[3] / "scripts" / "crosscheck" / "attribution_faithfulness.py"
)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE, reason="embedded model or its transcoders not built yet")
def test_frozen_ablations_reproduce_the_edges_and_live_effects_follow_them():
    from sparsecircuits.circuits.replacement import ReplacementModel

    script = load_script(SCRIPT)
    replacement = ReplacementModel.load("embedded", "embedded", device="cpu")
    (kind, ids), *_ = script.heldout_prompts(replacement, 1)
    assert kind == "greater_than"
    edges = script.measure(replacement, ids, n_sources=6, seed=0)
    assert edges and {e["kind"] for e in edges} <= {"feature->feature", "feature->logit"}
    assert all(e["attribution"] != 0.0 for e in edges)
    records = {(r["edge_type"], r["layer_distance"]): r for r in script.summarise(edges)}
    pooled = records[("feature->feature", "all")]
    assert pooled["n_edges"] == sum(e["kind"] == "feature->feature" for e in edges)
    assert pooled["frozen_pearson"] > 0.99999 and pooled["frozen_max_rel_err"] < 1e-3
    # live effects are not frozen ones, but adjacent-layer edges still predict them
    assert 0.2 < records[("feature->feature", "1")]["pearson"] < 1.0
    assert {int(r[1]) for r in records if r[1] != "all"} <= {1, 2, 3, 4}


def test_spearman_ranks():
    import torch

    script = load_script(SCRIPT)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert script.spearman(x, x**3) == pytest.approx(1.0)
    assert script.spearman(x, -x) == pytest.approx(-1.0)
