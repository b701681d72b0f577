"""Learning-rate schedule: linear warmup, plateau, then linear or cosine decay."""

from __future__ import annotations

import math

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.training.config import TrainConfig

DECAYS = ("linear", "cosine", "constant")


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Return the factor on the base learning rate at optimiser step `step` (0-based)."""
    if cfg.decay not in DECAYS:
        raise SparseCircuitsError(f"unknown lr decay {cfg.decay!r}; use one of {', '.join(DECAYS)}")
    total = cfg.total_steps
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    start = max(cfg.warmup_steps, int(cfg.decay_start * total))
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total - start))
    floor = cfg.final_lr_fraction
    if cfg.decay == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
