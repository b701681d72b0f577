"""The competing CPU-bound process of `run.py --compete KIND` (see `common.Competitor`).

    python -m benchmarks.compete spin   # a pure-Python busy loop: one core, no memory traffic
    python -m benchmarks.compete gemm   # a single-threaded numpy [256, 256] matmul loop

Prints "ready" once set up, then loops until killed.
"""

from __future__ import annotations

import sys


def spin() -> None:
    """Busy-loop on one core forever."""
    n = 0
    while True:
        n = (n + 1) & 0xFFFF


def gemm() -> None:
    """Multiply two `[256, 256]` fp32 matrices forever (BLAS threads capped at 1 by the parent)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    b = a.T.copy()
    out = np.empty_like(a)
    while True:
        np.matmul(a, b, out=out)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the benchmark dies (even while stopped)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    """Start the loop named on the command line."""
    loops = {"spin": spin, "gemm": gemm}
    kind = sys.argv[1] if len(sys.argv) > 1 else "spin"
    if kind not in loops:
        print(f"error: competitor must be one of {sorted(loops)}, got {kind!r}", file=sys.stderr)
        sys.exit(2)
    if kind == "gemm":
        import numpy  # noqa: F401 - import before "ready", so the loop starts at once

    die_with_parent()
    print("ready", flush=True)
    loops[kind]()


if __name__ == "__main__":
    main()
