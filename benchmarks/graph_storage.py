"""What an attribution graph's storage options cost and change: `GraphConfig.store =
"influential"` (stream the rows, keep only the edges among nodes passing the node threshold),
`edge_budget` and `max_edges_per_row` (bounded rows), each against the full exact graph.

For prompts of the embedded corpus (shipped transcoders) it builds each graph exactly (every
row, no budget, no cap) and with each setting, prunes both the default way, and prints one JSON
line per (length, setting): seconds, stored edges, peak RSS growth, the pruned graph's nodes and
their overlap with the exact graph's (Jaccard), the largest change of any node's influence, and
the replacement / completeness scores.

Usage: python benchmarks/graph_storage.py [--lengths 65,256] [--stores influential]
                                          [--budgets 50000000] [--caps 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    current_rss_mb,
    peak_rss_mb,
    release_free_memory,
    reset_peak_rss,
    text_contexts,
)
from sparsecircuits.circuits.graph.build import GraphConfig, build_graph  # noqa: E402
from sparsecircuits.circuits.replacement import ReplacementModel  # noqa: E402


def _summary(graph, reference_nodes=None, reference_influence=None):  # type: ignore[no-untyped-def]
    pruned = graph.prune()
    replacement, completeness = graph.scores()
    nodes = set(pruned.node_mask.nonzero(as_tuple=True)[0].tolist())
    out = {
        "n_edges": int(graph.adjacency.weights.numel()),
        "pruned_nodes": len(nodes),
        "replacement_score": round(replacement, 4),
        "completeness_score": round(completeness, 4),
    }
    if reference_nodes is not None:
        out["pruned_node_jaccard_vs_uncapped"] = round(
            len(nodes & reference_nodes) / max(1, len(nodes | reference_nodes)), 4
        )
        delta = (pruned.node_influence - reference_influence).abs().max()
        out["max_node_influence_change"] = float(delta)
    return out, nodes, pruned.node_influence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", default="65,256")
    parser.add_argument("--stores", default="influential")
    parser.add_argument("--budgets", default="50000000")
    parser.add_argument("--caps", default="")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rm = ReplacementModel.load("embedded", "embedded", device="cpu")
    settings: list[tuple[str, object]] = [("store", v) for v in args.stores.split(",") if v]
    settings += [("edge_budget", int(b)) for b in args.budgets.split(",") if b]
    settings += [("max_edges_per_row", int(c)) for c in args.caps.split(",") if c]
    for n_tokens in (int(x) for x in args.lengths.split(",")):
        ids = text_contexts(rm.adapter, 1, n_tokens)[0]
        full, seconds, peak = _timed(rm, ids, GraphConfig(edge_budget=None, store="all"))
        ref, ref_nodes, ref_influence = _summary(full)
        print(json.dumps({"n_tokens": n_tokens, "setting": "exact", **seconds, **peak, **ref}))
        del full
        for key, value in settings:
            config = GraphConfig(**{"edge_budget": None, "store": "all", key: value})
            graph, seconds, peak = _timed(rm, ids, config)
            out, _, _ = _summary(graph, ref_nodes, ref_influence)
            row = {"n_tokens": n_tokens, "setting": f"{key}={value}", **seconds, **peak, **out}
            print(json.dumps(row), flush=True)


def _timed(rm, ids, config):  # type: ignore[no-untyped-def]
    """Build one graph; return it, its seconds and its peak RSS growth (MiB)."""
    release_free_memory()
    before = current_rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    graph = build_graph(rm, ids, config)
    seconds = {"seconds": round(time.perf_counter() - start, 2)}
    return graph, seconds, {"graph_peak_delta_mb": round(peak_rss_mb() - before, 1)}


if __name__ == "__main__":
    main()
