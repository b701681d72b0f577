"""`sparsecircuits case-study`: reproduce the transcoder paper's circuit case studies."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sparsecircuits.cli.common import (
    add_overwrite_argument,
    at_least,
    config_from_args,
    prepare_out,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `case-study` subcommand (with `greater-than`)."""
    p = sub.add_parser(
        "case-study",
        help="circuit case studies with transcoders (greater-than)",
        description="Run a case study of the transcoder paper on a model with transcoders.",
    )
    studies = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    gt = studies.add_parser(
        "greater-than",
        help="the greater-than circuit: attributions, ablations, features vs neurons, paths",
        description="Find the features and heads behind the greater-than probability difference on "
        "one half of the held-out prompts and measure their effects on the other half in the real "
        "model, with 95 %% bootstrap intervals; writes summary.json, report.md, plots and "
        "graph.json to --out.",
    )
    gt.add_argument("--model", default="embedded")
    gt.add_argument("--transcoders", default="embedded")
    gt.add_argument("--n-prompts", type=at_least(2), default=64)
    gt.add_argument("--max-k", type=at_least(1), default=32, help="features-vs-neurons: largest k")
    gt.add_argument(
        "--corpus-contexts", type=at_least(1), default=48, help="held-out contexts for top examples"
    )
    gt.add_argument("--seed", type=int, default=0)
    gt.add_argument(
        "--random-draws",
        type=at_least(1),
        default=100,
        help="random feature sets per baseline (same layers and positions as the selected features)",
    )
    gt.add_argument(
        "--bootstrap",
        type=at_least(10),
        default=1000,
        help="bootstrap resamples of the evaluation prompts for the 95 %% intervals",
    )
    gt.add_argument("--no-swap", action="store_true", help="skip the second fold (halves swapped)")
    gt.add_argument(
        "--target",
        choices=["logit_diff", "prob_diff"],
        default="logit_diff",
        help="what to attribute: the prob. diff.'s gradient direction, or the mean logit diff.",
    )
    gt.add_argument("--device")
    gt.add_argument("--out", default="runs/case-study/greater-than")
    gt.add_argument("--quiet", action="store_true")
    add_overwrite_argument(gt)
    gt.set_defaults(func=run_greater_than_cli)


def run_greater_than_cli(args: argparse.Namespace) -> int:
    """Run the greater-than case study and print the headline numbers."""
    from sparsecircuits.circuits.case_studies.greater_than import (
        GreaterThanConfig,
        run_greater_than,
    )

    writes = ("summary.json", "report.md", "graph.json")
    prepare_out(args.out, writes, args.overwrite)
    cfg = config_from_args(args, GreaterThanConfig, swap_halves=not args.no_swap)
    summary = run_greater_than(cfg, args.out, quiet=args.quiet)
    keys = (
        "prob_diff_clean",
        "prob_diff_replacement",
        "top10_ablation_drop",
        "random10_ablation_drop",
        "top10_minus_random10_drop",
    )
    headline: dict[str, Any] = {k: [summary[k], summary[f"{k}_ci"]] for k in keys}
    headline["in_sample"] = {k: summary["in_sample"][k] for k in keys[:4]}
    print(json.dumps(headline, indent=1))
    print(f"report: {args.out}/report.md")
    return 0
