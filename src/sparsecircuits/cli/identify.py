"""`sparsecircuits identify`: find a task's circuit heads from discrete SAE codes (O'Neill & Bui)."""

from __future__ import annotations

import argparse
import json
import sys

from sparsecircuits.circuits.identify.task_pairs import TASKS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `identify` subcommand."""
    p = sub.add_parser(
        "identify",
        help="circuit heads from discrete SAE codes, scored against activation patching",
        description="Identify a task's circuit heads and head pairs from the discrete codes of one "
        "small SAE shared by all heads (O'Neill & Bui 2024), score them (ROC-AUC, PR-AUC, "
        "precision/recall/F1) against a per-head activation-patching ground truth next to "
        "attribution patching and transcoder attributions; writes summary.json and roc.png.",
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="embedded")
    p.add_argument(
        "--transcoders",
        default=None,
        help='transcoder folder for the transcoder baseline ("embedded" by default for the '
        'embedded model; "none" skips it)',
    )
    p.add_argument("--seeds", type=int, default=10, help="SAE seeds (intervals over them)")
    p.add_argument("--n-prompts", type=int, default=250, help="positive (= negative) prompts")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="ground truth: heads whose patching KL effect is at least this fraction of the "
        "whole negative prompt's",
    )
    p.add_argument("--train-prompts", type=int, default=10, help="prompts the SAE trains on")
    p.add_argument("--latents", type=int, default=200)
    p.add_argument("--l1", type=float, help="L1 coefficient (default 0.02; docstring 0.05)")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--split", choices=["dev", "heldout", "train"], default="dev")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the identification and print the headline numbers."""
    from sparsecircuits.cli.common import config_from_args
    from sparsecircuits.pipelines.identify import IdentifyConfig, run_identify

    transcoders = args.transcoders
    if transcoders is None:
        transcoders = "embedded" if args.model == "embedded" else None
    elif transcoders.lower() == "none":
        transcoders = None
    cfg = config_from_args(
        args,
        IdentifyConfig,
        transcoders=transcoders,
        n_train_prompts=args.train_prompts,
        n_latents=args.latents,
    )
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    summary = run_identify(cfg, args.out, log=log)
    keys = ("node_roc_auc", "node_roc_auc_ci", "edge_roc_auc", "edge_roc_auc_ci", "seconds_total")
    headline = {k: summary[k] for k in keys}
    headline["ground_truth_heads"] = summary["ground_truth"]["heads"]
    headline["baselines_node_roc_auc"] = {
        name: b["node_roc_auc"] for name, b in summary["baselines"].items()
    }
    print(json.dumps(headline, indent=1))
    print(f"summary: {args.out}/summary.json  plot: {args.out}/roc.png")
    return 0
