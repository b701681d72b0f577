"""`sparsecircuits demo`: train a TopK transcoder and a TopK SAE on the embedded model and report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparsecircuits.cli.common import add_run_arguments, run_config_from_args
from sparsecircuits.dictionaries import PerLayerTranscoders, load_transcoders
from sparsecircuits.evaluation import evaluate_dictionaries
from sparsecircuits.pipelines import eval_batches, train_run, write_report

DEFAULT_OUT = "out/demo"
DEMO_LAYER = 1

# A TopK transcoder and a TopK SAE at the same width and k, trained from one model forward; the
# report also evaluates the transcoder shipped for that layer (2M training tokens) for reference.
DEMO_DICTIONARIES = [
    {"kind": kind, "architecture": "topk", "layer": DEMO_LAYER, "d_sae": 2048, "k": 32}
    for kind in ("transcoder", "sae")
]
DEMO_RUN = {
    "model": "embedded",
    "dataset": "embedded",
    "context_size": 128,
    "dictionaries": DEMO_DICTIONARIES,
    "train": {"total_tokens": 800_000, "batch_tokens": 4096, "lr": 3e-3, "warmup_steps": 20},
    "eval_contexts": 64,
    # The shipped held-out slice holds ~300k tokens: several passes give the budget above.
    "data_epochs": 4,
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser(
        "demo",
        help="train + evaluate a transcoder and an SAE on the embedded model; write a report",
        description="The end-to-end demo: harvest activations of one layer of the embedded model, "
        "train TopK transcoders and SAEs from one forward, evaluate them (L0, FVU, spliced CE "
        "loss) and write metrics.json, frontier.png, summary.md and the dictionaries to --out.",
    )
    add_run_arguments(p, default_out=DEFAULT_OUT)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, write the report folder; print where it is."""
    start = time.perf_counter()
    cfg = run_config_from_args(args, default_out=DEFAULT_OUT, base=DEMO_RUN)
    out = Path(cfg.out)
    dictionaries, result, adapter = train_run(cfg, quiet=args.quiet, overwrite=args.overwrite)
    batches = eval_batches(adapter, cfg.dataset, cfg.context_size, cfg.eval_contexts)
    evaluated = dict(dictionaries)
    if cfg.model == "embedded":
        layer = adapter.hook_layer(next(iter(dictionaries.values())).cfg.hook_in)
        transcoders = load_transcoders("embedded", device=adapter.device)
        shipped = transcoders.get(layer) if isinstance(transcoders, PerLayerTranscoders) else None
        if shipped is not None:
            evaluated[f"shipped-transcoder-L{layer}"] = shipped
    records = evaluate_dictionaries(adapter, evaluated, batches)
    seconds = time.perf_counter() - start
    extra = (
        f"Model `{adapter.name}`, {result.tokens:,} training tokens per dictionary, "
        f"{result.tokens_per_s:,.0f} tokens/s (harvest + training of {len(dictionaries)} "
        f"dictionaries), {seconds:.0f} s wall clock in all.\n"
    )
    write_report(out, records, title=f"sparsecircuits demo on {adapter.name}", extra_md=extra)
    timings = {
        "seconds": seconds,
        "train_tokens": result.tokens,
        "train_tokens_per_s": result.tokens_per_s,
    }
    (out / "run.json").write_text(json.dumps(timings, indent=2))
    for r in records:
        increase = r["ce_loss_spliced"] - r["ce_loss_clean"]
        print(
            f"{r['name']:<36} L0 {r['l0']:6.1f}  FVU {r['fvu']:.3f}  CE +{increase:.3f}  "
            f"KL {r['kl_div']:.3f}  CE recovered {100 * r['ce_loss_recovered']:5.1f}%"
        )
    print(f"report: {out}/summary.md  ({seconds:.0f} s)")
    return 0
