"""Replacement and completeness scores of a graph JSON, or of a pinned subgraph of it.

The definitions are circuit-tracer's `compute_graph_scores`: with `A` the adjacency
(`A[target, source]`, the graph's link weights), `N = |A|` row-normalised and `w` the logit
probabilities on the logit nodes, node influence is `w N + w N^2 + ...`;

    replacement  = influence(tokens) / (influence(tokens) + influence(errors))
    completeness = sum_i (1 - sum_{j error} N[i, j]) (influence_i + w_i) / sum_i (influence_i + w_i)

For a subgraph, the pinned features are the explanation and every other feature counts as
unexplained: unpinned features join the error nodes (as leaves, their own inputs dropped, as
circuit-tracer's error nodes have none). Token and logit nodes always belong to the subgraph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from sparsecircuits.circuits.graph.neuronpedia import (
    FEATURE_TYPE_EMBEDDING,
    FEATURE_TYPE_ERROR,
    FEATURE_TYPE_LOGIT,
)
from sparsecircuits.errors import SparseCircuitsError

_MAX_ITER = 1000


def node_roles(graph: dict[str, Any], pinned: Iterable[str] | None = None) -> list[str]:
    """The role of each node of `graph["nodes"]`, in order: "feature", "error", "token" or "logit".

    With `pinned` (node ids; an empty or None value means the whole graph), features that are
    not pinned get the role "error".
    """
    keep = set(pinned or ())
    roles = []
    for node in graph["nodes"]:
        kind = node.get("feature_type")
        if kind == FEATURE_TYPE_EMBEDDING:
            roles.append("token")
        elif kind == FEATURE_TYPE_LOGIT:
            roles.append("logit")
        elif kind == FEATURE_TYPE_ERROR or (keep and node["node_id"] not in keep):
            roles.append("error")
        else:
            roles.append("feature")
    return roles


def graph_scores(graph: dict[str, Any], pinned: Iterable[str] | None = None) -> dict[str, Any]:
    """`{"replacement", "completeness", "n_features", "n_errors"}` of `graph` (a graph JSON dict).

    `pinned` restricts the explanation to those node ids (see the module docstring); unknown
    ids raise `SparseCircuitsError`.
    """
    nodes = graph.get("nodes") or []
    index = {node["node_id"]: i for i, node in enumerate(nodes)}
    pinned = list(pinned or ())
    unknown = [p for p in pinned if p not in index]
    if unknown:
        raise SparseCircuitsError(f"pinned ids not in the graph: {', '.join(unknown[:5])}")
    roles = node_roles(graph, pinned)
    n = len(nodes)
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    for link in graph.get("links") or []:
        s, t = index.get(link["source"]), index.get(link["target"])
        if s is not None and t is not None:
            adjacency[t, s] += float(link["weight"])
    is_error = torch.tensor([r == "error" for r in roles], dtype=torch.bool)
    is_token = torch.tensor([r == "token" for r in roles], dtype=torch.bool)
    # unexplained nodes are leaves, as circuit-tracer's error nodes are
    adjacency[is_error] = 0.0
    logit_weights = torch.tensor(
        [
            float(node.get("token_prob") or 0.0) if r == "logit" else 0.0
            for node, r in zip(nodes, roles, strict=True)
        ],
        dtype=torch.float64,
    )
    normalized = adjacency.abs()
    normalized = normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-10)
    influence = _influence(normalized, logit_weights)
    token_influence = float(influence[is_token].sum())
    error_influence = float(influence[is_error].sum())
    total = token_influence + error_influence
    replacement = token_influence / total if total > 0 else float("nan")
    non_error = 1.0 - normalized[:, is_error].sum(dim=1)
    output_influence = influence + logit_weights
    denominator = float(output_influence.sum())
    completeness = (
        float((non_error * output_influence).sum()) / denominator
        if denominator > 0
        else float("nan")
    )
    return {
        "replacement": replacement,
        "completeness": completeness,
        "n_features": roles.count("feature"),
        "n_errors": roles.count("error"),
    }


def _influence(normalized: torch.Tensor, logit_weights: torch.Tensor) -> torch.Tensor:
    """`w N + w N^2 + ...` `[n]`, summed until the (acyclic) graph has no longer paths."""
    current = logit_weights @ normalized
    total = current.clone()
    for _ in range(_MAX_ITER):
        if not bool(current.any()):
            return total
        current = current @ normalized
        total += current
    raise SparseCircuitsError("the graph has a cycle: influence does not converge")
