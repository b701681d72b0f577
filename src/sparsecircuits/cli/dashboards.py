"""`sparsecircuits dashboards`: feature dashboards for every latent of some dictionaries."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from sparsecircuits.cli.common import add_overwrite_argument, at_least, prepare_out

DEFAULT_OUT = "runs/dashboards"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `dashboards` subcommand."""
    p = sub.add_parser(
        "dashboards",
        help="feature dashboards (top examples, quantiles, histograms, logits) from one pass over a dataset",
        description="Compute dashboards for every latent of the transcoders (or --dictionary folders) in ONE "
        "pass over a dataset. Writes OUT/index.json and one safetensors file per dictionary; "
        "`sparsecircuits serve` shows them.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--model", default="embedded")
    p.add_argument(
        "--transcoders",
        default="embedded",
        help='folder of per-layer transcoders, hf://ORG/REPO[/SUBPATH], a preset, or "embedded"',
    )
    p.add_argument(
        "--dictionary",
        action="append",
        default=[],
        help="a saved dictionary folder (or a folder of several), hf://ORG/REPO[/SUBPATH] or a preset; "
        "repeatable; replaces --transcoders",
    )
    p.add_argument(
        "--dataset",
        default="embedded",
        help='"embedded", a text/jsonl/parquet path, or hf:NAME[:split]',
    )
    p.add_argument(
        "--tokens", type=at_least(1), default=200_000, help="tokens to read (default 200000)"
    )
    p.add_argument("--context-size", type=at_least(2), default=128)
    p.add_argument("--batch-size", type=at_least(1), default=16, help="contexts per forward pass")
    p.add_argument(
        "--n-top", type=at_least(1), default=20, help="top activating examples per latent"
    )
    p.add_argument(
        "--n-samples", type=at_least(0), default=40, help="random activating examples per latent"
    )
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--circuit-tracer-features",
        action="store_true",
        help="also write OUT/features/ in circuit-tracer's feature-file layout (index.json.gz + .bin)",
    )
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and save the dashboards; print a one-line summary per dictionary."""
    from sparsecircuits.data import TokenBatcher
    from sparsecircuits.dictionaries import PerLayerTranscoders, SparseCoder, load_transcoders
    from sparsecircuits.interpret import DashboardConfig, compute_dashboards, save_dashboards
    from sparsecircuits.models import load_model
    from sparsecircuits.pipelines import check_compatible, context_stream, load_dictionaries

    out = prepare_out(args.out, ("index.json",), args.overwrite)
    adapter = load_model(args.model, device=args.device)
    dictionaries: dict[str, SparseCoder]
    if args.dictionary:
        dictionaries = load_dictionaries(args.dictionary, device=adapter.device)
    else:
        transcoders = load_transcoders(args.transcoders, device=adapter.device)
        if isinstance(transcoders, PerLayerTranscoders):
            dictionaries = {f"layer{layer}": tc for layer, tc in transcoders.items()}
        else:  # a cross-layer transcoder: one dashboard set per layer
            dictionaries = {Path(args.transcoders).name or "transcoders": transcoders}
    check_compatible(adapter, dictionaries)
    n_contexts = max(1, args.tokens // args.context_size)
    contexts = itertools.islice(
        context_stream(adapter, args.dataset, args.context_size), n_contexts
    )
    batches = TokenBatcher(contexts, args.batch_size)
    config = DashboardConfig(n_top=args.n_top, n_samples=args.n_samples)
    dashboards = compute_dashboards(adapter, dictionaries, batches, config, progress=not args.quiet)
    folder = save_dashboards(dashboards, out)
    for name, dash in dashboards.items():
        alive = int((dash.fire_counts > 0).sum())
        record = {"name": name, "d_sae": dash.d_sae, "n_tokens": dash.n_tokens, "alive": alive}
        print(json.dumps(record))
    if args.circuit_tracer_features:
        from sparsecircuits.interpret import load_dashboards
        from sparsecircuits.interpret.feature_files import write_feature_files

        print(f"wrote {write_feature_files(load_dashboards(folder), folder)}")
    print(f"wrote {folder}; view with: sparsecircuits serve DIR --dashboards {folder}")
    return 0
