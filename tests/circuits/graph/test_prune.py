"""Sparse pruning equals a dense implementation of circuit-tracer's definitions."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.graph.prune import (
    SparseAdjacency,
    compute_influence,
    find_threshold,
    graph_scores,
    normalized_weights,
    prune_graph,
)
from sparsecircuits.errors import SparseCircuitsError

N_FEAT, N_ERR, N_TOK, N_LOGIT = 30, 12, 4, 3


def random_graph(seed: int, density: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """A random DAG in node layout [F | E | T | K]: features and logits are the only targets."""
    gen = torch.Generator().manual_seed(seed)
    n = N_FEAT + N_ERR + N_TOK + N_LOGIT
    # topological rank: errors and tokens first, then features in order, then logits
    rank = torch.cat(
        [
            torch.arange(N_FEAT) + 20,
            torch.arange(N_ERR) % 10,
            torch.zeros(N_TOK),
            torch.full((N_LOGIT,), 99),
        ]
    )
    allowed = rank[None, :] < rank[:, None]
    allowed[N_FEAT : N_FEAT + N_ERR + N_TOK] = False  # errors and tokens have no incoming edges
    weights = (
        torch.randn(n, n, generator=gen, dtype=torch.float64)
        * torch.rand(n, n, generator=gen, dtype=torch.float64) ** 3
    )
    mask = allowed & (torch.rand(n, n, generator=gen) < density)
    probs = torch.softmax(torch.randn(N_LOGIT, generator=gen, dtype=torch.float64), 0)
    return (weights * mask).float(), probs.float()


# ---------------------------------------------------------------- dense reference (circuit-tracer)
def ref_normalize(a):
    a = a.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def ref_influence(a, w):
    current = w @ a
    total = current.clone()
    while current.any():
        current = current @ a
        total += current
    return total


def ref_prune(a, probs, node_threshold, edge_threshold):
    a = a.double()
    n = a.shape[0]
    w = torch.zeros(n, dtype=torch.float64)
    w[-N_LOGIT:] = probs.double()
    influence = ref_influence(ref_normalize(a), w)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[-N_LOGIT - N_TOK :] = True
    pruned = a.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = ref_normalize(pruned)
    scores = norm * (ref_influence(norm, w) + w)[:, None]
    edge_mask = scores >= find_threshold(scores.flatten(), edge_threshold)
    old = None
    while old is None or not torch.equal(old, node_mask):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: -N_LOGIT - N_TOK] &= edge_mask[:, : -N_LOGIT - N_TOK].any(0)
        node_mask[:N_FEAT] &= edge_mask[:N_FEAT].any(1)
    return node_mask, edge_mask, influence


def ref_scores(a, probs):
    a = a.double()
    n = a.shape[0]
    w = torch.zeros(n, dtype=torch.float64)
    w[-N_LOGIT:] = probs.double()
    norm = ref_normalize(a)
    influence = ref_influence(norm, w)
    tok = influence[N_FEAT + N_ERR : N_FEAT + N_ERR + N_TOK].sum()
    err = influence[N_FEAT : N_FEAT + N_ERR].sum()
    non_error = 1 - norm[:, N_FEAT : N_FEAT + N_ERR].sum(-1)
    out = influence + w
    return float(tok / (tok + err)), float((non_error * out).sum() / out.sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.7), (1.0, 1.0)])
def test_sparse_prune_equals_dense_reference(seed, thresholds):
    dense, probs = random_graph(seed)
    adj = SparseAdjacency.from_dense(dense)
    result = prune_graph(adj, probs, N_FEAT, N_TOK, *thresholds)
    node_mask, edge_mask, influence = ref_prune(dense, probs, *thresholds)
    torch.testing.assert_close(result.node_influence, influence)
    assert torch.equal(result.node_mask, node_mask)
    sparse_edges = torch.zeros_like(edge_mask)
    sparse_edges[adj.targets[result.edge_mask], adj.sources[result.edge_mask]] = True
    assert torch.equal(sparse_edges, edge_mask & (dense != 0))
    order = torch.argsort(influence, descending=True)
    assert torch.all(result.cumulative_scores[order].diff() >= -1e-12)
    assert result.cumulative_scores.max() == pytest.approx(1.0)
    if thresholds[0] < 1.0:
        assert node_mask[:N_FEAT].sum() < N_FEAT, "test graph should lose some features"


@pytest.mark.parametrize("seed", range(4))
def test_scores_and_influence_match_reference(seed):
    dense, probs = random_graph(seed)
    adj = SparseAdjacency.from_dense(dense)
    assert graph_scores(adj, probs, N_FEAT, N_ERR, N_TOK) == pytest.approx(ref_scores(dense, probs))
    n = dense.shape[0]
    w = torch.zeros(n, dtype=torch.float64)
    w[-N_LOGIT:] = probs.double()
    norm = ref_normalize(dense.double())
    closed_form = w @ (
        torch.linalg.inv(torch.eye(n, dtype=torch.float64) - norm)
        - torch.eye(n, dtype=torch.float64)
    )
    influence = compute_influence(adj.targets, adj.sources, normalized_weights(adj), n, w)
    torch.testing.assert_close(influence, closed_form)


def test_row_sums_beyond_stored_edges_are_used_for_normalisation():
    dense, probs = random_graph(0)
    adj = SparseAdjacency.from_dense(dense)
    keep = adj.weights.abs() > adj.weights.abs().median()
    truncated = SparseAdjacency(
        adj.n_nodes, adj.targets[keep], adj.sources[keep], adj.weights[keep], adj.row_abs_sums
    )
    torch.testing.assert_close(normalized_weights(truncated), normalized_weights(adj)[keep])


def test_find_threshold_and_errors():
    scores = torch.tensor([0.0625, 0.5, 0.0, 0.25, 0.125, 0.0625])
    assert find_threshold(scores, 0.75) == 0.25
    assert find_threshold(scores, 0.76) == 0.125
    assert find_threshold(scores, 1.0) == 0.0625  # never the zero score
    with pytest.raises(SparseCircuitsError):
        find_threshold(scores, 1.5)
    cyclic = SparseAdjacency(
        2,
        torch.tensor([0, 1]),
        torch.tensor([1, 0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([1.0, 1.0], dtype=torch.float64),
    )
    with pytest.raises(SparseCircuitsError, match="cycle"):
        compute_influence(
            cyclic.targets,
            cyclic.sources,
            normalized_weights(cyclic),
            2,
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            max_iter=50,
        )
