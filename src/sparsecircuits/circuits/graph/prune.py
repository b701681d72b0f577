"""Influence, pruning and graph scores on a sparse adjacency, as circuit-tracer defines them
(definitions in docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError


@dataclass
class SparseAdjacency:
    """Stored edges of an `n_nodes`-node graph in COO form: `targets`, `sources` `[nnz]` int32,
    `weights` `[nnz]` float32 (signed direct effects), and `row_abs_sums [n_nodes]` float64, the exact
    sum of |A[target, :]| over all sources, stored or not."""

    n_nodes: int
    targets: Tensor
    sources: Tensor
    weights: Tensor
    row_abs_sums: Tensor

    @property
    def nnz(self) -> int:
        """Number of stored edges."""
        return int(self.weights.numel())

    def to_dense(self) -> Tensor:
        """The adjacency as a dense `[n_nodes, n_nodes]` matrix (small graphs and tests only)."""
        dense = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.weights.dtype)
        dense[self.targets, self.sources] = self.weights
        return dense

    @classmethod
    def from_dense(cls, matrix: Tensor) -> SparseAdjacency:
        """Every non-zero entry of a dense `[n, n]` adjacency (rows = targets)."""
        targets, sources = matrix.nonzero(as_tuple=True)
        return cls(
            matrix.shape[0],
            targets.int(),
            sources.int(),
            matrix[targets, sources],
            matrix.abs().sum(1, dtype=torch.float64),
        )


def normalized_weights(adj: SparseAdjacency) -> Tensor:
    """`|A| / row sum` for every stored edge, `[nnz]` float64."""
    return adj.weights.abs().double() / adj.row_abs_sums[adj.targets].clamp_min(1e-10)


def compute_influence(
    targets: Tensor,
    sources: Tensor,
    values: Tensor,
    n_nodes: int,
    weights: Tensor,
    max_iter: int = 1000,
) -> Tensor:
    """`w A + w A^2 + ...` for the sparse matrix `A[targets, sources] = values`; `[n_nodes]` float64."""
    values = values.double()

    def step(vector: Tensor) -> Tensor:
        return torch.zeros(n_nodes, dtype=torch.float64).index_add_(
            0, sources, vector[targets] * values
        )

    current = step(weights.double())
    influence = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return influence
        current = step(current)
        influence += current
    raise SparseCircuitsError(
        f"influence did not converge in {max_iter} steps: the graph has a cycle"
    )


def find_threshold(scores: Tensor, threshold: float) -> float:
    """The score keeping `threshold` of the total (circuit-tracer's `find_threshold`)."""
    if not 0.0 <= threshold <= 1.0:
        raise SparseCircuitsError(f"thresholds must lie in [0, 1], got {threshold}")
    sorted_scores = torch.sort(scores.double(), descending=True).values
    total = sorted_scores.sum()
    if sorted_scores.numel() == 0 or float(total) <= 0:
        return 0.0
    cumulative = torch.cumsum(sorted_scores, 0) / total
    index = int(
        torch.searchsorted(cumulative, torch.tensor([threshold], dtype=torch.float64)).item()
    )
    n_nonzero = int((sorted_scores > 0).sum())
    index = min(index, max(n_nonzero - 1, 0))
    return float(sorted_scores[index])


@dataclass
class PruneResult:
    """Masks over nodes `[n_nodes]` and stored edges `[nnz]`, and each node's cumulative influence rank."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor
    node_influence: Tensor


def logit_weight_vector(n_nodes: int, logit_probs: Tensor) -> Tensor:
    """`[n_nodes]` float64: the logit probabilities on the last K nodes, 0 elsewhere."""
    weights = torch.zeros(n_nodes, dtype=torch.float64)
    if logit_probs.numel():
        weights[-logit_probs.numel() :] = logit_probs.double()
    return weights


def influential_nodes(influence: Tensor, node_threshold: float, n_always: int) -> Tensor:
    """`[n_nodes]` bool: nodes whose influence reaches `find_threshold(influence,
    node_threshold)`, plus the last `n_always` nodes (tokens and logits) always."""
    mask = influence >= find_threshold(influence, node_threshold)
    mask[influence.numel() - n_always :] = True
    return mask


def prune_graph(
    adj: SparseAdjacency,
    logit_probs: Tensor,
    n_features: int,
    n_tokens: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    node_influence: Tensor | None = None,
) -> PruneResult:
    """Prune by influence on the logits (docs/internals.md); node layout `[F | errors | T | K]`.

    `node_influence [n_nodes]`, when given, is the full graph's influence (for an adjacency that
    holds only the edges among the nodes passing the threshold; see `GraphConfig.store`)."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise SparseCircuitsError(f"{name} must lie in [0, 1], got {value}")
    n = adj.n_nodes
    n_logits = int(logit_probs.numel())
    logit_weights = logit_weight_vector(n, logit_probs)
    always = n - n_logits - n_tokens  # tokens and logits start here

    if node_influence is None:
        node_influence = compute_influence(
            adj.targets, adj.sources, normalized_weights(adj), n, logit_weights
        )
    node_mask = influential_nodes(node_influence, node_threshold, n_tokens + n_logits)

    kept = node_mask[adj.targets] & node_mask[adj.sources]
    t, s = adj.targets[kept], adj.sources[kept]
    abs_w = adj.weights[kept].abs().double()
    row_sums = torch.zeros(n, dtype=torch.float64).index_add_(0, t, abs_w)
    pruned_norm = abs_w / row_sums[t].clamp_min(1e-10)
    pruned_influence = compute_influence(t, s, pruned_norm, n, logit_weights) + logit_weights
    scores = pruned_norm * pruned_influence[t]
    kept_mask = scores >= find_threshold(scores, edge_threshold)
    edge_mask = torch.zeros(adj.nnz, dtype=torch.bool)
    edge_mask[kept.nonzero(as_tuple=True)[0]] = kept_mask

    is_feature = torch.zeros(n, dtype=torch.bool)
    is_feature[:n_features] = True
    is_source_kind = torch.zeros(n, dtype=torch.bool)
    is_source_kind[:always] = True  # features and errors must have outgoing edges
    while True:
        edge_mask &= node_mask[adj.targets] & node_mask[adj.sources]
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[adj.sources[edge_mask]] = True
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[adj.targets[edge_mask]] = True
        new_mask = node_mask & ~(is_source_kind & ~has_out) & ~(is_feature & ~has_in)
        if torch.equal(new_mask, node_mask):
            break
        node_mask = new_mask

    sorted_scores, order = torch.sort(node_influence, descending=True)
    total = sorted_scores.sum()
    cumulative = torch.cumsum(sorted_scores, 0) / (total if float(total) > 0 else 1.0)
    cumulative_scores = torch.zeros_like(node_influence)
    cumulative_scores[order] = cumulative
    return PruneResult(node_mask, edge_mask, cumulative_scores, node_influence)


