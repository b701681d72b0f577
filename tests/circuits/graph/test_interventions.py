"""Interventions on the replacement model: exactness, direct effects = graph edges, generation."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.edits import FeatureEdit
from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
from sparsecircuits.circuits.interventions import InterventionEngine, intervene
from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.errors import SparseCircuitsError
from testkit import topk_transcoders

PROMPT = "The dog found two books in the year 1999"


@pytest.fixture(scope="module", params=["gpt2", "gemma2"])
def rm(tiny_model_dir, request):
    from sparsecircuits.models import load_model

    adapter = load_model(tiny_model_dir(request.param), device="cpu")
    return ReplacementModel(adapter, topk_transcoders(adapter, d_sae=48, k=6))


def test_no_intervention_reproduces_the_model_and_its_greedy_continuation(rm):
    ids = rm.tokenize(PROMPT)
    result = intervene(rm, PROMPT, [], n_tokens=4, top_k=5)
    torch.testing.assert_close(result.logits, rm.adapter.forward(ids)[0], atol=1e-4, rtol=1e-4)
    expected = ids
    for _ in range(4):
        expected = torch.cat(
            [expected, rm.adapter.forward(expected)[:, -1].argmax(-1, keepdim=True)], dim=1
        )
    assert result.continuation_ids == expected[0, ids.shape[1] :].tolist()
    assert result.top[0].token_id == int(result.logits[-1].argmax())
    assert sum(p.prob for p in result.top) <= 1.0 + 1e-6 and len(result.top) == 5


def test_frozen_ablation_of_a_feature_equals_its_graph_edges_to_logits(rm):
    graph = build_graph(rm, PROMPT, GraphConfig(row_mass=1.0, max_edges_per_row=None, store="all"))
    dense = graph.adjacency.to_dense()
    # graph edges reach the logits before Gemma's final soft-cap: undo it
    cap = getattr(rm.adapter.model.config, "final_logit_softcapping", None)

    def uncapped(logits):
        return logits if cap is None else cap * torch.atanh(logits / cap)

    baseline = uncapped(intervene(rm, PROMPT, [], freeze=True).logits[-1].double())
    checked = 0
    for i in range(0, graph.n_features, max(1, graph.n_features // 8)):
        layer, pos, feat = graph.active_features[i].tolist()
        ablated = uncapped(
            intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "ablate")], freeze=True)
            .logits[-1]
            .double()
        )
        for k, token in enumerate(graph.logit_ids.tolist()):
            change = (baseline[token] - baseline.mean()) - (ablated[token] - ablated.mean())
            assert float(change) == pytest.approx(float(dense[graph.logit_index(k), i]), abs=2e-5)
            checked += 1
    assert checked >= 8


def test_modes_agree_and_change_predictions(rm):
    graph = build_graph(rm, PROMPT)
    layer, pos, feat = graph.active_features[-1].tolist()
    act = float(graph.activations[-1])
    base = intervene(rm, PROMPT).logits
    same = intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "scale", 1.0)]).logits
    torch.testing.assert_close(same, base)
    ablate = intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "ablate")]).logits
    zero = intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "scale", 0.0)]).logits
    set_value = intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "set", act)]).logits
    torch.testing.assert_close(ablate, zero)
    torch.testing.assert_close(set_value, base, atol=1e-5, rtol=1e-5)
    one = intervene(rm, PROMPT, [FeatureEdit(layer, pos, feat, "set", 50.0)]).logits
    torch.testing.assert_close(one[:pos], base[:pos])  # causal: earlier positions unchanged
    assert not torch.allclose(one[pos], base[pos], atol=1e-3)
    everywhere = intervene(rm, PROMPT, [FeatureEdit(layer, None, feat, "set", 50.0)]).logits
    assert not torch.allclose(everywhere[0], base[0], atol=1e-3)


def test_sampling_is_seeded(rm):
    a = intervene(rm, PROMPT, n_tokens=5, temperature=1.0, seed=3)
    b = intervene(rm, PROMPT, n_tokens=5, temperature=1.0, seed=3)
    assert a.continuation_ids == b.continuation_ids and len(a.continuation_ids) == 5


def test_bad_requests_raise(rm):
    with pytest.raises(SparseCircuitsError, match="no transcoder"):
        intervene(rm, PROMPT, [FeatureEdit(9, 1, 0)])
    with pytest.raises(SparseCircuitsError, match="out of range"):
        intervene(rm, PROMPT, [FeatureEdit(0, 1, 10_000)])
    with pytest.raises(SparseCircuitsError, match="outside the prompt"):
        intervene(rm, PROMPT, [FeatureEdit(0, 99, 0)])
    with pytest.raises(SparseCircuitsError, match="mode"):
        intervene(rm, PROMPT, [FeatureEdit(0, 1, 0, "boost")])


def test_engine_answers_viewer_requests(rm):
    engine = InterventionEngine(rm)
    answer = engine.run(
        {
            "prompt": PROMPT,
            "interventions": [
                {"layer": 0, "position": 2, "feature": 3, "mode": "set", "value": 20}
            ],
            "n_tokens": 2,
        }
    )
    assert set(answer) == {"prompt_tokens", "baseline", "intervened"}
    assert (
        len(answer["baseline"]["top"]) == 10 and len(answer["intervened"]["continuation_ids"]) == 2
    )
    assert answer["baseline"]["top"] != answer["intervened"]["top"]
    with pytest.raises(SparseCircuitsError, match="prompt"):
        engine.run({"interventions": []})
    with pytest.raises(SparseCircuitsError, match="bad intervention"):
        engine.run({"prompt": "x", "interventions": [{"layer": "a"}]})
