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


class FillControl:
    """Between a background fill and its consumer: the rows written so far (the fill reports
    them after each forward) and a request to stop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.rows = 0

    def stop_requested(self) -> bool:
        """Whether the fill should return after its current forward."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the fill to return after its current forward."""
        self._stop.set()
        self.advance(self.rows)

    def advance(self, rows: int) -> None:
        """Record that `rows` rows are written (the fill thread calls this)."""
        with self._changed:
            self.rows = rows
            self._changed.notify_all()

    def wait_for_rows(self, rows: int, finished: Callable[[], bool]) -> None:
        """Block until `rows` rows are written, a stop is requested, or `finished()` is true."""
        with self._changed:
            while self.rows < rows and not self._stop.is_set() and not finished():
                self._changed.wait(timeout=0.05)


class FillResult:
    """A finished fill: its rows, the stream position after it and its permutation."""

    def __init__(self, rows: int, end: int, permutation: Tensor | None) -> None:
        self.rows = rows
        self.end = end
        self.permutation = permutation


class BackgroundFill:
    """Runs `work(control)` -> `FillResult` once on a daemon thread, for fill `fill_index` starting
    at stream position `start`. `result()` waits and returns it (re-raising what the thread
    raised); `keep_pace` waits until it has written a given share of its rows; `cancel()` asks
    `work` to stop at its next forward and waits for the thread."""

    def __init__(
        self,
        fill_index: int,
        start: int,
        work: Callable[[FillControl], FillResult],
        device: torch.device,
    ) -> None:
        self.fill_index = fill_index
        self.start = start
        self._work = work
        self._device = device
        self.control = FillControl()
        self._result: FillResult | None = None
        self._error: BaseException | None = None
        self._intra_op = threads.harvest_threads() if device.type == "cpu" else None
        self._ready = None
        if device.type == "cuda":
            # the trainer's stream may still read the spare buffers (batches already queued)
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(device))
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
                self._result = self._work(self.control)
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
        assert self._ready is not None
        stream.wait_event(self._ready)
        with torch.cuda.stream(stream):
            yield stream
        stream.synchronize()

    def keep_pace(self, rows: int) -> None:
        """Wait until the fill has written `rows` rows (or ended): a consumer that waits a little
        at each batch, while its own threads sleep and leave the cores to the fill, instead of
        once for the whole remainder when its buffer runs out."""
        self.control.wait_for_rows(rows, self.done)

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
        self.control.request_stop()
        self._thread.join()
