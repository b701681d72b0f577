"""How well frozen attributions predict the live model: circuit-tracer's faithfulness question.

An attribution-graph edge `s -> t` is the change in target t when source feature s is removed
with attention patterns, norm denominators, errors and every other feature frozen at their
clean values (exact: `tests/circuits/graph` checks it against frozen ablations). The live model
recomputes all of those. On held-out prompts of the embedded model with its shipped transcoders
this script samples source features, ablates each one in the live replacement model
(transcoders spliced in, errors held at their clean values, attention, norms and downstream
features recomputed), and compares the change of every target the source has an edge to —
the pre-activation of each later-layer feature at the same or a later position, and each
de-meaned logit target — with the edge weight.

    python scripts/crosscheck/attribution_faithfulness.py [--sources 32] [--json OUT]

prints one JSON line per edge type (feature->feature, feature->logit) and layer distance
(target layer - source layer; logits count as layer n_layers; an edge with a zero weight,
such as a last-layer feature's to a logit from an earlier position, is not an edge) with the number of edges, the
Pearson and Spearman correlations of attribution vs live effect (over all edges, and over the
tenth with the largest |attribution|), the least-squares slope of effect on attribution, the
share of edges whose sign the live effect shares, and the same comparison against the frozen ablation (which must be
exact: `frozen_max_rel_err`, relative to the largest effect).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.edits import Edits, FeatureEdit
from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState
from sparsecircuits.circuits.verify import max_relative_error, pearson


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation of two `[n]` vectors (nan when undefined)."""

    def ranks(v: Tensor) -> Tensor:
        out = torch.empty_like(v, dtype=torch.float64)
        out[v.argsort()] = torch.arange(v.numel(), dtype=torch.float64)
        return out

    return pearson(ranks(x), ranks(y))


def heldout_prompts(replacement: ReplacementModel, n_each: int) -> list[tuple[str, Tensor]]:
    """`(kind, input_ids [T])` of held-out greater-than, IOI and prose prompts."""
    from sparsecircuits.tasks import prose_contexts
    from sparsecircuits.tasks.greater_than import make_greater_than_prompts
    from sparsecircuits.tasks.ioi import make_ioi_prompts

    tokenizer = replacement.adapter.tokenizer
    prompts = []
    for kind, made in (
        ("greater_than", make_greater_than_prompts(tokenizer, n_each, seed=11)),
        ("ioi", make_ioi_prompts(tokenizer, n_each, seed=11)),
    ):
        for row in range(n_each):
            last = int(made.last_pos[row])
            prompts.append((kind, made.input_ids[row, : last + 1]))
    for row in prose_contexts(tokenizer, n_contexts=n_each, context=17):
        prompts.append(("prose", row))
    return prompts


def _targets(replacement: ReplacementModel, state: ReplacementState, graph: Any) -> Tensor:
    """Every target value of the graph's targets `[b, F + K]` in run `state`: each feature
    node's pre-activation at its position, then each de-meaned logit target at the last one."""
    active = graph.active_features
    values = []
    for layer in sorted(set(active[:, 0].tolist())):
        rows = active[active[:, 0] == layer]
        pre = state.feature_pre[layer][:, rows[:, 1], rows[:, 2]]  # [b, n]
        values.append(pre)
    logits = state.logits[:, -1].double()
    demeaned = logits[:, graph.logit_ids] - logits.mean(-1, keepdim=True)
    return torch.cat([*[v.double() for v in values], demeaned], dim=1)


