"""A feature-node budget: rows for the most influential features only (circuit-tracer's
`max_feature_nodes`).

The logit rows come first. Then, repeatedly, every feature's influence on the logits is
estimated on the rows computed so far, and the `update_interval` batches of not yet computed
features with the largest estimate are computed next, until `max_feature_nodes` features have
rows. The graph keeps those features as its feature nodes (errors, tokens and logits as
always); edges from the other features are dropped, and each row's absolute sum is reduced by
the dropped edges, so the graph is normalised over the sources it keeps.

The estimate is one pass over the stored rows: rows are grouped by their target's layer and a
feature only reads lower layers, so pushing influence from the logits down layer by layer gives
`w A + w A^2 + ...` of the partial graph exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.circuits.graph.prune import SparseAdjacency, logit_weight_vector
from sparsecircuits.circuits.graph.rows import sparsify_rows

if TYPE_CHECKING:
    from sparsecircuits.circuits.graph.rows import RowMaker


@dataclass
class _StoredRows:
    """Rows computed so far, grouped by target layer: `(targets, sources, weights)` int32/float32
    (12 bytes an edge), and every node's exact row |sum|."""

    n_nodes: int
    by_layer: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = field(default_factory=dict)
    row_abs_sums: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.row_abs_sums = torch.zeros(self.n_nodes, dtype=torch.float64)

    def add(self, rows: RowMaker, targets: Tensor, row_mass: float, row_cap: int | None) -> None:
        """Compute and store the rows of `targets` (indices into the target list)."""
        for nodes, block, columns in rows.blocks([targets]):
            t_idx, s_idx, w, sums = sparsify_rows(block, nodes, columns, row_mass, row_cap)
            self.row_abs_sums[nodes] = sums
            first = int(nodes[0])  # a batch holds targets of one layer
            layer = (
                int(rows.nodes.active[first, 0])
                if first < rows.nodes.n_features
                else rows.replacement.n_layers
            )
            self.by_layer.setdefault(layer, []).append((t_idx, s_idx, w))

    def influence(self, logit_weights: Tensor) -> Tensor:
        """`[n_nodes]` influence on the logits of the stored rows (module docstring)."""
        influence = torch.zeros(self.n_nodes, dtype=torch.float64)
        sums = self.row_abs_sums.clamp_min(1e-10)
        reach = influence + logit_weights
        for layer in sorted(self.by_layer, reverse=True):
            for t32, s32, w in self.by_layer[layer]:
                t = t32.long()
                influence.index_add_(0, s32.long(), w.abs().double() / sums[t] * reach[t])
            reach = influence + logit_weights
        return influence

    def kept_adjacency(self, kept: Tensor, n_feat: int) -> SparseAdjacency:
        """The stored edges restricted to the feature nodes `kept` (and every non-feature node),
        renumbered over `[kept features | errors | tokens | logits]`; each row's |sum| loses the
        dropped edges. Rows are mapped part by part, so no index array spans every stored edge."""
        new_index = torch.full((self.n_nodes,), -1, dtype=torch.int32)
        n_kept = int(kept.numel())
        new_index[kept] = torch.arange(n_kept, dtype=torch.int32)
        new_index[n_feat:] = torch.arange(n_feat, self.n_nodes, dtype=torch.int32) - n_feat + n_kept
        dropped = torch.zeros(self.n_nodes, dtype=torch.float64)
        targets, sources, weights = [], [], []
        for layer in sorted(self.by_layer, reverse=True):
            parts, self.by_layer[layer] = self.by_layer[layer], []
            for t32, s32, w in parts:
                s_new, t_new = new_index[s32.long()], new_index[t32.long()]
                keep = s_new >= 0
                dropped.index_add_(0, t32[~keep].long(), w[~keep].abs().double())
                targets.append(t_new[keep])
                sources.append(s_new[keep])
                weights.append(w[keep])
        self.by_layer = {}
        sums = (self.row_abs_sums - dropped).clamp_min(0.0)
        n_nodes = self.n_nodes - n_feat + n_kept
        row_abs_sums = torch.zeros(n_nodes, dtype=torch.float64)
        present = new_index >= 0
        row_abs_sums[new_index[present].long()] = sums[present]
        return SparseAdjacency(
            n_nodes=n_nodes,
            targets=torch.cat(targets),
            sources=torch.cat(sources),
            weights=torch.cat(weights),
            row_abs_sums=row_abs_sums,
        )


def budget_edges(
    rows: RowMaker,
    max_feature_nodes: int,
    update_interval: int,
    row_mass: float,
    row_cap: int | None,
) -> tuple[SparseAdjacency, Tensor]:
    """The rows of the logits and of the `max_feature_nodes` features chosen by estimated
    influence (module docstring), as an adjacency over `[kept features | errors | tokens |
    logits]`, and the kept features' indices `[F_kept]` (ascending) among all active features."""
    nodes = rows.nodes
    n_feat, n_logits = nodes.n_features, nodes.n_logits
    stored = _StoredRows(nodes.n_nodes)
    stored.add(rows, torch.arange(n_logits), row_mass, row_cap)
    logit_weights = logit_weight_vector(nodes.n_nodes, nodes.logit_probs)
    budget = min(max_feature_nodes, n_feat)
    visited = torch.zeros(n_feat, dtype=torch.bool)
    n_visited = 0
    while n_visited < budget:
        influence = stored.influence(logit_weights)[:n_feat]
        influence[visited] = -1.0
        queue = min(update_interval * rows.batch_size, budget - n_visited)
        chosen = influence.topk(queue).indices
        stored.add(rows, chosen + n_logits, row_mass, row_cap)  # feature f is target n_logits + f
        visited[chosen] = True
        n_visited += queue
    kept = visited.nonzero(as_tuple=True)[0]
    return stored.kept_adjacency(kept, n_feat), kept
