"""Training configuration."""

from __future__ import annotations

from dataclasses import dataclass


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
