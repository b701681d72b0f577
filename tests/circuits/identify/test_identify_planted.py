"""The discrete-code method recovers planted circuits and is at chance on a null case."""

from __future__ import annotations

import torch

from sparsecircuits.circuits.identify.discrete import (
    CodeConfig,
    discrete_codes,
    sae_training_rows,
    train_shared_sae,
)
from sparsecircuits.circuits.identify.metrics import roc_auc
from sparsecircuits.circuits.identify.scores import edge_node_scores, edge_scores, node_scores

N_HEADS, D, N = 12, 16, 40
CIRCUIT = torch.zeros(N_HEADS, dtype=torch.bool)
CIRCUIT[[1, 4, 7, 10]] = True


def synthetic_outputs(seed: int, planted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head outputs `[N, heads, D]` of positive and negative prompts.

    Every head draws each prompt's vector from its own small set of directions; a circuit
    head (when `planted`) uses different directions on positives than on negatives, every
    other head the same set on both.
    """
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(N_HEADS, 3, D, generator=g) * 3
    positive_only = torch.randn(N_HEADS, 3, D, generator=g) * 3

    def draw(sets: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, 3, (N, N_HEADS), generator=g)
        base = sets[torch.arange(N_HEADS)[None, :], pick]
        return base + 0.1 * torch.randn(N, N_HEADS, D, generator=g)

    pos_sets = torch.where(CIRCUIT[:, None, None], positive_only, shared) if planted else shared
    return draw(pos_sets), draw(shared)


def _aucs(seed: int, planted: bool) -> tuple[float, float]:
    pos, neg = synthetic_outputs(seed, planted)
    pool = torch.cat([pos, neg])
    cfg = CodeConfig(n_latents=32, epochs=150, l1=0.02)
    sae = train_shared_sae(pool[sae_training_rows(len(pool), 10, seed)], cfg, seed)
    pc, nc = discrete_codes(sae, pos), discrete_codes(sae, neg)
    return roc_auc(node_scores(pc, nc), CIRCUIT), roc_auc(
        edge_node_scores(edge_scores(pc, nc)), CIRCUIT
    )


def test_planted_circuit_is_recovered() -> None:
    results = [_aucs(seed, planted=True) for seed in range(3)]
    assert sum(r[0] for r in results) / 3 > 0.9
    assert sum(r[1] for r in results) / 3 > 0.65  # pairs with one circuit head also score


def test_null_case_is_at_chance() -> None:
    node = [_aucs(seed, planted=False)[0] for seed in range(6)]
    assert 0.25 < sum(node) / len(node) < 0.75


def test_codes_are_argmax_latents() -> None:
    pos, _ = synthetic_outputs(0, planted=True)
    sae = train_shared_sae(pos[:5], CodeConfig(n_latents=8, epochs=5), seed=0)
    codes = discrete_codes(sae, pos)
    assert codes.shape == (N, N_HEADS)
    assert torch.equal(codes, sae.encode(pos).argmax(-1))
