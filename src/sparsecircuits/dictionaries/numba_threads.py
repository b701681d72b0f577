"""Which thread pool numba's parallel kernels run on (docs/performance.md, Kernel findings)."""

from __future__ import annotations

import os


def prefer_workqueue() -> None:
    """Use numba's "workqueue" threading layer unless `NUMBA_THREADING_LAYER` says otherwise;
    call before the first parallel kernel runs (later calls change nothing). Its idle workers
    sleep, whereas the OpenMP layer's keep spinning after a kernel and take the cores from
    torch's next operations (measured: small torch ops 25x slower after one numba kernel)."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    import numba

    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]
