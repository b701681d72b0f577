"""`sparsecircuits trace`: the attribution graph of one prompt, as Neuronpedia graph JSON."""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = "runs/trace"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `trace` subcommand."""
    p = sub.add_parser(
        "trace",
        help="build the attribution graph of a prompt (Neuronpedia graph JSON)",
        description="Trace a prompt through the model's transcoders: direct effects among all active features, "
        "errors, token embeddings and the top output logits, pruned by influence. Writes OUT/graph.json "
        "and OUT/trace.json (time, memory, sizes, replacement/completeness scores).",
    )
    p.add_argument("prompt", help="the prompt (a BOS token is prepended)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument(
        "--model", default="embedded", help='hub id, local model folder, or "embedded" (default)'
    )
    p.add_argument(
        "--transcoders",
        default="embedded",
        help='folder of per-layer transcoders or a cross-layer transcoder, or "embedded"',
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--slug", help="graph name inside the JSON (default: from the prompt)")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    p.add_argument(
        "--row-mass",
        type=float,
        default=0.999,
        help="per target, keep the largest edges covering this share of |row| (1 = all)",
    )
    p.add_argument(
        "--max-edges-per-row",
        type=int,
        help="cap on stored edges per target (default: none; the edge budget applies)",
    )
    p.add_argument(
        "--edge-budget",
        type=int,
        help="most edges stored in all (each row keeps at most budget / targets; about 12 bytes "
        "each); bounds memory on long prompts but changes pruning (default: none, the exact graph)",
    )
    p.add_argument(
        "--store",
        choices=["influential", "all"],
        default="influential",
        help="influential (default): stream the rows and keep only the edges among nodes passing "
        "--node-threshold (same graph.json, memory linear in the prompt); all: keep every row",
    )
    p.add_argument("--port", type=int, default=8041, help="port printed in the viewer URL")
    p.set_defaults(func=run)


def slugify(text: str) -> str:
    """A short file-system and URL safe name for a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:48].rstrip("-") or "graph"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(args: argparse.Namespace) -> int:
    """Trace, write graph.json + trace.json, print a summary and the viewer URL."""
    start = time.perf_counter()
    from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
    from sparsecircuits.circuits.graph.neuronpedia import save_graph, to_neuronpedia
    from sparsecircuits.circuits.replacement import ReplacementModel

    replacement = ReplacementModel.load(args.model, args.transcoders, device=args.device)
    adapter = replacement.adapter
    loaded = time.perf_counter()
    config = GraphConfig(
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        batch_size=args.batch_size,
        row_mass=args.row_mass,
        max_edges_per_row=args.max_edges_per_row,
        edge_budget=args.edge_budget,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        store=args.store,
    )
    graph = build_graph(replacement, args.prompt, config)
    built = time.perf_counter()
    pruned = graph.prune(args.node_threshold, args.edge_threshold)
    replacement_score, completeness_score = graph.scores()
    slug = args.slug or slugify(args.prompt)
    model = to_neuronpedia(
        graph,
        pruned,
        slug=slug,
        scan=adapter.name,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        generation=config,
    )
    out = Path(args.out)
    save_graph(model, out / "graph.json")
    done = time.perf_counter()
    report: dict[str, Any] = {
        "prompt": args.prompt,
        "n_tokens": graph.n_pos,
        "seconds": round(done - start, 3),
        "seconds_load": round(loaded - start, 3),
        "seconds_graph": round(done - loaded, 3),
        "seconds_build": round(built - loaded, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "n_nodes": len(model.nodes),
        "n_edges": len(model.links),
        "n_nodes_unpruned": graph.n_nodes,
        "n_active_features": graph.n_features,
        "n_edges_stored": graph.adjacency.nnz,
        "replacement_score": replacement_score,
        "completeness_score": completeness_score,
        "device": str(adapter.device),
        "timings": {k: round(v, 3) for k, v in graph.timings.items()},
        "config": vars(config),
    }
    if adapter.device.type == "cuda":
        import torch

        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(adapter.device) / 2**20, 1)
    (out / "trace.json").write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "n_tokens",
                    "seconds",
                    "peak_rss_mb",
                    "n_nodes",
                    "n_edges",
                    "replacement_score",
                    "completeness_score",
                )
            }
        )
    )
    print(f"wrote {out / 'graph.json'}")
    print(
        f"view: sparsecircuits serve {out} --port {args.port}  ->  http://127.0.0.1:{args.port}/#graph=graph.json"
    )
    return 0
