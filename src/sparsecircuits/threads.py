"""Thread pools on CPU: one place that sizes and configures torch's intra-op pool, the numba
kernels' pool and the background harvester (docs/performance.md, "Threads").

torch's bundled libgomp (intra-op pool, MKL, oneDNN) spins for ~300,000 iterations after every
parallel region before sleeping by default, and so does the OpenMP layer numba would load for its
kernels, so next to another CPU-bound process (or next to each other) the spinning threads take
the cores the working ones need. An OpenMP runtime reads its wait policy from the environment
once, when it loads, so `configure_environment` runs when `sparsecircuits` is imported, before it
imports torch or numba: it sets `OMP_WAIT_POLICY=PASSIVE` (sleep at once) unless the user set a
policy. The numba kernels run on numba's workqueue layer (`prefer_numba_workqueue`), whose idle
workers sleep.

Environment overrides: `OMP_WAIT_POLICY`, `GOMP_SPINCOUNT` or `KMP_BLOCKTIME` set by the user
are left alone; `SPARSECIRCUITS_THREADS=N` sets the intra-op threads (the CLI's `--threads`),
`SPARSECIRCUITS_HARVEST_THREADS=N` the background harvester's.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "WAIT_POLICY_VARIABLES",
    "configure_environment",
    "harvest_threads",
    "prefer_numba_workqueue",
    "set_threads",
    "summary",
]

# Variables by which the user chose a wait policy (libgomp, LLVM/Intel OpenMP).
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def configure_environment() -> bool:
    """Set `OMP_WAIT_POLICY=PASSIVE` unless a wait policy is already chosen; return whether the
    OpenMP runtime torch loads will see it (False when torch was imported first: its runtime has
    read the environment already, and only numba's, loaded later, follows)."""
    if not any(name in os.environ for name in WAIT_POLICY_VARIABLES):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "torch" not in sys.modules


def prefer_numba_workqueue() -> None:
    """Put numba's parallel kernels on its "workqueue" threading layer unless
    `NUMBA_THREADING_LAYER` says otherwise; call before the first parallel kernel runs (later
    calls change nothing). Its idle workers sleep, whereas the OpenMP layer's keep spinning after
    a kernel and take the cores from torch's next operations (measured: small torch ops 25x
    slower after one numba kernel)."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba

    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]


def _positive(name: str, value: str) -> int:
    from sparsecircuits.errors import SparseCircuitsError

    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise SparseCircuitsError(f"{name} must be a whole number of threads >= 1, not {value!r}")
    return n


def set_threads(n: int | None = None) -> int:
    """Size torch's intra-op pool to `n` threads (else `SPARSECIRCUITS_THREADS`, else leave
    torch's default: one per core); the numba kernels follow it at each launch. Returns the
    count in use."""
    import torch

    if n is None and os.environ.get("SPARSECIRCUITS_THREADS"):
        n = _positive("SPARSECIRCUITS_THREADS", os.environ["SPARSECIRCUITS_THREADS"])
    if n is not None:
        n = _positive("--threads", str(n))
        torch.set_num_threads(n)
    return torch.get_num_threads()


def harvest_threads() -> int:
    """Intra-op threads of the background harvester on CPU: `SPARSECIRCUITS_HARVEST_THREADS`, else
    the trainer's count. Where harvesting is the slower half the trainer waits for it (the store
    keeps pace) and its threads sleep, so the harvester then has every core; while both run, the
    passive wait policy keeps the two teams from spinning against each other."""
    import torch

    value = os.environ.get("SPARSECIRCUITS_HARVEST_THREADS")
    if value:
        return _positive("SPARSECIRCUITS_HARVEST_THREADS", value)
    return torch.get_num_threads()


def summary() -> dict[str, object]:
    """What is in force: `{"intra_op", "harvest", "wait_policy", "numba_layer"}` (the numba layer
    only once a kernel has run, else None)."""
    import torch

    numba_layer = None
    if "numba" in sys.modules:
        try:
            numba_layer = sys.modules["numba"].threading_layer()
        except ValueError:  # no parallel kernel launched yet
            numba_layer = None
    policy = {name: os.environ[name] for name in WAIT_POLICY_VARIABLES if name in os.environ}
    return {
        "intra_op": torch.get_num_threads(),
        "harvest": harvest_threads(),
        "wait_policy": policy,
        "numba_layer": numba_layer,
    }
