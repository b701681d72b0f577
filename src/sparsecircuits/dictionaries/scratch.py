"""Scratch tensors kept between train steps, one per name and thread.

A large tensor allocated afresh on every step is page-faulted in every time (glibc hands
allocations above 32 MB straight back to the OS when they are freed): at d_sae 65k the encoder's
transposed copy alone took 56 ms that way against 25 ms into a kept buffer. The contents are
undefined on return, and a buffer is the caller's only until its next request under the same
name on the same thread, so callers use one within a single kernel call and keep nothing.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """A CPU tensor of `shape` and `dtype` with undefined contents: the leading rows of the
    buffer kept under `name` for this thread, reallocated when it is too short or its other
    dimensions or dtype differ."""
    pool: dict[str, Tensor] = _local.__dict__.setdefault("pool", {})
    held = pool.get(name)
    if (
        held is None
        or held.dtype != dtype
        or held.shape[1:] != shape[1:]
        or held.shape[0] < shape[0]
    ):
        # a normal tensor even under `torch.inference_mode()`: an inference tensor could not be
        # written to by a later call outside it (a train step after an evaluation)
        with torch.inference_mode(False):
            held = pool[name] = torch.empty(shape, dtype=dtype)
    return held[: shape[0]]


def release() -> None:
    """Free this thread's scratch buffers (they are made again on the next request)."""
    _local.__dict__.pop("pool", None)
