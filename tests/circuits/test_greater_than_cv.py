"""Cross-validation helpers of the greater-than case study: disjoint halves, slot-matched random
baselines, bootstrap intervals."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import torch

from sparsecircuits.circuits.case_studies.greater_than_cv import (
    draw_at_slots,
    slot_candidates,
    split_prompts,
)
from sparsecircuits.circuits.nodes import FeatureNode
from sparsecircuits.evaluation.intervals import (
    bootstrap_indices,
    bootstrap_interval,
    percentile_interval,
    ratio_interval,
)
from sparsecircuits.tasks.common import TaskPrompts


def _prompts(texts: list[str]) -> TaskPrompts:
    n = len(texts)
    return TaskPrompts(
        input_ids=torch.arange(n)[:, None].repeat(1, 3),
        last_pos=torch.full((n,), 2),
        texts=texts,
        answers=[f">{i}" for i in range(n)],
        yy=torch.arange(n),
        year_ids=torch.arange(100),
    )


def test_split_is_disjoint_by_text_and_covers_every_prompt():
    texts = [f"prompt {i % 13}" for i in range(40)]  # repeated texts
    prompts = _prompts(texts)
    for seed in range(5):
        selection, evaluation = split_prompts(prompts, seed)
        assert sorted(selection + evaluation) == list(range(40))
        assert not {texts[i] for i in selection} & {texts[i] for i in evaluation}
        assert abs(len({texts[i] for i in selection}) - len({texts[i] for i in evaluation})) <= 1
        half = prompts.take(torch.tensor(evaluation))
        assert half.texts == [texts[i] for i in evaluation]
        assert torch.equal(half.yy, prompts.yy[evaluation])
        assert torch.equal(half.input_ids, prompts.input_ids[evaluation])
    assert split_prompts(prompts, 0) == split_prompts(prompts, 0)
    assert split_prompts(prompts, 0) != split_prompts(prompts, 1)


def test_baseline_draws_only_at_the_selected_slots():
    generator = torch.Generator().manual_seed(0)
    acts = {
        layer: torch.relu(torch.randn(5, 6, 40, generator=generator) - 1.0) for layer in (0, 1, 2)
    }
    state = SimpleNamespace(feature_acts=acts)
    nodes = [FeatureNode(1, 3, 7), FeatureNode(1, 3, 9), FeatureNode(2, 5, 0)]
    slots = {(1, 3), (2, 5)}
    for active in (True, False):
        candidates = slot_candidates(state, nodes, active=active)
        assert set(candidates) == slots
        rng = random.Random(0)
        for _ in range(50):
            drawn = draw_at_slots(nodes, candidates, rng)
            assert len(drawn) == len(nodes)
            assert {(n.layer, n.pos) for n in drawn} == slots
            assert sum((n.layer, n.pos) == (1, 3) for n in drawn) == 2
            assert not {(n.layer, n.pos, n.feature) for n in drawn} & {
                (n.layer, n.pos, n.feature) for n in nodes
            }
            assert len({(n.layer, n.pos, n.feature) for n in drawn}) == len(drawn)
            if active:
                assert all(acts[n.layer][:, n.pos, n.feature].ne(0).any() for n in drawn)
    uniform = slot_candidates(state, nodes, active=False)
    assert len(uniform[(1, 3)]) == 38 and len(uniform[(2, 5)]) == 39


def test_bootstrap_intervals():
    boot = bootstrap_indices(20, 500, seed=3)
    assert boot.shape == (500, 20) and torch.equal(boot, bootstrap_indices(20, 500, seed=3))
    values = torch.linspace(0, 1, 20)
    low, high = bootstrap_interval(lambda rows: values[rows].mean(), boot)
    assert low < float(values.mean()) < high and high - low < 0.5
    num, den = torch.rand(20) + 1, torch.rand(20) + 2
    low, high = ratio_interval(num, den, boot)
    assert low < float(num.mean() / den.mean()) < high
    assert all(math.isnan(x) for x in percentile_interval(torch.tensor([float("nan")])))
    assert percentile_interval(torch.ones(3)) == [1.0, 1.0]
