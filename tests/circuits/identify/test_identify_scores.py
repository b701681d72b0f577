"""Node and edge scores of discrete codes against hand-computed examples."""

from __future__ import annotations

import torch

from sparsecircuits.circuits.identify.scores import (
    edge_node_scores,
    edge_scores,
    layer_ordered_pairs,
    node_scores,
)

# 3 prompts x 3 heads
POS = torch.tensor([[0, 5, 1], [1, 5, 1], [2, 6, 1]])
NEG = torch.tensor([[0, 5, 1], [0, 7, 2], [3, 5, 1]])


def test_node_scores_count_codes_unique_to_positives() -> None:
    # head 0: P={0,1,2}, N={0,3} -> {1,2}; head 1: P={5,6}, N={5,7} -> {6}; head 2: P={1}, N={1,2} -> {}
    assert node_scores(POS, NEG).tolist() == [2.0, 1.0, 0.0]
    # normalised by |P ∪ N|: 2/4, 1/3, 0/2
    assert torch.allclose(node_scores(POS, NEG, normalize=True), torch.tensor([0.5, 1 / 3, 0.0]))


def test_edge_scores_count_code_pairs_unique_to_positives() -> None:
    s = edge_scores(POS, NEG)
    # (h0, h1): P={(0,5),(1,5),(2,6)}, N={(0,5),(0,7),(3,5)} -> 2
    assert s[0, 1] == 2 and s[1, 0] == 2
    # (h1, h2): P={(5,1),(6,1)}, N={(5,1),(7,2)} -> 1
    assert s[1, 2] == 1
    # (h2, h2): P={(1,1)}, N={(1,1),(2,2)} -> 0
    assert s[2, 2] == 0
    assert torch.equal(s, s.T)


def test_edge_node_scores_follow_the_papers_flattening() -> None:
    edge = torch.tensor([[0.0, 3.0, 1.0], [3.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    # sorted pairs: (0,1), (1,0), (2,2), (0,2) ... ; k = 9 // 2 = 4 entries of the head list
    # head list 0,1,1,0 -> counts [2, 2, 0]
    expected = torch.softmax(torch.tensor([2.0, 2.0, 0.0]), 0)
    assert torch.allclose(edge_node_scores(edge), expected)


def test_layer_ordered_pairs() -> None:
    pairs = layer_ordered_pairs(n_layers=2, n_heads=2)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (0, 3), (1, 2), (1, 3)]
