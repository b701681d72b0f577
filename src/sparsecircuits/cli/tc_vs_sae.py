"""`sparsecircuits tc-vs-sae`: TopK transcoders vs TopK SAEs at matched L0, trained to convergence."""

from __future__ import annotations

import argparse
import shutil

from sparsecircuits.cli.common import at_least, check_out_folder, config_from_args
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.pipelines.convergence import (
    CRITERIA,
    RESULTS_FILE,
    ConvergenceConfig,
    read_rows,
    run_convergence,
)
from sparsecircuits.pipelines.convergence_report import write_report

DEFAULT_OUT = "out/tc-vs-sae"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give a fraction in (0, 1)")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `tc-vs-sae` subcommand."""
    defaults = ConvergenceConfig()
    p = sub.add_parser(
        "tc-vs-sae",
        help="TopK transcoders vs TopK SAEs at matched L0, each trained until its spliced loss "
        "stops improving; table and frontier plot",
        description="Train a TopK transcoder (MLP input -> output) and a TopK SAE (on the MLP "
        "output) for every k, layer and seed on doubling token budgets; after each budget evaluate "
        "spliced CE, CE increase, CE recovered, KL, FVU and L0 on held-out contexts, and stop a "
        "configuration (layer, kind, k) once its seed-mean spliced CE improves by less than "
        "--tolerance per doubling (--criterion ce_increase: the CE increase instead); a "
        "transcoder and its SAE stop together once both have. Writes results.jsonl (one row per "
        "configuration, seed and budget, appended as they come; rerun the same command to "
        "resume, or with a larger --max-budget or another --tolerance/--criterion to continue "
        "from the checkpoints), summary.json, table.md, frontier.png and budgets.png.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--model", default=defaults.model, help="model (default: embedded)")
    p.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="training text (default: the embedded model's training corpus, built by "
        "scripts/embedded/build_corpus.py)",
    )
    p.add_argument(
        "--eval-dataset",
        default=defaults.eval_dataset,
        help="evaluation text; its first --eval-contexts contexts are used (default: the embedded "
        "model's held-out prose)",
    )
    p.add_argument("--layers", type=_int_list, help="comma-separated layers (default: all)")
    p.add_argument("--ks", type=_int_list, default=defaults.ks, help="comma-separated k (16,32,64)")
    p.add_argument("--seeds", type=at_least(1), default=len(defaults.seeds), help="seeds (3)")
    p.add_argument("--d-sae", type=at_least(1), default=defaults.d_sae, help="latents (2048)")
    p.add_argument(
        "--first-budget", type=at_least(1), default=defaults.first_budget, help="tokens (262144)"
    )
    p.add_argument(
        "--max-budget", type=at_least(1), default=defaults.max_budget, help="tokens (16777216)"
    )
    p.add_argument(
        "--tolerance",
        type=_fraction,
        default=defaults.tolerance,
        help="stop when a doubling improves the criterion by less than this fraction (0.01)",
    )
    p.add_argument(
        "--criterion",
        choices=CRITERIA,
        default=defaults.criterion,
        help="ce: spliced CE (default); ce_increase: spliced CE − clean CE (far stricter)",
    )
    p.add_argument("--batch-tokens", type=at_least(1), default=defaults.batch_tokens)
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (0.003)")
    p.add_argument("--context-size", type=at_least(2), default=defaults.context_size)
    p.add_argument("--eval-contexts", type=at_least(1), default=defaults.eval_contexts, help="(64)")
    p.add_argument("--buffer-tokens", type=at_least(1), default=defaults.buffer_tokens)
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only rewrite summary.json, table.md and the plots from --out's results.jsonl",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete --out's results and checkpoints first"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run or resume the sweep (or only its report); print the table."""
    cfg = config_from_args(args, ConvergenceConfig, seeds=list(range(args.seeds)))
    out = check_out_folder(cfg.out)
    if args.report_only:
        rows = read_rows(out / RESULTS_FILE)
        if not rows:
            raise SparseCircuitsError(f"{out / RESULTS_FILE} holds no results; run the sweep first")
    else:
        if args.overwrite:
            (out / RESULTS_FILE).unlink(missing_ok=True)
            for seed_dir in out.glob("seed*"):
                shutil.rmtree(seed_dir, ignore_errors=True)
        rows = run_convergence(cfg, quiet=args.quiet)
    write_report(out, rows, cfg)
    print((out / "table.md").read_text())
    return 0
