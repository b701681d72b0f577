"""Trainer: learning, exact resume, reproducibility, NaN guard, signals, checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, load, make
from sparsecircuits.training import TrainConfig, Trainer, TrainingStopped, latest_checkpoint
from testkit import SyntheticStore

D = 16


def make_dicts(seed: int = 0) -> dict:
    tc = make(
        DictionaryConfig(
            architecture="topk",
            kind="transcoder",
            d_in=D,
            d_sae=64,
            d_out=D,
            hook_in="in",
            hook_out="out",
            k=4,
            seed=seed,
        )
    )
    sae = make(
        DictionaryConfig(
            architecture="relu",
            kind="sae",
            d_in=D,
            d_sae=64,
            d_out=D,
            hook_in="in",
            hook_out="in",
            l1_coefficient=1e-3,
            seed=seed + 1,
        )
    )
    return {"tc": tc, "sae": sae}


def cfg(steps: int, lr: float = 3e-3, **kw) -> TrainConfig:
    return TrainConfig(
        total_tokens=64 * steps,
        batch_tokens=64,
        lr=lr,
        warmup_steps=3,
        decay_start=0.5,
        quiet=True,
        dead_tokens=256,
        **kw,
    )


def weights(dicts: dict) -> dict[str, torch.Tensor]:
    return {
        f"{n}.{k}": v.detach().clone() for n, d in dicts.items() for k, v in d.state_dict().items()
    }


def test_training_reduces_fvu(tmp_path: Path) -> None:
    dicts = make_dicts()
    result = Trainer(SyntheticStore(d=D), dicts, cfg(150, lr=1e-2), out_dir=tmp_path).train()
    assert result.steps == 150 and result.tokens == 150 * 64
    assert result.metrics["tc"]["fvu"] < 0.5
    assert result.metrics["sae"]["fvu"] < 0.5
    assert result.metrics["tc"]["l0"] <= 4 + 1e-6


def test_step_temporaries_are_kept_between_steps_and_freed_when_the_run_ends() -> None:
    """The steps' scratch buffers outlive a `train(stop_at_step=…)` call (the next steps reuse
    them) and are released once the run has done all its steps."""
    from sparsecircuits.dictionaries import scratch

    scratch.release()
    trainer = Trainer(SyntheticStore(d=D), make_dicts(), cfg(4))
    trainer.train(stop_at_step=2)
    assert scratch._local.__dict__.get("pool")
    trainer.train()
    assert not scratch._local.__dict__.get("pool")


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = make_dicts()
    Trainer(SyntheticStore(d=D), full, cfg(20), out_dir=tmp_path / "full").train()

    first = make_dicts()
    Trainer(SyntheticStore(d=D), first, cfg(20), out_dir=tmp_path / "split").train(stop_at_step=10)
    resumed = make_dicts(seed=99)  # different init: everything must come from the checkpoint
    trainer = Trainer(SyntheticStore(d=D), resumed, cfg(20), out_dir=tmp_path / "split")
    trainer.load_checkpoint(latest_checkpoint(tmp_path / "split"))
    assert trainer.step == 10
    trainer.train()
    a, b = weights(full), weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seeded_runs_are_identical(tmp_path: Path) -> None:
    a, b = make_dicts(), make_dicts()
    Trainer(SyntheticStore(d=D), a, cfg(8)).train()
    Trainer(SyntheticStore(d=D), b, cfg(8)).train()
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_and_keeps_last_good_weights(tmp_path: Path) -> None:
    dicts = make_dicts()
    trainer = Trainer(SyntheticStore(d=D, nan_at=5), dicts, cfg(20), out_dir=tmp_path)
    with pytest.raises(TrainingStopped, match="lower the learning rate") as info:
        trainer.train()
    assert trainer.step == 5
    saved = load(info.value.checkpoint / "dictionaries" / "tc")
    x = torch.randn(8, D)
    assert torch.allclose(saved(x).out, dicts["tc"](x).out, atol=1e-5)
    assert all(torch.isfinite(p).all() for p in dicts["tc"].parameters())


def test_sigterm_checkpoints_then_resume_finishes(tmp_path: Path) -> None:
    dicts = make_dicts()
    trainer = Trainer(SyntheticStore(d=D, signal_at=7), dicts, cfg(20), out_dir=tmp_path)
    with pytest.raises(TrainingStopped, match="SIGTERM") as info:
        trainer.train()
    assert info.value.checkpoint == latest_checkpoint(tmp_path)
    resumed = make_dicts(seed=5)
    trainer = Trainer(SyntheticStore(d=D), resumed, cfg(20), out_dir=tmp_path)
    trainer.load_checkpoint(latest_checkpoint(tmp_path))
    assert trainer.step == 8
    assert trainer.train().steps == 20


def test_checkpoint_layout_and_pruning(tmp_path: Path) -> None:
    trainer = Trainer(
        SyntheticStore(d=D),
        make_dicts(),
        cfg(12, checkpoint_every=3, keep_checkpoints=2),
        out_dir=tmp_path,
    )
    trainer.train()
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert len(steps) == 2 and steps[-1].endswith("12")
    last = tmp_path / "checkpoints" / steps[-1]
    for name in ("tc", "sae"):
        assert (last / "dictionaries" / name / "cfg.json").is_file()
        assert (last / "dictionaries" / name / "sae_weights.safetensors").is_file()
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") >= 1
