"""Percentile bootstrap intervals over prompts for per-prompt measurements."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Tensor:
    """Return `[n_boot, n]` indices drawn with replacement from `range(n)` (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=generator)


def percentile_interval(values: Tensor, level: float = 0.95) -> list[float]:
    """Return `[low, high]`, the central `level` percentile interval of `values [m]` (NaNs dropped;
    `[nan, nan]` when none is left)."""
    values = values.double().flatten()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2
    return [float(torch.quantile(values, tail)), float(torch.quantile(values, 1 - tail))]


def bootstrap_interval(
    statistic: Callable[[Tensor], Tensor | float], indices: Tensor, level: float = 0.95
) -> list[float]:
    """Return the percentile interval of `statistic(rows)` over the resamples `indices [n_boot, n]`
    (each row a resample of prompt indices)."""
    values = torch.tensor([float(statistic(rows)) for rows in indices])
    return percentile_interval(values, level)


def ratio_interval(num: Tensor, den: Tensor, indices: Tensor, level: float = 0.95) -> list[float]:
    """Interval of `mean(num) / mean(den)` over prompt resamples `indices [n_boot, n]`, from
    per-prompt `num [n]` and `den [n]` (vectorised)."""
    ratios = num.double()[indices].mean(1) / den.double()[indices].mean(1)
    return percentile_interval(ratios, level)
