"""`sparsecircuits train`: harvest activations and train one or more dictionaries."""

from __future__ import annotations

import argparse
import json

from sparsecircuits.cli.common import add_run_arguments, run_config_from_args
from sparsecircuits.pipelines import train_run

DEFAULT_OUT = "runs/train"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    p = sub.add_parser(
        "train",
        help="train transcoders / SAEs on a model's activations",
        description="Train dictionaries. Give a YAML/JSON config (--config) and/or flags; "
        "flags override the file. Several dictionaries listed in the config share one model forward.",
    )
    add_run_arguments(p, default_out=DEFAULT_OUT)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue this run (same settings) from its furthest checkpoint in --out",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train; print one JSON line per dictionary with its final training metrics."""
    cfg = run_config_from_args(args, default_out=DEFAULT_OUT)
    dictionaries, result, _ = train_run(
        cfg, resume=args.resume, quiet=args.quiet, overwrite=args.overwrite
    )
    for name in dictionaries:
        print(json.dumps(result.record(name)))
    print(f"saved to {cfg.out}/dictionaries/")
    return 0
