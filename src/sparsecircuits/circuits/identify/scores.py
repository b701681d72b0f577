"""Node and edge scores from discrete codes (O'Neill & Bui 2024, §5.3 of the seed-methods notes).

Codes are `[n_prompts, n_heads]` integers. A head matters when positive prompts drive it into
codes negatives never produce; a pair of heads matters when positives produce code pairs that
negatives never do.
"""

from __future__ import annotations

import torch
from torch import Tensor


def node_scores(pos_codes: Tensor, neg_codes: Tensor, normalize: bool = False) -> Tensor:
    """Return `s_h = |P_h \\ N_h|` per head, `[n_heads]` float: the number of distinct codes
    head h takes on positives but never on negatives (divided by `|P_h ∪ N_h|` when
    `normalize`; the paper's main results do not normalise)."""
    n_heads = pos_codes.shape[1]
    out = torch.zeros(n_heads)
    for h in range(n_heads):
        pos, neg = set(pos_codes[:, h].tolist()), set(neg_codes[:, h].tolist())
        unique = len(pos - neg)
        out[h] = unique / len(pos | neg) if normalize else unique
    return out


def _pair_codes(codes: Tensor, n_codes: int) -> Tensor:
    """Return `[n_prompts, n_heads, n_heads]`: the code pair (c1, c2) of heads (h1, h2) as
    `c1 * n_codes + c2`."""
    return codes[:, :, None] * n_codes + codes[:, None, :]


def edge_scores(pos_codes: Tensor, neg_codes: Tensor) -> Tensor:
    """Return `s_{h1,h2} = #{(c1, c2) : C⁺[h1,h2,c1,c2] > 0 and C⁻[h1,h2,c1,c2] = 0}`,
    `[n_heads, n_heads]` float: distinct code pairs seen together only on positives."""
    n_codes = int(max(pos_codes.max(), neg_codes.max())) + 1
    pos = _pair_codes(pos_codes, n_codes)
    neg = _pair_codes(neg_codes, n_codes)
    n_heads = pos_codes.shape[1]
    out = torch.zeros(n_heads, n_heads)
    for h1 in range(n_heads):
        for h2 in range(n_heads):
            seen_neg = set(neg[:, h1, h2].tolist())
            out[h1, h2] = len(set(pos[:, h1, h2].tolist()) - seen_neg)
    return out


def edge_node_scores(edge: Tensor, k: int | None = None) -> Tensor:
    """Turn pair scores `[n_heads, n_heads]` into head scores `[n_heads]` as the paper does:
    sort the pairs by score (descending), flatten them into a head list, keep the first `k`
    entries (default `n_heads² / 2`), count each head's occurrences, softmax."""
    n_heads = edge.shape[0]
    k = n_heads * n_heads // 2 if k is None else k
    order = torch.argsort(edge.flatten(), descending=True, stable=True)
    heads = torch.stack([order // n_heads, order % n_heads], dim=1).flatten()[:k]
    counts = torch.bincount(heads, minlength=n_heads).float()
    return torch.softmax(counts, dim=0)


def layer_ordered_pairs(n_layers: int, n_heads: int) -> Tensor:
    """Return `[n_pairs, 2]` head indices (h1, h2) with layer(h1) < layer(h2): the candidate
    edges a head-to-head circuit can have."""
    idx = torch.arange(n_layers * n_heads)
    layer = idx // n_heads
    h1, h2 = torch.meshgrid(idx, idx, indexing="ij")
    keep = layer[h1] < layer[h2]
    return torch.stack([h1[keep], h2[keep]], dim=1)
