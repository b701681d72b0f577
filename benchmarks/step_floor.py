"""The floor under a TopK train step: the kernels it cannot skip, each timed alone.

    python benchmarks/step_floor.py [--d-sae 4096] [--k 32] [--precision bf16|fp32] [--repeats 5]

A TopK transcoder step with the verified bf16 selection must at least: compute the bf16 scores
(the ceiling's GEMM, in the step's row chunks), read those scores once, rescore its candidates
in fp32, decode, form the two sparse weight gradients and the codes' gradient, and take an Adam
step. With `--precision fp32` (the step on a CPU without fast bf16, or at k 128) the scores are
the fp32 GEMM's and need no rescoring. Each is timed on its own, at the benchmark's shapes (4096
tokens, d_in 256), on random data, in interleaved rounds (`common.time_rounds`). The sum, before
any ranking, loss, clipping or renormalisation, bounds the step's ratio to its ceiling: `GEMM /
sum`. One JSON line per kernel
(milliseconds per call: median, min and max over the rounds) and a `"floor"` line with the bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsecircuits  # noqa: F401  # first: its OpenMP wait policy must precede torch's import

# isort: split
import torch
import torch.nn.functional as F

from benchmarks.common import emit, spread, time_rounds
from sparsecircuits.dictionaries import cpu_topk, kernels

N_TOKENS, D_IN = 4096, 256


def kernels_of_a_step(d_sae: int, k: int, seed: int = 0, precision: str = "bf16") -> dict[str, Any]:
    """`{name: closure}`: the kernels a TopK transcoder step at `d_sae`, `k` cannot skip, on
    random inputs of the benchmark's shapes; the first is the ceiling's GEMM, in `precision`
    ("bf16": the verified selection, whose candidates are rescored in fp32; "fp32": no
    rescoring)."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', not {precision!r}")
    g = torch.Generator().manual_seed(seed)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    # the bf16 GEMM's inputs carry the bias row and a pad row
    n, width = N_TOKENS, D_IN + 2 if precision == "bf16" else D_IN
    x = torch.randn(n, D_IN, generator=g)
    W_t = torch.randn(d_sae, D_IN, generator=g) / 16
    W_dec = torch.randn(d_sae, D_IN, generator=g) / 16
    x_aug = torch.randn(n, width, generator=g).to(dtype)
    W_aug = torch.randn(width, d_sae, generator=g).to(dtype)
    scores = torch.empty(n, d_sae, dtype=dtype)
    rows = kernels.selection_rows(n, d_sae)
    n_candidates = k + kernels._margin(k)
    candidates = torch.stack([torch.randperm(d_sae, generator=g)[:n_candidates] for _ in range(n)])
    chosen = candidates[:, :k].contiguous()
    codes = torch.rand(n, k, generator=g)
    bias = torch.zeros(d_sae)
    params = [torch.nn.Parameter(W_t.t().clone()), torch.nn.Parameter(W_dec.clone())]
    for p in params:
        p.grad = torch.randn_like(p)
    adam = torch.optim.Adam(params, lr=1e-4, fused=True)

    def gemm() -> None:
        for start in range(0, n, rows):
            torch.mm(x_aug[start : start + rows], W_aug, out=scores[start : start + rows])

    fns: dict[str, Any] = {
        f"{precision} GEMM (the ceiling)": gemm,
        f"read the {precision} scores once": lambda: scores.amax(dim=1),
    }
    if precision == "bf16":
        fns[f"fp32 rescoring of {n_candidates} candidates"] = lambda: cpu_topk.gather_dot(
            W_t, candidates, x, bias
        )
    return fns | {
        "decode (embedding bag)": lambda: F.embedding_bag(
            chosen, W_dec, per_sample_weights=codes, mode="sum"
        ),
        "W_enc gradient (sparse outer, transposed)": lambda: cpu_topk.scatter_outer(
            chosen, codes, x, d_sae, transposed=True
        ),
        "W_dec gradient (sparse outer)": lambda: cpu_topk.scatter_outer(chosen, codes, x, d_sae),
        "codes' gradient (gather-dot)": lambda: cpu_topk.gather_dot(W_dec, chosen, x),
        "Adam (fused), W_enc and W_dec": adam.step,
    }


def main(argv: list[str] | None = None) -> None:
    """Time each kernel of `kernels_of_a_step` and print the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument(
        "--precision", choices=["bf16", "fp32"], default="bf16", help="the selection GEMM's"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    fns = kernels_of_a_step(args.d_sae, args.k, precision=args.precision)
    seconds, _ = time_rounds(fns, "cpu", args.repeats, min_time_s=0.2)
    config = {
        "d_sae": args.d_sae,
        "k": args.k,
        "precision": args.precision,
        "n_tokens": N_TOKENS,
        "d_in": D_IN,
        "threads": torch.get_num_threads(),
    }
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        ms = [1000 * v for v in values]
        emit({"name": "step_floor_kernel", "kernel": name, "config": config, "ms": spread(ms, 2)})
    gemm = medians[f"{args.precision} GEMM (the ceiling)"]
    total = sum(medians.values())
    emit(
        {
            "name": "step_floor",
            "config": config,
            "ms": round(1000 * total, 2),
            "gemm_ms": round(1000 * gemm, 2),
            "best_ratio_to_ceiling": round(gemm / total, 3),
        }
    )


if __name__ == "__main__":
    main()
