"""Sums of squares for the reconstruction loss, with a one-pass backward.

`error.pow(2).sum()`'s autograd backward makes three `[n, d]` passes (`error.pow(1)`, `2 · that`,
`grad · that`): at a 4096-token batch of width 256 each pass is a cold 4 MB read and write, about
1 ms on 2 cores. `squared_sum` computes the same forward and returns `error · (2 · grad)` in one
pass, the very bits of autograd's `grad · (2 · error)` (doubling is exact in binary floating point).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["squared_sum"]


class _SquaredSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, error: Tensor, dim: tuple[int, ...] | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(error)
        ctx.dim = dim
        squares = error.pow(2)
        return squares.sum() if dim is None else squares.sum(dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (error,) = ctx.saved_tensors
        if ctx.dim is not None:  # put the summed dimensions back, size 1, to broadcast
            for d in sorted(d % error.dim() for d in ctx.dim):
                grad = grad.unsqueeze(d)
        return error * (2 * grad), None


def squared_sum(error: Tensor, dim: tuple[int, ...] | None = None) -> Tensor:
    """`error.pow(2).sum(dim)` (all dimensions when `dim` is None; 0-dim, or `error`'s shape less
    `dim`), the same bits forward and backward, its gradient made in one pass over `error`."""
    return _SquaredSum.apply(error, dim)  # type: ignore[no-any-return]
