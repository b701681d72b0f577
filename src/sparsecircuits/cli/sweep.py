"""`sparsecircuits sweep`: every dictionary variant at several sparsities, one layer, one forward."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sparsecircuits.cli.common import add_run_arguments, run_config_from_args
from sparsecircuits.evaluation import evaluate_dictionaries
from sparsecircuits.pipelines.sweep import SWEEP_RUN, write_sweep_report
from sparsecircuits.pipelines.train import eval_batches, train_run

DEFAULT_OUT = "out/sweep"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sweep` subcommand."""
    p = sub.add_parser(
        "sweep",
        help="train every dictionary variant at several sparsities on one layer; frontier plots",
        description="Train a grid of dictionary variants (ReLU, TopK, BatchTopK, JumpReLU, AbsTopK, "
        "top-AFA, matching pursuit; transcoders, skip transcoders and SAEs) on one layer from one "
        "model forward, evaluate them, and write frontier.json, frontier_*.png and table.md.",
    )
    add_run_arguments(p, default_out=DEFAULT_OUT)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the grid, evaluate, write the report; print the table."""
    start = time.perf_counter()
    cfg = run_config_from_args(args, default_out=DEFAULT_OUT, base=SWEEP_RUN)
    dictionaries, _, adapter = train_run(cfg, quiet=args.quiet, overwrite=args.overwrite)
    records = evaluate_dictionaries(
        adapter,
        dictionaries,
        eval_batches(adapter, cfg.dataset, cfg.context_size, cfg.eval_contexts),
    )
    out = Path(cfg.out)
    write_sweep_report(out, records, time.perf_counter() - start)
    print((out / "table.md").read_text())
    return 0
