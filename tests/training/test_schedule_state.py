"""LR schedule shape and the pickle-free state round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.training import TrainConfig
from sparsecircuits.training.schedule import lr_multiplier
from sparsecircuits.training.state_io import load_state, save_state


def test_warmup_plateau_linear_decay() -> None:
    cfg = TrainConfig(total_tokens=100 * 10, batch_tokens=10, warmup_steps=10, decay_start=0.8)
    values = [lr_multiplier(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[50] == 1.0
    assert values[99] < 0.1 and all(a >= b for a, b in zip(values[80:], values[81:], strict=False))


def test_cosine_and_unknown_decay() -> None:
    cfg = TrainConfig(
        total_tokens=100, batch_tokens=1, warmup_steps=0, decay="cosine", decay_start=0.0
    )
    assert lr_multiplier(0, cfg) == pytest.approx(1.0)
    assert lr_multiplier(50, cfg) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(SparseCircuitsError, match="unknown lr decay"):
        lr_multiplier(0, TrainConfig(decay="zigzag"))


def test_dead_tokens_zero_is_refused_with_the_way_to_turn_auxk_off() -> None:
    """`dead_tokens` 0 would count every latent dead on every step, the one that just fired too."""
    with pytest.raises(SparseCircuitsError, match="dead_tokens=0 .*aux_k_coefficient 0"):
        TrainConfig(dead_tokens=0)
    assert TrainConfig(dead_tokens=1).dead_tokens == 1


def test_state_round_trip_keeps_types(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"opt": opt.state_dict(), "n": 3, "name": "x", "pair": (1, 2), "t": torch.arange(4)}
    save_state(state, tmp_path)
    back = load_state(tmp_path)
    assert back["n"] == 3 and back["pair"] == (1, 2) and torch.equal(back["t"], torch.arange(4))
    assert set(back["opt"]["state"]) == {0, 1}
    opt2 = torch.optim.Adam(model.parameters())
    opt2.load_state_dict(back["opt"])
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
