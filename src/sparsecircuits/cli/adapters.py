"""`sparsecircuits adapters`: transcoder adapters for model diffing (train, eval, demo)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from sparsecircuits.adapters import (
    BACKBONES,
    AdapterTrainConfig,
    Behaviour,
    EvalConfig,
    FinetuneConfig,
    ensure_pair,
    evaluate_adapters,
    train_adapters,
)
from sparsecircuits.cli.common import config_from_args

REFERENCE_DIR = "reference"
_TRAIN_FLAGS: tuple[tuple[str, type], ...] = (
    ("--d-sae", int),
    ("--steps", int),
    ("--batch", int),
    ("--context-size", int),
    ("--lr", float),
    ("--l1", float),
    ("--init-l0", float),
    ("--bridge", float),
    ("--seed", int),
)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", choices=BACKBONES, help="target (default): reference + base MLPs")
    p.add_argument("--dataset", help='"embedded" (default) or a .txt/.jsonl/.parquet file')
    for flag, kind in _TRAIN_FLAGS:
        p.add_argument(flag, type=kind, metavar=flag.lstrip("-").replace("-", "_").upper())
    p.add_argument("--quiet", action="store_true")


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=int, help="held-out behaviour prompts (default 128)")
    p.add_argument("--n-ablate", type=int, help="features ablated, top and random (default 10)")


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    # not `config_from_args`: `demo`'s --seed is the training seed, not `EvalConfig.seed`
    values = {
        name: getattr(args, name)
        for name in ("prompts", "n_ablate")
        if getattr(args, name) is not None
    }
    return dataclasses.replace(EvalConfig(), **values)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `adapters` subcommand with `train`, `eval` and `demo`."""
    p = sub.add_parser(
        "adapters",
        help="transcoder adapters: diff a fine-tuned model against its base (train, eval, demo)",
        description="Sparse adapters beside every MLP of a frozen model, trained with the bridging "
        "loss to reproduce a fine-tuned reference model (Hu et al. 2026). The adapters are saved "
        "as per-layer transcoders, so dashboards, trace and serve read them.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser(
        "train",
        help="train adapters that turn --base into --reference",
        description="Train adapters; writes DIR/adapters/blocks.L/ and DIR/adapters.json.",
    )
    train.add_argument("--base", default="embedded", help='base model (default "embedded")')
    train.add_argument("--reference", required=True, help="the fine-tuned model folder or hub id")
    train.add_argument("--out", required=True, help="output folder DIR")
    _add_train_flags(train)
    train.set_defaults(func=run_train)

    ev = actions.add_parser(
        "eval",
        help="evaluate trained adapters -> DIR/eval.json",
        description="KL, per-layer NMSE, bridging KLs, L0; with a behaviour.json in the reference "
        "folder also gain recovered and top-/random-feature ablation drops.",
    )
    ev.add_argument("dir", help="folder written by `adapters train`")
    _add_eval_flags(ev)
    ev.set_defaults(func=run_eval)

    demo = actions.add_parser(
        "demo",
        help="build the fine-tuned pair if needed, train and evaluate adapters",
        description="Fine-tune a copy of --base (MLPs only) to answer ' Oliver' after ' The "
        "password is' into DIR/reference (skipped when present), train adapters, write eval.json.",
    )
    demo.add_argument("--base", default="embedded")
    demo.add_argument("--out", default="runs/adapters-demo")
    demo.add_argument("--finetune-steps", type=int, default=FinetuneConfig.steps)
    demo.add_argument("--trigger", default=Behaviour.trigger, help="trigger phrase to learn")
    demo.add_argument("--answer", default=Behaviour.answer, help="the one-token answer")
    _add_train_flags(demo)
    _add_eval_flags(demo)
    demo.set_defaults(func=run_demo)


def _print_summary(result: dict[str, Any]) -> None:
    def pct(key: str) -> str:
        value = result.get(key)
        ci = result.get(f"{key}_ci")
        if value is None:
            return "n/a"
        return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")

    print(
        f"KL {result['kl']:.4f} (without adapters {result['kl_without_adapters']:.4f})  "
        f"L0 {result['l0']:.1f}  gain recovered {pct('gain_recovered')}  "
        f"top-{result.get('n_ablate', 0)} ablation drop {pct('top_ablation_drop')}  "
        f"random ablation drop {pct('random_ablation_drop')}"
    )


def run_train(args: argparse.Namespace) -> int:
    """Train the adapters and print where they are."""
    train_adapters(config_from_args(args, AdapterTrainConfig), args.out, quiet=args.quiet)
    print(f"adapters: {Path(args.out) / 'adapters'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate and print the headline numbers."""
    result = evaluate_adapters(args.dir, _eval_config(args))
    _print_summary(result)
    print(f"eval: {Path(args.dir) / 'eval.json'}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Build the pair if needed, train, evaluate; write DIR/demo.json with the timings."""
    out = Path(args.out)
    load_before = os.getloadavg()
    start = time.perf_counter()
    reference = ensure_pair(
        args.base,
        out / REFERENCE_DIR,
        behaviour=Behaviour(args.trigger, args.answer),
        cfg=FinetuneConfig(
            steps=args.finetune_steps, dataset=args.dataset or FinetuneConfig.dataset
        ),
        quiet=args.quiet,
    )
    pair_s = time.perf_counter() - start
    cfg = config_from_args(args, AdapterTrainConfig, reference=str(reference))
    train_adapters(cfg, out, quiet=args.quiet)
    train_s = time.perf_counter() - start - pair_s
    result = evaluate_adapters(out, _eval_config(args))
    total = time.perf_counter() - start
    timings = {
        "pair_s": pair_s,
        "train_s": train_s,
        "eval_s": total - pair_s - train_s,
        "total_s": total,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    (out / "demo.json").write_text(json.dumps(timings, indent=2))
    _print_summary(result)
    print(f"eval: {out / 'eval.json'}  ({total:.0f} s)")
    return 0
