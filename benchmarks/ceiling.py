"""The encoder-GEMM ceiling of a train step: the fastest exact way to get its pre-activations.

A dense-encoder step must compute `x @ W_enc` (`[n, d_in] @ [d_in, d_sae]`) at the precision
it selects from: fp32, or bf16 where the TopK step takes its candidates from a bf16 GEMM (the
verified bf16 selection) or the dictionary itself is bf16. No step can beat the fastest way to
compute that product, so the ceiling is the fastest of several exact ways, measured side by
side: `torch.matmul` (a fresh output, as a step calls it), `torch.mm` into a preallocated
output, the same with the weight stored `[d_sae, d_in]` (nn.Linear's layout), row chunks into a
preallocated output (the blocking our step uses), and oneDNN's linear with the weight as given
and prepacked. Inputs and weights are cast once, outside the timing (cached), so each variant
is the GEMM alone. Every variant is checked against `torch.mm` at the same precision before it
is timed; one that disagrees beyond rounding, or fails, is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHUNK_ROWS = (1024, 2048)
# |variant - reference| / max|reference| allowed: accumulation order only (fp32), or one bf16
# rounding of the output (bf16, unit roundoff 2^-8)
_TOLERANCE = {"fp32": 1e-4, "bf16": 2.0**-7}


def step_precision(dtype: str, selection: str | None) -> str:
    """ "bf16" when the step selects from (or trains) bf16 pre-activations, else "fp32"."""
    if dtype == "bfloat16" or (selection or "").startswith("bf16"):
        return "bf16"
    return "fp32"


def _chunked_mm(x: Tensor, W: Tensor, out: Tensor, rows: int) -> Tensor:
    for start in range(0, x.shape[0], rows):
        torch.mm(x[start : start + rows], W, out=out[start : start + rows])
    return out


def _candidates(x: Tensor, W: Tensor, precision: str) -> dict[str, Callable[[], Tensor]]:
    """The ways to compute `x @ W` (both already at `precision`), by name."""
    n, d_sae = x.shape[0], W.shape[1]
    out = torch.empty(n, d_sae, device=x.device, dtype=x.dtype)
    W_rows = W.T.contiguous()  # [d_sae, d_in]
    fns: dict[str, Callable[[], Tensor]] = {
        "matmul": partial(torch.matmul, x, W),
        "mm_out": partial(torch.mm, x, W, out=out),
        "mm_out_wT": partial(torch.mm, x, W_rows.T, out=out),
    }
    for rows in CHUNK_ROWS:
        if rows < n:
            fns[f"mm_out_chunks{rows}"] = partial(_chunked_mm, x, W, out, rows)
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if x.device.type == "cpu" and mkldnn is not None and hasattr(mkldnn, "_linear_pointwise"):
        linear = mkldnn._linear_pointwise
        fns["onednn_linear"] = partial(linear, x, W_rows, None, "none", [], "")
        try:
            packed = mkldnn._reorder_linear_weight(W_rows, n)
            fns["onednn_linear_prepacked"] = partial(linear, x, packed, None, "none", [], "")
        except Exception:  # noqa: BLE001 - not in this torch build: the plain call stays
            pass
    return fns


def variants(
    x: Tensor, d_sae: int, precision: str, seed: int = 0, only: str | None = None
) -> dict[str, Callable[[], Any]]:
    """`{"PRECISION:NAME": closure}` computing `x @ W` (`W`: random `[d_in, d_sae]`) at
    `precision`, each checked against `torch.mm` at that precision (failing or inexact ones are
    left out); `only` keeps just the variant of that full name."""
    dtype = PRECISIONS[precision]
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(x.shape[1], d_sae, generator=generator).to(x.device, dtype)
    xs = x.to(dtype).contiguous()
    reference = torch.mm(xs, W).float()
    scale = float(reference.abs().max()) or 1.0
    checked = {}
    for name, fn in _candidates(xs, W, precision).items():
        if only is not None and f"{precision}:{name}" != only:
            continue
        try:
            got = fn().float()
        except Exception:  # noqa: BLE001 - a backend missing here is not a ceiling
            continue
        if got.shape == reference.shape and float((got - reference).abs().max()) <= (
            _TOLERANCE[precision] * scale
        ):
            checked[f"{precision}:{name}"] = fn
    return checked
