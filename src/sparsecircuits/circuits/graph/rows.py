"""Edge rows of an attribution graph: its nodes, its targets, and batched transposed passes.

`graph_nodes` gathers the nodes of one clean run (active features with their activation-scaled
decoder rows, error vectors, token embeddings, salient logits). `RowMaker` turns targets into
rows: targets are split by layer and, within a layer, sorted by position (last first) and cut
into batches, so a batch's pass starts at its own layer and runs over the prompt prefix up to
its last target only; each batch's gradients come from `adjoint.FrozenAdjoint` (two GEMMs per
attention layer, no autograd), or from autograd on a frozen forward when a probe shows the
adjoint does not describe the model. A row is read over the columns its targets can reach
(features of lower layers and positions inside the prefix, errors, tokens), so its cost does
not grow with the whole graph.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.circuits.graph.adjoint import (
    FrozenAdjoint,
    autograd_grads,
    frozen_forward,
    matches_autograd,
)

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState


def salient_logits(logits: Tensor, max_n_logits: int, desired_prob: float) -> tuple[Tensor, Tensor]:
    """Most likely tokens of `logits [vocab]` until their cumulative probability reaches
    `desired_prob` (at most `max_n_logits`): `(ids [K], probs [K])`."""
    probs = torch.softmax(logits.double(), dim=-1)
    top = probs.topk(min(max_n_logits, probs.numel()))
    cumulative = top.values.cumsum(0)
    k = (
        int(
            torch.searchsorted(cumulative, torch.tensor([desired_prob], dtype=torch.float64)).item()
        )
        + 1
    )
    k = min(k, top.values.numel())
    return top.indices[:k], top.values[:k].float()


# Per transcoder layer, one entry per MLP output its features write to: (target layer,
# positions [P], activation-scaled decoder rows [P, m, d], columns [F_layer]); see _position_groups.
Decoders = dict[int, list[tuple[int, Tensor, Tensor, Tensor]]]


@dataclass
class Nodes:
    """The nodes of one clean run and the vectors their edges are read with.

    `active [F, 3]` (layer, pos, feature) and `activations [F]` on the CPU, in node order;
    `decoders` per transcoder layer; `error_vectors` one `[T, d]` per layer (zero at a skipped
    BOS); `embed [T, d]` the token embeddings; `logit_ids [K]`, `logit_probs [K]` on the CPU.
    """

    active: Tensor
    activations: Tensor
    decoders: Decoders
    error_vectors: list[Tensor]
    embed: Tensor
    logit_ids: Tensor
    logit_probs: Tensor

    @property
    def n_features(self) -> int:
        """Active feature nodes F."""
        return int(self.active.shape[0])

    @property
    def n_pos(self) -> int:
        """Prompt length T."""
        return int(self.embed.shape[0])

    @property
    def n_errors(self) -> int:
        """Error nodes L x T."""
        return len(self.error_vectors) * self.n_pos

    @property
    def n_logits(self) -> int:
        """Logit nodes K."""
        return int(self.logit_ids.numel())

    @property
    def n_nodes(self) -> int:
        """All nodes N = F + L*T + T + K."""
        return self.n_features + self.n_errors + self.n_pos + self.n_logits


def graph_nodes(
    replacement: ReplacementModel,
    state: ReplacementState,
    skip_bos: bool,
    logit_ids: Tensor,
    logit_probs: Tensor,
) -> Nodes:
    """Step 2: the nodes of the clean run `state` of one prompt, with output nodes
    `logit_ids [K]` weighted `logit_probs [K]`."""
    n_pos = int(state.n_pos)
    first = 1 if skip_bos and n_pos > 1 else 0
    active, activations, decoders = _feature_nodes(replacement, state, first, n_pos)
    prompt = torch.zeros(n_pos, dtype=torch.long, device=replacement.device)
    positions = torch.arange(n_pos, device=replacement.device)
    error_vectors = []
    for layer in range(replacement.n_layers):
        err = (
            state.errors[layer][0]
            if layer in replacement.feature_layers
            else state.mlp_out[layer][0]
        )
        # an error written before a post-MLP norm (Gemma) joins the residual through it
        err = replacement.post_mlp_map(state, layer, err, prompt, positions)
        if first:
            err = torch.cat([torch.zeros_like(err[:1]), err[1:]])
        error_vectors.append(err)
    return Nodes(
        active=active,
        activations=activations,
        decoders=decoders,
        error_vectors=error_vectors,
        embed=state.embed[0],
        logit_ids=logit_ids.cpu(),
        logit_probs=logit_probs.cpu(),
    )


def _feature_nodes(
    replacement: ReplacementModel, state: ReplacementState, first: int, n_pos: int
) -> tuple[Tensor, Tensor, Decoders]:
    """The features active from position `first` on: `(active [F, 3], activations [F],
    decoders)`, by layer, then position, then feature index."""
    feats, acts, decoders = [], [], {}
    for layer in replacement.feature_layers:
        layer_acts = state.feature_acts[layer][0, first:]
        pos, feat = layer_acts.nonzero(as_tuple=True)  # sorted by position, then feature
        values = layer_acts[pos, feat]
        pos, feat = pos.cpu() + first, feat.cpu()  # index bookkeeping stays on the CPU
        feats.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
        acts.append(values.cpu())
        index, rows_pos = feat.to(values.device), pos.to(values.device)
        prompt = torch.zeros_like(rows_pos)
        decoders[layer] = [
            (
                target,
                *_position_groups(
                    pos,
                    # as the rows join the residual (through a frozen post-MLP norm, Gemma)
                    replacement.post_mlp_map(
                        state, target, block[index] * values[:, None], prompt, rows_pos
                    ),
                    n_pos,
                ),
            )
            for target, block in replacement.decoders(layer)
        ]
    active = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(acts) if acts else torch.zeros(0)
    return active, activations, decoders


@dataclass
class RowMaker:
    """Computes edge rows: holds the clean run, the nodes, the targets and the timings.

    Target `i` (`0 <= i < n_targets`: logits first, then features in node order) is node
    `target_node[i]`, read at `(target_layer[i], target_pos[i])` along `injection[i]` (in the
    read point's own space: transcoder input, or final norm output for the logits).
    """

    replacement: ReplacementModel
    input_ids: Tensor
    state: ReplacementState
    nodes: Nodes
    injection: Tensor
    target_layer: Tensor
    target_pos: Tensor
    target_node: Tensor
    feature_offsets: list[int]
    batch_size: int
    timings: dict[str, float]
    adjoint: FrozenAdjoint | None = None
    frozen: tuple[dict[int, Tensor], list[Tensor]] | None = None
    # per transcoder layer (in `sorted(nodes.decoders)` order), for every prefix length P:
    # features at positions < P, and positions holding features < P
    features_before: list[Tensor] | None = None
    positions_before: list[Tensor] | None = None
    # per transcoder layer: the first position when its feature positions are consecutive (else
    # -1), and whether its padded decoder slots hold exactly its features in order (TopK)
    position_runs: list[int] | None = None
    dense_columns: list[bool] | None = None

    @classmethod
    def for_targets(
        cls,
        replacement: ReplacementModel,
        input_ids: Tensor,
        state: ReplacementState,
        nodes: Nodes,
        batch_size: int,
        timings: dict[str, float],
        logit_directions: Tensor,
    ) -> RowMaker:
        """The targets: the output nodes (`logit_directions [K, d]` at the final norm output,
        `graph.targets`), then features by layer; the transposed-pass engine is chosen by
        `choose_engine`."""
        n_layers, n_pos = replacement.n_layers, nodes.n_pos
        n_feat, n_logits, n_nodes = nodes.n_features, nodes.n_logits, nodes.n_nodes
        active = nodes.active
        injections = [logit_directions.to(replacement.device, replacement.dtype)]  # [K, d]
        for layer in replacement.feature_layers:
            layer_feats = active[active[:, 0] == layer, 2].to(replacement.device)
            injections.append(replacement.encoder(layer).W_enc[:, layer_feats].T)
        feature_counts = [int(nodes.decoders[k][0][3].numel()) for k in sorted(nodes.decoders)]
        features_before, positions_before, position_runs, dense_columns = [], [], [], []
        for layer in sorted(nodes.decoders):
            pos = active[active[:, 0] == layer, 1]
            bounds = torch.arange(n_pos + 1)
            _, positions, _, columns = nodes.decoders[layer][0]
            positions = positions.cpu()
            features_before.append(torch.searchsorted(pos, bounds))
            positions_before.append(torch.searchsorted(positions, bounds))
            run = positions.numel() > 0 and bool(
                (positions == torch.arange(positions.numel()) + positions[0]).all()
            )
            position_runs.append(int(positions[0]) if run else -1)
            dense_columns.append(bool((columns.cpu() == torch.arange(columns.numel())).all()))
        rows = cls(
            replacement=replacement,
            input_ids=input_ids,
            state=state,
            nodes=nodes,
            injection=torch.cat(injections),  # [n_targets, d]
            target_layer=torch.cat(
                [torch.full((n_logits,), n_layers, dtype=torch.long), active[:, 0]]
            ),
            target_pos=torch.cat(
                [torch.full((n_logits,), n_pos - 1, dtype=torch.long), active[:, 1]]
            ),
            target_node=torch.cat(
                [torch.arange(n_logits) + n_nodes - n_logits, torch.arange(n_feat)]
            ),
            feature_offsets=[sum(feature_counts[:i]) for i in range(len(feature_counts) + 1)],
            batch_size=batch_size,
            timings=timings,
            features_before=features_before,
            positions_before=positions_before,
            position_runs=position_runs,
            dense_columns=dense_columns,
        )
        rows.choose_engine()
        return rows

    @property
    def n_targets(self) -> int:
        """Number of targets (logits and features)."""
        return int(self.target_node.numel())

    def choose_engine(self) -> None:
        """Use the autograd-free `FrozenAdjoint` when it equals autograd on this model
        (`adjoint.matches_autograd`, on the prompt's first tokens); otherwise keep a frozen
        forward for autograd and warn."""
        tick = time.perf_counter()
        if matches_autograd(self.replacement, self.input_ids):
            self.adjoint = FrozenAdjoint(self.replacement, self.state)
        else:
            warnings.warn(
                "the transposed frozen model does not match autograd for this model; building "
                "the graph with autograd (slower)",
                stacklevel=3,
            )
            self.frozen = frozen_forward(self.replacement, self.input_ids, self.state)
        self.timings["engine_check"] = time.perf_counter() - tick

    def _adjoint_grads(
        self, adjoint: FrozenAdjoint, batch: Tensor, prefix: int
    ) -> list[Tensor | None]:
        device = self.injection.device
        layers = self.target_layer[batch].to(device)
        pos = self.target_pos[batch].to(device)
        vectors = self.injection[batch.to(device)]
        resid = torch.empty_like(vectors)
        for layer in layers.unique().tolist():
            hit = layers == layer
            resid[hit] = adjoint.resid_vectors(layer, pos[hit], vectors[hit])
        return adjoint.grads(layers, pos, resid, prefix)

    def _autograd_grads(self, batch: Tensor, retain: bool) -> list[Tensor | None]:
        assert self.frozen is not None
        device = self.injection.device
        read_points, sources = self.frozen
        return autograd_grads(
            self.replacement,
            read_points,
            sources,
            self.target_layer[batch].to(device),
            self.target_pos[batch].to(device),
            self.injection[batch.to(device)],
            retain,
        )

    def schedule(self, groups: list[Tensor]) -> list[Tensor]:
        """Batches of target indices: each group split by layer (highest first), each layer's
        targets by position (last first), cut into `batch_size` pieces."""
        batches = []
        for group in groups:
            layers = self.target_layer[group]
            for layer in layers.unique().flip(0).tolist():
                members = group[layers == layer]
                order = self.target_pos[members].argsort(descending=True, stable=True)
                members = members[order]
                for lo in range(0, int(members.numel()), self.batch_size):
                    batches.append(members[lo : lo + self.batch_size])
        return batches

    def blocks(self, groups: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield `(nodes [B], rows [B, W] on the CPU, columns [W])` for each batch of
        `schedule(groups)`, in order: rows over the node columns `columns` a batch can reach."""
        for batch in self.schedule(groups):
            tick = time.perf_counter()
            prefix = int(self.target_pos[batch].max()) + 1
            if self.adjoint is not None:
                grads = self._adjoint_grads(self.adjoint, batch, prefix)
            else:
                # the frozen graph is kept: a streamed build reads rows in more than one pass
                grads = [
                    None if g is None else g[:prefix]
                    for g in self._autograd_grads(batch, retain=True)
                ]
            self.timings["transpose"] = self.timings.get("transpose", 0.0) + (
                time.perf_counter() - tick
            )
            tick = time.perf_counter()
            block, columns = self.row_block(int(batch.numel()), grads, prefix)
            self.timings["rows"] = self.timings.get("rows", 0.0) + (time.perf_counter() - tick)
            yield self.target_node[batch], block.cpu(), columns

    def row_block(
        self, batch: int, grads: list[Tensor | None], prefix: int
    ) -> tuple[Tensor, Tensor]:
        """Edge rows `[batch, W]` (float32) of one batch from its gradients at the sources
        (`[prefix, batch, d]` or None, see `FrozenAdjoint.grads`), and their node columns `[W]`."""
        assert self.features_before is not None and self.positions_before is not None
        assert self.position_runs is not None and self.dense_columns is not None
        decoders, offsets = self.nodes.decoders, self.feature_offsets
        n_feat, n_pos, n_layers = offsets[-1], self.nodes.n_pos, self.replacement.n_layers
        pieces: list[Tensor] = []
        columns: list[Tensor] = []
        for i, layer in enumerate(sorted(decoders)):
            count = int(self.features_before[i][prefix])
            inside = int(self.positions_before[i][prefix])
            per_pos: Tensor | None = None
            for target, positions, dec_padded, _ in decoders[layer]:
                g = grads[target]
                if g is None or count == 0:
                    continue
                # [pos, batch, d] x [pos, d, features per position] -> the feature columns
                first = int(self.position_runs[i])  # positions first.. are consecutive, or -1
                at = g[first : first + inside] if first >= 0 else g[positions[:inside]]
                written = torch.bmm(at, dec_padded[:inside].transpose(1, 2))
                per_pos = written if per_pos is None else per_pos.add_(written)
            if per_pos is None:
                continue
            flat = per_pos.permute(1, 0, 2).reshape(batch, -1)
            dense = bool(self.dense_columns[i])  # every slot a feature, in order
            pieces.append(
                (flat[:, :count] if dense else flat[:, decoders[layer][0][3][:count]]).float()
            )
            columns.append(torch.arange(offsets[i], offsets[i] + count))
        sources = [(layer, self.nodes.error_vectors[layer]) for layer in range(n_layers)]
        for layer, vectors in [*sources, (n_layers, self.nodes.embed)]:
            g = grads[layer]
            if g is None:
                continue
            values = torch.bmm(g, vectors[:prefix, :, None])[..., 0]  # [prefix, batch]
            pieces.append(values.T.float())
            columns.append(n_feat + layer * n_pos + torch.arange(prefix))
        if not pieces:
            return torch.zeros(batch, 0), torch.zeros(0, dtype=torch.long)
        return torch.cat(pieces, 1), torch.cat(columns)


def _position_groups(pos: Tensor, rows: Tensor, n_pos: int) -> tuple[Tensor, Tensor, Tensor]:
    """Group feature rows `[n, d]` (sorted by `pos [n]`) per position for one batched matmul.

    Returns `(positions [P], padded [P, m, d], columns [n])`: the positions holding features,
    their rows padded to the largest count m, and where each feature lands in the flattened
    `[P * m]` result.
    """
    pos = pos.cpu()
    counts = torch.bincount(pos, minlength=n_pos)
    positions = counts.nonzero(as_tuple=True)[0]
    width = int(counts.max()) if pos.numel() else 0
    slot_of_pos = torch.full((n_pos,), -1, dtype=torch.long)
    slot_of_pos[positions] = torch.arange(positions.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(pos.numel()) - starts[pos]
    columns = slot_of_pos[pos] * width + rank
    padded = rows.new_zeros(positions.numel(), width, rows.shape[1])
    padded[slot_of_pos[pos], rank] = rows
    return positions.to(rows.device), padded, columns.to(rows.device)


def sparsify_rows(
    block: Tensor, rows: Tensor, columns: Tensor, row_mass: float, max_edges: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stored edges of a row block `[B, W]` over node `columns [W]`: per row the largest
    |entries| covering `row_mass` of its absolute sum, at most `max_edges` of them. Returns
    `(targets, sources, weights, exact row abs sums [B])`; indices int32."""
    magnitude = block.abs()
    sums = magnitude.sum(1, dtype=torch.float64)
    if row_mass >= 1.0 and max_edges is None:
        keep = magnitude > 0
    else:
        sorted_mag, order = magnitude.sort(dim=1, descending=True)
        before = sorted_mag.cumsum(1, dtype=torch.float64) - sorted_mag.double()
        keep_sorted = (before < row_mass * sums[:, None]) & (sorted_mag > 0)
        if max_edges is not None:
            keep_sorted[:, max_edges:] = False
        keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    b, s = keep.nonzero(as_tuple=True)
    return rows[b].int(), columns[s].int(), block[b, s], sums
