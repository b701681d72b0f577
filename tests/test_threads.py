"""Thread configuration: the passive OpenMP wait policy set on import (and what it does), the
user's own policy left alone, `--threads` / `SPARSECIRCUITS_THREADS`, the harvester's count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecircuits import threads
from sparsecircuits.cli import main
from sparsecircuits.errors import SparseCircuitsError

SRC = str(Path(__file__).resolve().parent.parent / "src")

# After one parallel region on 2 threads, how much CPU the process burns while the main thread
# sleeps: OpenMP workers that spin keep a core busy, sleeping ones cost nothing.
IDLE_CPU = """
import sparsecircuits, time, torch
torch.set_num_threads(2)
x = torch.ones(4_000_000)
for _ in range(20):
    x.mul_(1.0)
start = time.process_time()
time.sleep(1.0)
import os
print(os.environ.get("OMP_WAIT_POLICY"), time.process_time() - start)
"""


def run_python(code: str, **env: str) -> str:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in threads.WAIT_POLICY_VARIABLES and k != "OMP_NUM_THREADS"
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": SRC, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for a worker thread")
def test_import_makes_openmp_threads_sleep_instead_of_spin():
    policy, idle_cpu = run_python(IDLE_CPU).split()
    assert policy == "PASSIVE"
    assert float(idle_cpu) < 0.01
    # the control: spinning workers (the user's explicit choice, left alone) burn the sleep
    policy, idle_cpu = run_python(IDLE_CPU, OMP_WAIT_POLICY="ACTIVE").split()
    assert policy == "ACTIVE"
    assert float(idle_cpu) > 0.03  # ~1 s on an idle machine, ~0.07 s at load 15 on 2 cores


def test_a_chosen_wait_policy_is_left_alone():
    code = "import sparsecircuits, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert run_python(code) == "PASSIVE"
    assert run_python(code, GOMP_SPINCOUNT="1000") == "None"
    assert run_python(code, KMP_BLOCKTIME="0") == "None"
    torch_first = "import torch, sparsecircuits.threads as t; print(t.configure_environment())"
    assert run_python(torch_first) == "False"  # torch's runtime read the environment already


def test_set_threads_from_argument_and_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("SPARSECIRCUITS_THREADS", "2")
        assert threads.set_threads() == 2
        monkeypatch.setenv("SPARSECIRCUITS_THREADS", "two")
        with pytest.raises(SparseCircuitsError, match="SPARSECIRCUITS_THREADS"):
            threads.set_threads()
        monkeypatch.delenv("SPARSECIRCUITS_THREADS")
        assert threads.set_threads() == 2  # nothing asked: left as it is
    finally:
        torch.set_num_threads(before)


def test_harvest_threads(monkeypatch):
    monkeypatch.delenv("SPARSECIRCUITS_HARVEST_THREADS", raising=False)
    assert threads.harvest_threads() == torch.get_num_threads()
    monkeypatch.setenv("SPARSECIRCUITS_HARVEST_THREADS", "1")
    assert threads.harvest_threads() == 1
    monkeypatch.setenv("SPARSECIRCUITS_HARVEST_THREADS", "0")
    with pytest.raises(SparseCircuitsError, match="SPARSECIRCUITS_HARVEST_THREADS"):
        threads.harvest_threads()


def test_cli_threads_flag(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["--threads", "0", "presets"]) == 2
        assert capsys.readouterr().err.startswith("error: --threads must be")
        assert main(["--threads", "1", "presets"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
