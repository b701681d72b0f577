"""Ranking metrics against hand-computed values and scipy's Mann-Whitney U."""

from __future__ import annotations

import math

import pytest
import torch

from sparsecircuits.circuits.identify.metrics import (
    mean_ci,
    pr_auc,
    ranking_metrics,
    roc_auc,
    roc_curve,
    set_scores,
    top_k_mask,
)


def test_roc_auc_hand_example() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    truth = torch.tensor([True, False, True, False])
    # positive pairs (pos > neg): 0.9>0.8, 0.9>0.6, 0.7>0.6 -> 3 of 4
    assert roc_auc(scores, truth) == pytest.approx(0.75)
    fpr, tpr = roc_curve(scores, truth)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(0.75)


def test_roc_auc_ties_count_half_and_match_mann_whitney() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=generator).float()
    truth = torch.rand(40, generator=generator) < 0.3
    u = stats.mannwhitneyu(scores[truth].numpy(), scores[~truth].numpy()).statistic
    assert roc_auc(scores, truth) == pytest.approx(u / (int(truth.sum()) * int((~truth).sum())))
    fpr, tpr = roc_curve(scores, truth)
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(roc_auc(scores, truth))
    assert roc_auc(torch.zeros(6), torch.tensor([True, False] * 3)) == 0.5


def test_pr_auc_hand_example() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    truth = torch.tensor([True, False, True, False])
    # recall steps 0.5 at precision 1, 0.5 at precision 2/3
    assert pr_auc(scores, truth) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert pr_auc(torch.ones(4), truth) == pytest.approx(0.5)


def test_set_scores_and_specificity_f1() -> None:
    predicted = torch.tensor([True, True, False, False, False])
    truth = torch.tensor([True, False, True, False, False])
    s = set_scores(predicted, truth)
    assert (s.precision, s.recall, s.f1) == (0.5, 0.5, 0.5)
    spec = 2 / 3  # one false positive among three negatives
    assert s.f1_specificity == pytest.approx(2 * 0.5 * spec / (0.5 + spec))
    assert top_k_mask(torch.tensor([0.1, 0.9, 0.5]), 2).tolist() == [False, True, True]
    m = ranking_metrics(torch.tensor([0.9, 0.8, 0.7, 0.6, 0.1]), truth)
    assert m["precision"] == 0.5 and m["recall"] == 0.5


def test_mean_ci() -> None:
    mean, std, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == 1.0
    assert high - mean == pytest.approx(4.303 / math.sqrt(3))
    assert low == pytest.approx(2 * mean - high)
    assert mean_ci([0.5]) == (0.5, 0.0, 0.5, 0.5)
