"""`sparsecircuits tasks`: the circuit-task behaviour of a model on the dev or test split."""

from __future__ import annotations

import argparse
import json

from sparsecircuits.cli.common import at_least
from sparsecircuits.models import load_model


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `tasks` subcommand."""
    p = sub.add_parser(
        "tasks",
        help="greater-than, IOI and docstring metrics on the test (or dev) split",
        description="Measure a model on the classic circuit tasks: greater-than probability "
        "difference, IOI logit difference and accuracy, docstring top-1 accuracy, prose loss. "
        "The test split's templates, names, year endings and parameter names are in no training "
        "text; the dev split is the one to tune on.",
    )
    p.add_argument("--model", default="embedded")
    p.add_argument("--device")
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--n", type=at_least(1), default=200, help="prompts per task")
    p.add_argument(
        "--seed",
        type=int,
        help="prompt seed (default: the split's documented seed, dev 0, test 1729)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the task metrics of the chosen split."""
    from sparsecircuits.tasks import run_tasks

    adapter = load_model(args.model, device=args.device)
    result = run_tasks(
        adapter.forward, adapter.tokenizer, n=args.n, seed=args.seed, split=args.split
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"split: {args.split}")
        for task, value in result.items():
            print(f"{task}: {value}")
    return 0
