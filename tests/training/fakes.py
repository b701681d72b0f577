"""A deterministic in-memory activation source for trainer tests."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch


class SyntheticStore:
    """Yields `{hook_in: x, hook_out: f(x)}` batches; batch i depends only on (seed, i).

    `x` is sparse-ish low-rank data so a dictionary can actually learn it. `nan_at` makes batch
    `nan_at` contain NaN; `signal_at` sends SIGTERM to this process while producing that batch.
    """

    def __init__(
        self,
        d: int = 16,
        batch: int = 64,
        seed: int = 0,
        hook_in: str = "in",
        hook_out: str = "out",
        nan_at: int | None = None,
        signal_at: int | None = None,
    ):
        self.d, self.batch, self.seed = d, batch, seed
        self.hook_in, self.hook_out = hook_in, hook_out
        self.nan_at, self.signal_at = nan_at, signal_at
        self.position = 0
        g = torch.Generator().manual_seed(1234)
        self.atoms = torch.randn(4 * d, d, generator=g)
        self.mix = torch.randn(d, d, generator=g) / d**0.5

    def next_batch(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        codes = torch.rand(self.batch, self.atoms.shape[0], generator=g)
        codes = codes * (codes > 0.97)
        x = codes @ self.atoms
        if self.position == self.nan_at:
            x[0, 0] = float("nan")
        if self.position == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.position += 1
        y = torch.tanh(x @ self.mix)
        return {self.hook_in: x, self.hook_out: y}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
