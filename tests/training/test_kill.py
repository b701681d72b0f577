"""Crash safety: `sparsecircuits train` SIGKILLed at random moments, checkpoint writes included.

Each trial starts `train` in its own process (forked from a server that has already imported
torch and transformers, so a trial costs the training, not the imports), kills it with SIGKILL
after a seeded random delay, checks that the newest complete checkpoint loads, resumes, and
compares the final weights with an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsecircuits.cli import main
from sparsecircuits.dictionaries import load
from sparsecircuits.training import latest_checkpoint
from sparsecircuits.training.state_io import load_state
from testkit import tiny_run_config, train_killed_inside

pytestmark = pytest.mark.slow
RANDOM_TRIALS = 8
STEPS = 8


@pytest.fixture(scope="module")
def trial_config(tiny_model_dir: Callable[[str], Path], tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    config = tiny_run_config(
        root,
        tiny_model_dir("gpt2"),
        [{"kind": "transcoder", "architecture": "topk", "layer": 0, "d_sae": 32, "k": 4}],
        # a checkpoint every step: much of a run is spent writing them, so kills land there
        {"total_tokens": 32 * STEPS, "batch_tokens": 32, "lr": 3e-3, "checkpoint_every": 1},
        seed=11,
    )
    path = root / "run.json"
    path.write_text(json.dumps(config))
    return path


def start(target: Callable[..., object], *args: object) -> multiprocessing.process.BaseProcess:
    """`target(*args)` in a child process forked from a server that has imported the project."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "sparsecircuits.cli", "testkit"])
    process = context.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def wait_for_checkpoints(process: multiprocessing.process.BaseProcess, out: Path) -> None:
    """Return once `out/checkpoints` has an entry (a checkpoint being written) or `process` ended."""
    while process.is_alive() and not any((out / "checkpoints").glob("*")):
        time.sleep(0.005)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted((out / "dictionaries").glob("*/*.safetensors")):
        for key, value in load_file(file).items():
            tensors[f"{file.parent.name}/{file.name}/{key}"] = value
    return tensors


def test_training_killed_at_random_moments_resumes_bit_identically(
    trial_config: Path, tmp_path: Path, capsys
) -> None:
    base = ["train", "--config", str(trial_config), "--quiet"]
    # the fork server's own start (importing torch and the project) is not a run's start-up
    warm = start(int)
    warm.join(300)
    began = time.monotonic()
    reference = start(main, [*base, "--out", str(tmp_path / "reference")])
    wait_for_checkpoints(reference, tmp_path / "reference")
    startup = time.monotonic() - began  # until the first checkpoint write begins
    reference.join(300)
    assert reference.exitcode == 0
    training = time.monotonic() - began - startup
    want = final_weights(tmp_path / "reference")
    assert want

    rng = random.Random(22)
    trials: list[tuple[str, Callable[..., object], tuple]] = [
        (f"random {i}", main, ()) for i in range(RANDOM_TRIALS)
    ]
    # two kills placed inside a checkpoint write, whatever the machine's speed
    trials += [
        ("inside save_state", train_killed_inside, ("save_state", 3)),
        ("inside fsync_tree", train_killed_inside, ("fsync_tree", 2)),
    ]
    outcomes = []
    for trial, (name, target, extra) in enumerate(trials):
        out = tmp_path / f"trial{trial}"
        process = start(target, [*base, "--out", str(out)], *extra)
        if target is main:
            if trial % 4 == 0:  # now and then during start-up, before any checkpoint
                time.sleep(rng.uniform(0, startup))
            else:
                wait_for_checkpoints(process, out)
                time.sleep(rng.uniform(0, training))
            # kill() ignores a child that already ended (os.kill would race its exit)
            process.kill()
        process.join(120)
        killed = process.exitcode == -signal.SIGKILL
        mid_write = any((out / "checkpoints").glob(".*.tmp"))
        newest = latest_checkpoint(out)
        if newest is not None:  # the newest complete checkpoint always loads
            assert int(load_state(newest)["step"]) == int(newest.name.split("_")[1])
            for folder in (newest / "dictionaries").iterdir():
                load(folder)
        resume = ["--resume"] if newest is not None else []
        assert main([*base, "--out", str(out), *resume]) == 0, capsys.readouterr().err
        got = final_weights(out)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
        outcomes.append((killed, mid_write, None if newest is None else newest.name[-2:]))
    assert outcomes[-1][:2] == (True, True) and outcomes[-2][:2] == (True, True)
    capsys.readouterr()
    with capsys.disabled():
        print(
            f"\n{len(trials)} kill trials: {sum(k for k, _, _ in outcomes)} killed, "
            f"{sum(m for _, m, _ in outcomes)} inside a checkpoint write; resumed from steps "
            f"{[n for _, _, n in outcomes]}; every resumed run bit-identical to the uninterrupted one"
        )
