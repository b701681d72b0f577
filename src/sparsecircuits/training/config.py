"""Training configuration."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsecircuits.errors import SparseCircuitsError


@dataclass
class TrainConfig:
    """How dictionaries are optimised. `lr=None` is sparsify's `2e-4 / sqrt(d_sae / 2**14)` per
    dictionary; the schedule warms up for `warmup_steps`, holds until `decay_start` (a fraction of
    all steps), then decays "linear" (to `lr * final_lr_fraction`), "cosine" or not ("constant").
    With an output folder a checkpoint is written every `checkpoint_every` steps (0: off) and
    whenever `checkpoint_minutes` have passed since the last one (0: off); `keep_checkpoints` of
    the run's most recent ones are kept."""

    total_tokens: int = 2_000_000
    batch_tokens: int = 4096
    lr: float | None = None
    warmup_steps: int = 50
    decay: str = "linear"
    decay_start: float = 0.8
    final_lr_fraction: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    dead_tokens: int = 200_000
    seed: int = 0
    checkpoint_every: int = 0
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 2
    log_every: int = 10
    wandb_project: str | None = None
    quiet: bool = False

    @property
    def total_steps(self) -> int:
        """Number of optimiser steps: `total_tokens // batch_tokens` (at least 1)."""
        return max(1, self.total_tokens // self.batch_tokens)

    def __post_init__(self) -> None:
        """Raise `SparseCircuitsError` naming the first setting out of its range."""
        lr_ok = self.lr is None or (math.isfinite(self.lr) and self.lr > 0)
        checks = (
            ("total_tokens", self.total_tokens >= 1, "at least 1"),
            ("batch_tokens", self.batch_tokens >= 1, "at least 1"),
            ("lr", lr_ok, "a positive number (or unset for the width's default)"),
            ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
            ("decay_start", 0 <= self.decay_start <= 1, "a fraction in [0, 1]"),
            ("final_lr_fraction", 0 <= self.final_lr_fraction <= 1, "a fraction in [0, 1]"),
            ("adam_beta1", 0 <= self.adam_beta1 < 1, "in [0, 1)"),
            ("adam_beta2", 0 <= self.adam_beta2 < 1, "in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "0 (off) or more"),
            # 0 would count a latent dead in the step it fired (`tokens since fired >= 0`)
            (
                "dead_tokens",
                self.dead_tokens >= 1,
                "at least 1 (aux_k_coefficient 0 turns AuxK off)",
            ),
            ("checkpoint_every", self.checkpoint_every >= 0, "0 (off) or more"),
            ("checkpoint_minutes", self.checkpoint_minutes >= 0, "0 (off) or more"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("log_every", self.log_every >= 1, "at least 1"),
        )
        for name, ok, wanted in checks:
            if not ok:
                raise SparseCircuitsError(
                    f"training setting {name}={getattr(self, name)!r} is out of range; it must be {wanted}"
                )
