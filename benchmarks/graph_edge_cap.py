"""What the per-row edge cap of `GraphConfig.max_edges_per_row` costs an attribution graph.

For prompts of the embedded corpus (shipped transcoders) it builds each graph uncapped and
capped, prunes both the default way, and prints one JSON line per (length, cap): stored edges,
the pruned graph's nodes and their overlap with the uncapped graph's (Jaccard), the largest
change of any node's influence, and the replacement / completeness scores.

Usage: python benchmarks/graph_edge_cap.py [--lengths 17,65] [--caps 256,1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import text_contexts  # noqa: E402
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
    parser.add_argument("--lengths", default="17,65")
    parser.add_argument("--caps", default="256,1024")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rm = ReplacementModel.load("embedded", "embedded", device="cpu")
    for n_tokens in (int(x) for x in args.lengths.split(",")):
        ids = text_contexts(rm.adapter, 1, n_tokens)[0]
        start = time.perf_counter()
        full = build_graph(rm, ids, GraphConfig(max_edges_per_row=None))
        seconds = time.perf_counter() - start
        ref, ref_nodes, ref_influence = _summary(full)
        print(json.dumps({"n_tokens": n_tokens, "cap": None, "seconds": round(seconds, 2), **ref}))
        for cap in (int(x) for x in args.caps.split(",")):
            start = time.perf_counter()
            graph = build_graph(rm, ids, GraphConfig(max_edges_per_row=cap))
            seconds = time.perf_counter() - start
            out, _, _ = _summary(graph, ref_nodes, ref_influence)
            print(json.dumps({"n_tokens": n_tokens, "cap": cap, "seconds": round(seconds, 2), **out}))


if __name__ == "__main__":
    main()
