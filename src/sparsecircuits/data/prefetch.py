"""The activation store's background fill: one thread harvests the next fill into spare buffers
while the trainer consumes the current one (docs/internals.md, "Prefetch")."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from sparsecircuits import threads


class FillResult:
    """A finished fill: its rows, the stream position after it and its permutation."""

    def __init__(self, rows: int, end: int, permutation: Tensor | None) -> None:
        self.rows = rows
        self.end = end
        self.permutation = permutation


class BackgroundFill:
    """Runs `work(stop)` -> `FillResult` once on a daemon thread, for fill `fill_index` starting
    at stream position `start`. `result()` waits and returns it (re-raising what the thread
    raised); `cancel()` asks `work` to stop at its next forward and waits for the thread."""

    def __init__(
        self,
        fill_index: int,
        start: int,
        work: Callable[[threading.Event], FillResult],
        device: torch.device,
    ) -> None:
        self.fill_index = fill_index
        self.start = start
        self._work = work
        self._device = device
        self._stop = threading.Event()
        self._result: FillResult | None = None
        self._error: BaseException | None = None
        self._intra_op = threads.harvest_threads() if device.type == "cpu" else None
        self._thread = threading.Thread(
            target=self._run, name=f"sparsecircuits-fill-{fill_index}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        # torch's OpenMP backend keeps the thread count per thread (the trainer's thread keeps
        # its own); the process-wide default new threads start from is restored afterwards.
        default_threads = torch.get_num_threads()
        try:
            if self._intra_op is not None:
                torch.set_num_threads(self._intra_op)
            with self._stream():
                self._result = self._work(self._stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer in result()
            self._error = exc
        finally:
            if self._intra_op is not None:
                torch.set_num_threads(default_threads)

    @contextlib.contextmanager
    def _stream(self) -> Iterator[Any]:
        """On CUDA, a side stream (so the forwards overlap the training kernels), synchronised
        before the buffers are handed over; elsewhere nothing."""
        if self._device.type != "cuda":
            yield None
            return
        stream = torch.cuda.Stream(device=self._device)
        with torch.cuda.stream(stream):
            yield stream
        stream.synchronize()

    def done(self) -> bool:
        """Whether the thread has finished (successfully or not)."""
        return not self._thread.is_alive()

    def result(self) -> FillResult:
        """Wait for the fill; return it, or raise what the thread raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the fill at its next forward and wait for the thread to end; the result is lost."""
        self._stop.set()
        self._thread.join()
