"""Scoring a ranking of candidates (heads or head pairs) against a binary ground truth.

`scores [n]` rank the candidates (higher = more likely in the circuit); `truth [n]` is a bool
mask. Threshold sweeps follow §9.6 of the seed-methods reference: at a threshold the predicted
set S is every candidate scoring at least it; P = |S∩G|/|S|, R = TPR = |S∩G|/|G|,
FPR = |S\\G|/|U\\G|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError


def _check(scores: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    scores = scores.detach().double().flatten()
    truth = truth.detach().bool().flatten()
    if scores.shape != truth.shape:
        raise SparseCircuitsError(
            f"scores and ground truth differ in size ({scores.numel()} vs {truth.numel()})"
        )
    return scores, truth


def _sweep(scores: Tensor, truth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thresholds from the highest score down, one per distinct score (ties move together):
    `truth` as float64 `[n]`, and the true positives and the predicted count `[k]` at each."""
    order = torch.argsort(scores, descending=True)
    s, t = scores[order], truth[order].double()
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[1:] != s[:-1]
    return t, torch.cumsum(t, 0)[last_of_tie], torch.cumsum(torch.ones_like(t), 0)[last_of_tie]


def roc_curve(scores: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Return `(fpr [k], tpr [k])` from (0, 0) to (1, 1), one point per distinct score (ties
    move together)."""
    t, tp, predicted = _sweep(*_check(scores, truth))
    fp = predicted - tp
    n_pos, n_neg = max(float(t.sum()), 1e-12), max(float((1 - t).sum()), 1e-12)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fp / n_neg]), torch.cat([zero, tp / n_pos])


def roc_auc(scores: Tensor, truth: Tensor) -> float:
    """Return the area under the ROC curve (0.5 for a random ranking; NaN without both classes).

    Equals the probability that a random positive outscores a random negative, ties counting half.
    """
    scores, truth = _check(scores, truth)
    pos, neg = scores[truth], scores[~truth]
    if pos.numel() == 0 or neg.numel() == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def pr_auc(scores: Tensor, truth: Tensor) -> float:
    """Return the average precision: `Σ_k (R_k - R_{k-1}) P_k` over distinct score thresholds
    (equals the fraction of positives for a constant score; NaN without positives)."""
    scores, truth = _check(scores, truth)
    if not bool(truth.any()):
        return math.nan
    t, tp, predicted = _sweep(scores, truth)
    precision = tp / predicted
    recall = tp / t.sum()
    steps = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), recall]))
    return float((steps * precision).sum())


@dataclass(frozen=True)
class SetScores:
    """Precision, recall and F1 of one predicted set, and O'Neill's specificity-based "F1"."""

    precision: float
    recall: float
    f1: float
    f1_specificity: float


def set_scores(predicted: Tensor, truth: Tensor) -> SetScores:
    """Return the scores of the predicted set `predicted [n]` (bool) against `truth [n]` (bool).

    `f1_specificity = 2·TPR·(1−FPR)/(TPR + 1 − FPR)` is the quantity O'Neill & Bui's code calls
    F1: the harmonic mean of recall and specificity (not precision).
    """
    predicted, truth = predicted.bool().flatten(), truth.bool().flatten()
    tp = float((predicted & truth).sum())
    fp = float((predicted & ~truth).sum())
    n_pos, n_neg = float(truth.sum()), float((~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_pos if n_pos else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    specificity = 1 - fp / n_neg if n_neg else math.nan
    denom = recall + specificity
    f1_spec = 2 * recall * specificity / denom if denom else 0.0
    return SetScores(precision, recall, f1, f1_spec)


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Return the bool mask `[n]` of the `k` highest scores (ties broken by index)."""
    scores = scores.detach().flatten()
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores, descending=True, stable=True)
        mask[order[:k]] = True
    return mask


def best_f1_specificity(scores: Tensor, truth: Tensor) -> float:
    """Return the largest `f1_specificity` over all thresholds (O'Neill & Bui's "best F1")."""
    fpr, tpr = roc_curve(scores, truth)
    spec = 1 - fpr
    values = 2 * tpr * spec / (tpr + spec).clamp_min(1e-12)
    return float(values.max())


def ranking_metrics(scores: Tensor, truth: Tensor) -> dict[str, float]:
    """Return `roc_auc`, `pr_auc`, and `precision`, `recall`, `f1`, `f1_specificity` of the top
    |G| candidates (the ground truth's size), plus `best_f1_specificity`."""
    k = int(truth.bool().sum())
    at_k = set_scores(top_k_mask(scores, k), truth)
    return {
        "roc_auc": roc_auc(scores, truth),
        "pr_auc": pr_auc(scores, truth),
        "precision": at_k.precision,
        "recall": at_k.recall,
        "f1": at_k.f1,
        "f1_specificity": at_k.f1_specificity,
        "best_f1_specificity": best_f1_specificity(scores, truth),
    }


def mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """Return `(mean, std, low, high)` over `values`: a 95% Student-t interval of the mean
    (NaN values are dropped; the interval collapses to the mean for one value)."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan, math.nan, math.nan
    n = len(kept)
    mean = sum(kept) / n
    if n == 1:
        return mean, 0.0, mean, mean
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
    half = _t_975(n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def _t_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` degrees of freedom."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
             9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
             16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
             40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip
    if dof in table:
        return table[dof]
    # between tabulated values take the smaller dof: a slightly wider, conservative interval
    return table[max(d for d in table if d < dof)]