def measure(
    replacement: ReplacementModel, ids: Tensor, n_sources: int, seed: int
) -> list[dict[str, Any]]:
    """Edges of sampled sources of one prompt: `{kind, distance, attribution, live, frozen}`."""
    graph = build_graph(replacement, ids, GraphConfig(store="all", row_mass=1.0))
    adjacency = graph.adjacency.to_dense()
    active = graph.active_features
    n_features, n_layers = graph.n_features, graph.n_layers
    target_nodes = torch.cat(
        [torch.arange(n_features), graph.logit_index(0) + torch.arange(graph.logit_ids.numel())]
    )
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randperm(n_features, generator=gen)[:n_sources]
    state = replacement.run(ids.reshape(1, -1).to(replacement.device))
    copies = state.select([0] * int(sources.numel()))
    edits = Edits(
        features=[
            FeatureEdit(int(active[s, 0]), int(active[s, 1]), int(active[s, 2]), "ablate", batch=k)
            for k, s in enumerate(sources.tolist())
        ]
    )
    with torch.no_grad():
        clean_live = _targets(replacement, replacement.run_with(copies, None, freeze=False), graph)
        live = _targets(replacement, replacement.run_with(copies, edits, freeze=False), graph)
        clean_frozen = _targets(replacement, replacement.run_with(copies, None, freeze=True), graph)
        frozen = _targets(replacement, replacement.run_with(copies, edits, freeze=True), graph)
    live_effect = (clean_live - live).cpu()  # [S, F + K]: what the source contributed
    frozen_effect = (clean_frozen - frozen).cpu()
    target_layer = torch.cat(
        [active[:, 0], torch.full((graph.logit_ids.numel(),), n_layers, dtype=torch.long)]
    )
    target_pos = torch.cat(
        [active[:, 1], torch.full((graph.logit_ids.numel(),), graph.n_pos - 1, dtype=torch.long)]
    )
    edges = []
    for k, s in enumerate(sources.tolist()):
        layer, pos = int(active[s, 0]), int(active[s, 1])
        reachable = (target_layer > layer) & (target_pos >= pos)
        for j in reachable.nonzero(as_tuple=True)[0].tolist():
            weight = float(adjacency[int(target_nodes[j]), s])
            if weight == 0.0:  # no edge (a last-layer feature before the last position)
                continue
            is_logit = j >= n_features
            edges.append(
                {
                    "kind": "feature->logit" if is_logit else "feature->feature",
                    "distance": int(target_layer[j]) - layer,
                    "attribution": weight,
                    "live": float(live_effect[k, j]),
                    "frozen": float(frozen_effect[k, j]),
                }
            )
    return edges


def summarise(edges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (edge type, layer distance), and one per edge type over all distances."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for edge in edges:
        groups.setdefault((edge["kind"], str(edge["distance"])), []).append(edge)
        groups.setdefault((edge["kind"], "all"), []).append(edge)
    records = []
    for (kind, distance), members in sorted(groups.items()):
        a = torch.tensor([e["attribution"] for e in members], dtype=torch.float64)
        live = torch.tensor([e["live"] for e in members], dtype=torch.float64)
        frozen = torch.tensor([e["frozen"] for e in members], dtype=torch.float64)
        slope = float((a * live).sum() / (a * a).sum()) if float((a * a).sum()) > 0 else None
        top = a.abs() >= a.abs().quantile(0.9)  # the strongest tenth, what a pruned graph keeps
        records.append(
            {
                "edge_type": kind,
                "layer_distance": distance,
                "n_edges": len(members),
                "pearson": round(pearson(a, live), 4),
                "spearman": round(spearman(a, live), 4),
                "slope_live_on_attribution": None if slope is None else round(slope, 4),
                "sign_agreement": round(float(((a > 0) == (live > 0)).double().mean()), 4),
                "n_top_decile": int(top.sum()),
                "pearson_top_decile": round(pearson(a[top], live[top]), 4),
                "spearman_top_decile": round(spearman(a[top], live[top]), 4),
                "frozen_pearson": round(pearson(a, frozen), 6),
                "frozen_max_rel_err": float(f"{max_relative_error(a, frozen):.2e}"),
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=2, help="held-out prompts per kind")
    parser.add_argument("--sources", type=int, default=32, help="source features per prompt")
    parser.add_argument("--json", type=Path, help="also write the records (JSON lines) here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    replacement = ReplacementModel.load("embedded", "embedded", device="cpu")
    edges = []
    for index, (kind, ids) in enumerate(heldout_prompts(replacement, args.prompts)):
        found = measure(replacement, ids, args.sources, seed=index)
        print(f"{kind} prompt {index}: {len(found)} edges", file=sys.stderr)
        edges += found
    records = summarise(edges)
    lines = [json.dumps({"model": "embedded", "n_prompts": 3 * args.prompts, **r}) for r in records]
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
