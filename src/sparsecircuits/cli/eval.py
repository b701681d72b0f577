"""`sparsecircuits eval`: metrics and spliced next-token loss for saved dictionaries."""

from __future__ import annotations

import argparse
import json

from sparsecircuits.cli.common import add_overwrite_argument, at_least, prepare_out
from sparsecircuits.config import torch_dtype
from sparsecircuits.evaluation import evaluate_dictionaries
from sparsecircuits.models import load_model
from sparsecircuits.pipelines import check_compatible, eval_batches, load_dictionaries, write_report


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand."""
    p = sub.add_parser(
        "eval",
        help="evaluate saved dictionaries (L0, FVU, CE loss recovered, KL)",
        description="Evaluate dictionaries saved in SAELens layout on held-out text; writes "
        "metrics.json, frontier.png and summary.md to --out.",
    )
    p.add_argument("dictionaries", nargs="+", help="dictionary folders, or folders holding several")
    p.add_argument("--model", default="embedded")
    p.add_argument("--dataset", default="embedded")
    p.add_argument("--context-size", type=at_least(2), default=128)
    p.add_argument("--contexts", type=at_least(1), default=64, help="number of held-out contexts")
    p.add_argument("--device")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default="runs/eval")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report; print the metrics JSON."""
    out = prepare_out(args.out, ("metrics.json", "frontier.png", "summary.md"), args.overwrite)
    adapter = load_model(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    dictionaries = load_dictionaries(args.dictionaries, device=adapter.device)
    check_compatible(adapter, dictionaries)
    batches = eval_batches(adapter, args.dataset, args.context_size, args.contexts)
    records = evaluate_dictionaries(adapter, dictionaries, batches)
    write_report(out, records, title=f"Dictionaries on {adapter.name}")
    print(json.dumps(records, indent=2))
    return 0
