"""Argument helpers shared by subcommands: config files, flag overrides, output folders."""

from __future__ import annotations

import argparse
from typing import Any

from sparsecircuits.config import from_dict, read_config_file
from sparsecircuits.runs import RunConfig


def add_run_arguments(p: argparse.ArgumentParser, *, default_out: str) -> None:
    """Add the flags that override a `RunConfig` (model, data, one dictionary, training)."""
    p.add_argument("--config", help="YAML or JSON file with RunConfig fields (flags override it)")
    p.add_argument("--model", help='hub id, local model folder, or "embedded" (default)')
    p.add_argument(
        "--dataset", help='"embedded", a .txt/.jsonl/.parquet file or folder, or hf:NAME[:split]'
    )
    p.add_argument("--out", default=None, help=f"output folder (default {default_out})")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--context-size", type=int)
    p.add_argument(
        "--kind",
        choices=["transcoder", "sae", "skip_transcoder", "clt"],
        help="one dictionary's kind (clt: a cross-layer transcoder over layers 0..n_layers-1)",
    )
    p.add_argument("--architecture", help="activation: topk, relu, ...")
    p.add_argument("--layer", type=int)
    p.add_argument(
        "--n-layers", type=int, help="layers a cross-layer transcoder spans (default: all)"
    )
    p.add_argument("--d-sae", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--l1", type=float, help="L1 coefficient (relu)")
    p.add_argument("--tokens", type=int, help="training tokens")
    p.add_argument("--batch-tokens", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--seed", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_config_from_args(
    args: argparse.Namespace, *, default_out: str, base: dict[str, Any] | None = None
) -> RunConfig:
    """Return the `RunConfig` from `base`, then `--config`, then flags (later wins)."""
    data: dict[str, Any] = dict(base or {})
    if args.config:
        data.update(read_config_file(args.config))
    for flag, key in (
        ("model", "model"),
        ("dataset", "dataset"),
        ("out", "out"),
        ("device", "device"),
        ("dtype", "dtype"),
        ("context_size", "context_size"),
        ("seed", "seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            data[key] = value
    data.setdefault("out", default_out)
    train = dict(data.get("train", {}))
    for flag, key in (
        ("tokens", "total_tokens"),
        ("batch_tokens", "batch_tokens"),
        ("lr", "lr"),
        ("checkpoint_every", "checkpoint_every"),
    ):
        value = getattr(args, flag)
        if value is not None:
            train[key] = value
    data["train"] = train
    overrides = {
        key: getattr(args, flag)
        for flag, key in (
            ("kind", "kind"),
            ("architecture", "architecture"),
            ("layer", "layer"),
            ("n_layers", "n_layers"),
            ("d_sae", "d_sae"),
            ("k", "k"),
            ("l1", "l1_coefficient"),
        )
        if getattr(args, flag) is not None
    }
    if overrides:
        dicts = data.get("dictionaries") or [{}]
        data["dictionaries"] = [{**d, **overrides} for d in dicts]
    return from_dict(RunConfig, data, where=args.config or "flags")