def graph_scores(
    adj: SparseAdjacency,
    logit_probs: Tensor,
    n_features: int,
    n_errors: int,
    n_tokens: int,
    node_influence: Tensor | None = None,
) -> tuple[float, float]:
    """`(replacement_score, completeness_score)` of the unpruned graph (docs/internals.md).

    `node_influence` (from `prune_graph`) saves recomputing the influence."""
    n = adj.n_nodes
    logit_weights = logit_weight_vector(n, logit_probs)
    normalized = normalized_weights(adj)
    influence = node_influence  # the unpruned graph's, as `prune_graph` returns it
    if influence is None:
        influence = compute_influence(adj.targets, adj.sources, normalized, n, logit_weights)
    err_lo, err_hi = n_features, n_features + n_errors
    from_error = (adj.sources >= err_lo) & (adj.sources < err_hi)
    error_fraction = torch.zeros(n, dtype=torch.float64).index_add_(
        0, adj.targets[from_error], normalized[from_error]
    )
    return scores_from(influence, error_fraction, logit_weights, n_features, n_errors, n_tokens)


def scores_from(
    influence: Tensor,
    error_fraction: Tensor,
    logit_weights: Tensor,
    n_features: int,
    n_errors: int,
    n_tokens: int,
) -> tuple[float, float]:
    """`(replacement, completeness)` from node influence, each target's normalised incoming
    weight from error nodes and the logit weights (all `[n_nodes]` float64)."""
    err_lo, err_hi = n_features, n_features + n_errors
    token_influence = influence[err_hi : err_hi + n_tokens].sum()
    denominator = token_influence + influence[err_lo:err_hi].sum()
    replacement = float(token_influence / denominator) if float(denominator) > 0 else 0.0
    output_influence = influence + logit_weights
    completeness = float(
        ((1 - error_fraction) * output_influence).sum() / output_influence.sum().clamp_min(1e-300)
    )
    return replacement, completeness
