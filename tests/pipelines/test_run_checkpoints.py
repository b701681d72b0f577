"""Checkpoints belong to their run: resume, clean-up and a second run into the same folder.

The scenario of issue 22: train into a folder; train again there with another learning rate,
stop it partway, resume. The resumed weights must be the second run's, never the first's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sparsecircuits.cli import main
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.tiny import tokenizer_corpus
from sparsecircuits.pipelines import RunConfig, train_run
from sparsecircuits.training import TrainConfig, Trainer, latest_checkpoint
from sparsecircuits.training.checkpoints import list_checkpoints
from testkit import SyntheticStore, build_dictionary

STEPS = 17  # checkpoints every 4 steps: 4, 8, 12, 16 and the final 17


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing in the trainer catches it, so no checkpoint is written."""


@pytest.fixture(scope="module")
def base(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = tmp_path_factory.mktemp("data") / "data.txt"
    data.write_text("\n\n".join(tokenizer_corpus(300, seed=5)))
    return {
        "model": str(tiny_model_dir("gpt2")),
        "dataset": str(data),
        "context_size": 16,
        "buffer_tokens": 512,
        "contexts_per_forward": 4,
        "eval_contexts": 2,
        "dictionaries": [{"kind": "transcoder", "architecture": "topk", "layer": 0, "d_sae": 32}],
        "train": {
            "total_tokens": 32 * STEPS,
            "batch_tokens": 32,
            "lr": 3e-3,
            "checkpoint_every": 4,
            "warmup_steps": 2,
        },
    }


def config(base: dict, out: Path, lr: float) -> RunConfig:
    data = json.loads(json.dumps(base))
    data["out"], data["train"]["lr"] = str(out), lr
    return RunConfig(**data)


def weights(dictionaries: dict) -> dict[str, torch.Tensor]:
    return {
        f"{n}.{k}": v.clone() for n, d in dictionaries.items() for k, v in d.state_dict().items()
    }


def synthetic_store() -> SyntheticStore:
    return SyntheticStore(d=16, hook_in="blocks.1.mlp.hook_in", hook_out="blocks.1.mlp.hook_out")


def transcoder():  # type: ignore[no-untyped-def]
    return build_dictionary("topk", kind="transcoder", d_in=16, d_sae=32)


def killed_at(step: int):
    """A `Trainer._train_step` that dies before optimiser step `step`."""
    original = Trainer._train_step

    def step_or_die(self, batch):
        if self.step == step:
            raise SimulatedKill
        return original(self, batch)

    return step_or_die


def test_resume_after_another_runs_checkpoints_gives_this_runs_weights(
    base: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    first, _, _ = train_run(config(base, out, lr=3e-3), quiet=True)
    second_alone, _, _ = train_run(config(base, tmp_path / "reference", lr=1e-3), quiet=True)

    # a second run with other settings into the same folder is refused, naming what differs
    with pytest.raises(SparseCircuitsError, match=r"another run .*lr.*--overwrite"):
        train_run(config(base, out, lr=1e-3), quiet=True)

    # told to replace them, it starts afresh; killed at step 13 (checkpoints at 4, 8 and 12)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", killed_at(13))
        with pytest.raises(SimulatedKill):
            train_run(config(base, out, lr=1e-3), quiet=True, overwrite=True)
    assert [c.step for c in list_checkpoints(out)] == [8, 12]  # the first run's are gone

    # resuming with the first run's settings is refused; with its own it finishes as if never killed
    with pytest.raises(SparseCircuitsError, match=r"--resume: .*other settings.*lr"):
        train_run(config(base, out, lr=3e-3), resume=True, quiet=True)
    resumed, result, _ = train_run(config(base, out, lr=1e-3), resume=True, quiet=True)
    assert result.steps == STEPS
    got, want, other = weights(resumed), weights(second_alone), weights(first)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], other[k]) for k in other)


def test_clean_up_keeps_this_runs_recent_checkpoints_and_never_another_runs(
    tmp_path: Path,
) -> None:
    def trainer(lr: float) -> Trainer:
        cfg = TrainConfig(
            total_tokens=64 * 12, batch_tokens=64, lr=lr, quiet=True, checkpoint_every=2
        )
        return Trainer(synthetic_store(), {"tc": transcoder()}, cfg, out_dir=tmp_path)

    trainer(3e-3).train()  # another run left steps 10 and 12 (the highest numbers)
    short = trainer(1e-3)
    short.train(stop_at_step=7)  # this run writes 2, 4, 6 and 7; keeps its two most recent
    by_run = {(c.step, c.fingerprint == short.fingerprint) for c in list_checkpoints(tmp_path)}
    assert by_run == {(10, False), (12, False), (6, True), (7, True)}
    own = latest_checkpoint(tmp_path, short.fingerprint)
    assert own == tmp_path / "checkpoints" / "step_000000007"
    with pytest.raises(SparseCircuitsError, match="other settings"):
        short.load_checkpoint(latest_checkpoint(tmp_path))  # step 12: the other run's


def test_checkpoints_are_periodic_by_default(tmp_path: Path) -> None:
    assert TrainConfig().checkpoint_minutes > 0 and TrainConfig().checkpoint_every == 0
    cfg = TrainConfig(
        total_tokens=64 * 5,
        batch_tokens=64,
        quiet=True,
        checkpoint_minutes=1e-9,
        keep_checkpoints=9,
    )
    trainer = Trainer(synthetic_store(), {"tc": transcoder()}, cfg, out_dir=tmp_path)
    trainer.train(stop_at_step=4)  # steps 1-3 come from the timer, 4 is the final save
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2, 3, 4]


def test_cli_refuses_a_second_run_and_a_mismatched_resume_with_one_error_line(
    base: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**base, "out": str(out)}))
    assert main(["train", "--config", str(path), "--quiet"]) == 0
    capsys.readouterr()
    for extra in (["--lr", "0.001"], ["--lr", "0.001", "--resume"], ["--seed", "7", "--resume"]):
        assert main(["train", "--config", str(path), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    # the same settings resume (nothing left to do) and the folder still holds the run
    assert main(["train", "--config", str(path), "--quiet", "--resume"]) == 0
    assert latest_checkpoint(out) is not None
