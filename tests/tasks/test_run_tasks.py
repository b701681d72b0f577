from __future__ import annotations

import json

import pytest
import torch

from sparsecircuits.models.embedded import embedded_dir
from sparsecircuits.tasks import run_tasks


@pytest.mark.parametrize("split", ["dev", "test"])
def test_run_tasks_on_tiny_random_model(tokenizer, split):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(cfg).eval()
    res = run_tasks(
        lambda x: model(input_ids=x).logits, tokenizer, n=8, split=split, prose_contexts=4
    )
    assert set(res) == {"greater_than", "ioi", "docstring", "prose_loss"}
    assert set(res["greater_than"]) == {"prob_diff", "n"}
    assert set(res["ioi"]) == {"logit_diff", "accuracy", "n"}
    assert set(res["docstring"]) == {"accuracy", "n"}
    assert -1.0 <= res["greater_than"]["prob_diff"] <= 1.0
    assert res["ioi"]["n"] == 8 and 0.0 <= res["ioi"]["accuracy"] <= 1.0
    # a random model is near-uniform: prose loss close to log(vocab)
    assert abs(res["prose_loss"] - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 1.0


@pytest.fixture(scope="module")
def shipped_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(embedded_dir()).eval()
    return (lambda x: model(input_ids=x).logits), AutoTokenizer.from_pretrained(embedded_dir())


@pytest.fixture(scope="module")
def shipped_results(shipped_model) -> dict:
    """The shipped model on the dev split (n = 100, seed 0)."""
    forward, tok = shipped_model
    return run_tasks(forward, tok, n=100, seed=0, split="dev", prose_contexts=50)


@pytest.mark.slow
def test_shipped_model_loads_and_does_greater_than(shipped_results):
    assert shipped_results["greater_than"]["prob_diff"] >= 0.6
    assert shipped_results["prose_loss"] < 4.0


@pytest.mark.slow
def test_shipped_model_meets_the_docstring_and_ioi_logit_diff_targets(shipped_results):
    assert shipped_results["docstring"]["accuracy"] >= 0.6
    assert shipped_results["ioi"]["logit_diff"] >= 2.5


@pytest.mark.slow
@pytest.mark.xfail(
    reason="known miss of the dev IOI accuracy target (87% < 90%); see MODEL_CARD.md",
    strict=True,
)
def test_shipped_model_meets_the_ioi_accuracy_target(shipped_results):
    assert shipped_results["ioi"]["accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("split", ["dev", "test"])
def test_shipped_model_card_numbers_are_reproduced(shipped_model, split):
    """eval_results.json (the model card's dev and test columns) is what run_tasks measures."""
    forward, tok = shipped_model
    recorded = json.loads((embedded_dir() / "eval_results.json").read_text())[split]
    res = run_tasks(forward, tok, n=recorded["greater_than"]["n"], split=split, prose_contexts=8)
    assert res["greater_than"]["prob_diff"] == pytest.approx(
        recorded["greater_than"]["prob_diff"], abs=1e-4
    )
    for key in ("logit_diff", "accuracy"):
        assert res["ioi"][key] == pytest.approx(recorded["ioi"][key], abs=1e-4)
    assert res["docstring"]["accuracy"] == pytest.approx(
        recorded["docstring"]["accuracy"], abs=1e-4
    )
