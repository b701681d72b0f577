"""Attribution graphs: direct effects among all active transcoder features of a prompt.

Nodes (circuit-tracer's layout): `[active features (F) | MLP errors (L x T) | token embeddings (T) |
output logits (K)]`. Errors and tokens are sources only; features and logits are targets. A
feature target is its transcoder pre-activation `(x - b_in) W_enc[:, f] + b_enc[f]`; a logit target
is the de-meaned logit `logit_t - mean_v logit_v`, taken before a final soft-cap (Gemma), as
circuit-tracer does. The logits kept are the most likely next tokens (by the model's, capped,
probabilities) up to a cumulative probability of `desired_logit_prob` (at most `max_n_logits`).

Everything is computed on the `ReplacementModel`'s frozen linear map: attention patterns, norm
denominators, MLP errors and feature activations are held at their clean values (a layer without
a transcoder is one error node per position: its whole, frozen MLP output). The token node is the
embedding the model adds at that position (token plus learned position embedding where the model
has one). Features and errors at position 0 (the BOS) are not nodes, as in circuit-tracer.

Edges come from batched reverse-mode passes over ONE forward pass: for a batch of targets the
gradient is injected at each target's read point (the encoder column at the transcoder input,
the de-meaned unembedding column at the final norm output) and vmapped backward passes
(`is_grads_batched`) read the gradients at every MLP output and at the embedding. Then

    edge(feature s -> t) = act_s * Σ_u (grad_t at MLP_out[u, pos_s]) . W_dec[s -> u]
    edge(error e -> t)   = (grad_t at MLP_out[layer_e, pos_e]) . error_e
    edge(token p -> t)   = (grad_t at embed[p]) . embed[p]

where `W_dec[s -> u]` is the decoder block through which feature s writes into MLP output u:
its own layer only for a per-layer transcoder, every layer from its own on for a cross-layer
transcoder. So each edge equals the change in the target when the source is removed with
everything frozen.
Rows are computed in blocks of `batch_size` targets and stored sparsely: per row the largest
edges covering `row_mass` of its absolute sum (all non-zero ones when `row_mass = 1`), at most
`edge_budget / n_targets` of them (and `max_edges_per_row`), plus the exact row sum for
normalisation. No N x N matrix is ever built, and past the budget storage grows linearly.

`build_graph` in steps:

1. one clean run of the prompt (the values everything is frozen at);
2. nodes: the active features with their activation-scaled decoder rows, the error vectors, the
   token embeddings and the salient logits;
3. targets: logits, then features by layer, each with the direction injected at its read point;
4. edge rows: every row kept (`store="all"`), or streamed once for the exact influence and only
   the rows among influential nodes recomputed and kept (`store="influential"`, the default);
5. the `AttributionGraph`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.circuits.graph.prune import (
    PruneResult,
    SparseAdjacency,
    graph_scores,
    influential_nodes,
    logit_weight_vector,
    prune_graph,
    scores_from,
)
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState

STORES = ("influential", "all")


@dataclass
class GraphConfig:
    """How to build and prune an attribution graph.

    `sparsecircuits trace` has one flag per field (`--max-n-logits`, ...) with the field's
    default, type and `help`."""

    max_n_logits: int = field(default=10, metadata={"help": "most output logits traced"})
    desired_logit_prob: float = field(
        default=0.95,
        metadata={"help": "trace the most likely next tokens up to this cumulative probability"},
    )
    batch_size: int = field(default=64, metadata={"help": "targets per backward pass"})
    row_mass: float = field(
        default=0.999,
        metadata={
            "help": "per target, keep the largest edges covering this share of |row| (1 = all)"
        },
    )
    max_edges_per_row: int | None = field(
        default=None,
        metadata={"help": "cap on stored edges per target (None: no cap; the edge budget applies)"},
    )
    # Dropped edges change influence pruning (benchmarks/graph_storage.py: at 256 tokens a 50M
    # budget kept 42 % of the exact graph's pruned nodes), so there is no budget by default.
    edge_budget: int | None = field(
        default=None,
        metadata={
            "help": "most edges stored in all (each row keeps at most budget / targets; about 12 "
            "bytes each); bounds memory on long prompts but changes pruning (None: the exact graph)"
        },
    )
    node_threshold: float = field(
        default=0.8,
        metadata={"help": "pruning: keep the nodes covering this share of the logits' influence"},
    )
    edge_threshold: float = field(
        default=0.98,
        metadata={"help": "pruning: keep the edges covering this share of the influence"},
    )
    skip_bos: bool = field(
        default=True, metadata={"help": "no feature or error nodes at position 0 (the BOS)"}
    )
    # "influential" (step 4 of the module docstring) costs one more backward per kept target,
    # and pruning at a higher node threshold then needs a rebuild.
    store: str = field(
        default="influential",
        metadata={
            "help": "influential: keep only the edges among nodes passing the node threshold (the "
            "same pruned graph and scores, memory linear in the prompt); all: keep every row (the "
            "full graph, which can be re-pruned at any threshold)",
            "choices": STORES,
        },
    )

    def check(self) -> None:
        """Raise `SparseCircuitsError` on out-of-range values."""
        if self.max_n_logits < 1 or self.batch_size < 1:
            raise SparseCircuitsError("max_n_logits and batch_size must be at least 1")
        if not 0.0 < self.desired_logit_prob <= 1.0:
            raise SparseCircuitsError("desired_logit_prob must lie in (0, 1]")
        if not 0.0 < self.row_mass <= 1.0:
            raise SparseCircuitsError("row_mass must lie in (0, 1]")
        if self.max_edges_per_row is not None and self.max_edges_per_row < 1:
            raise SparseCircuitsError("max_edges_per_row must be at least 1 (or None for no cap)")
        if self.edge_budget is not None and self.edge_budget < 1:
            raise SparseCircuitsError("edge_budget must be at least 1 (or None for no budget)")
        if self.store not in STORES:
            raise SparseCircuitsError(f'store must be "all" or "influential", got {self.store!r}')
        if not 0.0 <= self.node_threshold <= 1.0 or not 0.0 <= self.edge_threshold <= 1.0:
            raise SparseCircuitsError("node_threshold and edge_threshold must lie in [0, 1]")

    def row_cap(self, n_targets: int, n_nodes: int) -> int | None:
        """Edges a row may keep: the tighter of `max_edges_per_row` and the budget's share;
        None when neither binds (a row cannot hold more than `n_nodes`)."""
        caps = [c for c in (self.max_edges_per_row,) if c is not None]
        if self.edge_budget is not None:
            caps.append(max(1, self.edge_budget // max(n_targets, 1)))
        cap = min(caps) if caps else None
        return None if cap is None or cap >= n_nodes else cap


@dataclass
class AttributionGraph:
    """An unpruned attribution graph: nodes, sparse edges, and what they mean.

    `active_features [F, 3]` (layer, pos, feature index), `activations [F]`, `logit_ids [K]`,
    `logit_probs [K]`; `adjacency` holds the edges in node order
    `[features | errors (layer-major, L x T) | tokens | logits]`; `config` is what built it.

    Built with `store="influential"`, `adjacency` holds only the edges among the nodes that
    passed `stored_node_threshold`, and `full_influence` / `full_scores` hold the full graph's
    node influence `[n_nodes]` and `(replacement, completeness)` scores, computed while
    streaming; pruning at that threshold or a lower one gives the full graph's result.
    """

    prompt: str
    input_ids: Tensor
    prompt_tokens: list[str]
    n_layers: int
    active_features: Tensor
    activations: Tensor
    logit_ids: Tensor
    logit_probs: Tensor
    logit_tokens: list[str]
    adjacency: SparseAdjacency
    config: GraphConfig = field(default_factory=GraphConfig)
    timings: dict[str, float] = field(default_factory=dict)
    full_influence: Tensor | None = None
    full_scores: tuple[float, float] | None = None
    _node_influence: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def stored_node_threshold(self) -> float | None:
        """The node threshold the stored edges were kept at (None: every row is stored)."""
        return self.config.node_threshold if self.config.store == "influential" else None

    @property
    def n_pos(self) -> int:
        """Prompt length T."""
        return int(self.input_ids.numel())

    @property
    def n_features(self) -> int:
        """Active feature nodes F."""
        return int(self.active_features.shape[0])

    @property
    def n_errors(self) -> int:
        """Error nodes L x T."""
        return self.n_layers * self.n_pos

    @property
    def n_nodes(self) -> int:
        """All nodes N = F + L*T + T + K."""
        return self.n_features + self.n_errors + self.n_pos + int(self.logit_ids.numel())

    def error_index(self, layer: int, pos: int) -> int:
        """Node index of the error of `layer` at `pos`."""
        return self.n_features + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        """Node index of the token embedding at `pos`."""
        return self.n_features + self.n_errors + pos

    def logit_index(self, k: int) -> int:
        """Node index of the k-th logit target."""
        return self.n_features + self.n_errors + self.n_pos + k

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """Node index of an active feature; raises if it is not active."""
        hit = (
            (self.active_features[:, 0] == layer)
            & (self.active_features[:, 1] == pos)
            & (self.active_features[:, 2] == feature)
        ).nonzero()
        if hit.numel() == 0:
            raise SparseCircuitsError(
                f"feature {feature} of layer {layer} is not active at position {pos}"
            )
        return int(hit[0, 0])

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """Circuit-tracer's influence pruning (see `prune.prune_graph`)."""
        stored = self.stored_node_threshold
        if stored is not None and node_threshold > stored:
            raise SparseCircuitsError(
                f"this graph kept only the nodes passing node_threshold {stored}; prune at "
                f"{stored} or lower, or rebuild it with store='all' (or a higher node_threshold)"
            )
        result = prune_graph(
            self.adjacency,
            self.logit_probs,
            self.n_features,
            self.n_pos,
            node_threshold,
            edge_threshold,
            node_influence=self.full_influence,
        )
        self._node_influence = result.node_influence
        return result

    def scores(self) -> tuple[float, float]:
        """`(replacement_score, completeness_score)` of the unpruned graph."""
        if self.full_scores is not None:
            return self.full_scores
        return graph_scores(
            self.adjacency,
            self.logit_probs,
            self.n_features,
            self.n_errors,
            self.n_pos,
            node_influence=self._node_influence,
        )


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


def build_graph(
    replacement: ReplacementModel, prompt: str | Tensor, config: GraphConfig | None = None
) -> AttributionGraph:
    """Return the unpruned `AttributionGraph` of `prompt` (text, or input_ids `[T]` / `[1, T]`),
    built in the steps of the module docstring."""
    cfg = replace(config) if config else GraphConfig()  # a copy: the graph keeps it
    cfg.check()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # 1. one clean run
    input_ids, text = _prompt_ids(replacement, prompt)
    state = replacement.run(input_ids)
    timings["clean_run"] = time.perf_counter() - start
    # 2. nodes
    nodes = _graph_nodes(replacement, state, cfg, int(input_ids.shape[1]))
    # 3. targets
    rows = _RowMaker.for_targets(replacement, input_ids, state, nodes, cfg.batch_size, timings)
    # 4. edge rows
    timings["forward"] = 0.0
    adjacency, streamed = _edges(rows, cfg)
    timings["backward"] = time.perf_counter() - start - timings["clean_run"] - timings["forward"]
    # 5. the graph
    tokenizer = replacement.adapter.tokenizer
    ids = input_ids[0].cpu()
    return AttributionGraph(
        prompt=text,
        input_ids=ids,
        prompt_tokens=[tokenizer.decode([i]) for i in ids.tolist()],
        n_layers=replacement.n_layers,
        active_features=nodes.active,
        activations=nodes.activations,
        logit_ids=nodes.logit_ids,
        logit_probs=nodes.logit_probs,
        logit_tokens=[tokenizer.decode([i]) for i in nodes.logit_ids.tolist()],
        adjacency=adjacency,
        config=cfg,
        timings=timings,
        full_influence=None if streamed is None else streamed.influence,
        full_scores=None if streamed is None else streamed.scores,
    )


def _prompt_ids(replacement: ReplacementModel, prompt: str | Tensor) -> tuple[Tensor, str]:
    """`(input_ids [1, T] on the model's device, prompt text)` of a text or token prompt."""
    if isinstance(prompt, str):
        input_ids = replacement.tokenize(prompt)
        text = prompt
    else:
        input_ids = prompt.reshape(1, -1).to(replacement.device)
        text = replacement.adapter.tokenizer.decode(input_ids[0].tolist())
    if input_ids.shape[0] != 1:
        raise SparseCircuitsError("build_graph takes one prompt; call it once per prompt")
    return input_ids, text


# Per transcoder layer, one entry per MLP output its features write to: (target layer,
# positions [P], activation-scaled decoder rows [P, m, d], columns [F_layer]); see _position_groups.
_Decoders = dict[int, list[tuple[int, Tensor, Tensor, Tensor]]]


@dataclass
class _Nodes:
    """The nodes of one clean run and the vectors their edges are read with.

    `active [F, 3]` (layer, pos, feature) and `activations [F]` on the CPU, in node order;
    `decoders` per transcoder layer; `error_vectors` one `[T, d]` per layer (zero at a skipped
    BOS); `embed [T, d]` the token embeddings; `logit_ids [K]`, `logit_probs [K]` on the CPU.
    """

    active: Tensor
    activations: Tensor
    decoders: _Decoders
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


def _graph_nodes(
    replacement: ReplacementModel, state: ReplacementState, cfg: GraphConfig, n_pos: int
) -> _Nodes:
    """Step 2: the nodes of the clean run `state` of a `n_pos`-token prompt."""
    first = 1 if cfg.skip_bos and n_pos > 1 else 0
    active, activations, decoders = _feature_nodes(replacement, state, first, n_pos)
    prompt = torch.zeros(n_pos, dtype=torch.long, device=replacement.device)
    positions = torch.arange(n_pos, device=replacement.device)
    logit_ids, logit_probs = salient_logits(
        state.logits[0, -1], cfg.max_n_logits, cfg.desired_logit_prob
    )
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
    return _Nodes(
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
) -> tuple[Tensor, Tensor, _Decoders]:
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


def _edges(rows: _RowMaker, cfg: GraphConfig) -> tuple[SparseAdjacency, _Streamed | None]:
    """Step 4: the stored edges, and for `store="influential"` what streaming computed."""
    nodes = rows.nodes
    n_targets = int(rows.target_node.numel())
    row_cap = cfg.row_cap(n_targets, nodes.n_nodes)
    all_targets = torch.arange(n_targets)
    if cfg.store == "all":
        sums = torch.zeros(nodes.n_nodes, dtype=torch.float64)
        return _collect_edges(rows, all_targets, cfg.row_mass, row_cap, sums), None
    streamed = _stream_influence(rows, cfg, row_cap)
    # pass two: recompute the kept targets' rows, store their edges from kept sources
    kept = all_targets[streamed.node_mask[rows.target_node]]
    adjacency = _collect_edges(
        rows, kept, cfg.row_mass, row_cap, streamed.row_abs_sums, streamed.node_mask
    )
    return adjacency, streamed


@dataclass
class _RowMaker:
    """Computes edge rows: holds the clean run, the nodes, the targets and the timings.

    Target `i` (`0 <= i < n_targets`: logits first, then features in node order) is node
    `target_node[i]`, read at `(target_layer[i], target_pos[i])` along `injection[i]`.
    """

    replacement: ReplacementModel
    input_ids: Tensor
    state: ReplacementState
    nodes: _Nodes
    injection: Tensor
    target_layer: Tensor
    target_pos: Tensor
    target_node: Tensor
    feature_offsets: list[int]
    batch_size: int
    timings: dict[str, float]

    @classmethod
    def for_targets(
        cls,
        replacement: ReplacementModel,
        input_ids: Tensor,
        state: ReplacementState,
        nodes: _Nodes,
        batch_size: int,
        timings: dict[str, float],
    ) -> _RowMaker:
        """Step 3: the targets, logits first, then features by layer (each batch's backward
        stays shallow); the gradient injected is the target's input direction at its read point."""
        n_layers, n_pos = replacement.n_layers, nodes.n_pos
        n_feat, n_logits, n_nodes = nodes.n_features, nodes.n_logits, nodes.n_nodes
        active = nodes.active
        W_U = replacement.W_U
        de_meaned = W_U[:, nodes.logit_ids.to(W_U.device)] - W_U.mean(1, keepdim=True)
        injections = [de_meaned.T]  # [K, d]
        for layer in replacement.feature_layers:
            layer_feats = active[active[:, 0] == layer, 2].to(replacement.device)
            injections.append(replacement.encoder(layer).W_enc[:, layer_feats].T)
        feature_counts = [int(nodes.decoders[k][0][3].numel()) for k in sorted(nodes.decoders)]
        logit_layer = torch.full((n_logits,), n_layers, dtype=torch.long)
        logit_pos = torch.full((n_logits,), n_pos - 1, dtype=torch.long)
        return cls(
            replacement=replacement,
            input_ids=input_ids,
            state=state,
            nodes=nodes,
            injection=torch.cat(injections),  # [n_targets, d]
            target_layer=torch.cat([logit_layer, active[:, 0]]),
            target_pos=torch.cat([logit_pos, active[:, 1]]),
            target_node=torch.cat(
                [torch.arange(n_logits) + n_nodes - n_logits, torch.arange(n_feat)]
            ),
            feature_offsets=[sum(feature_counts[:i]) for i in range(len(feature_counts) + 1)],
            batch_size=batch_size,
            timings=timings,
        )

    def bucket_ends(self) -> Tensor:
        """Prefix lengths `[n_buckets]`: targets at a position q only need the prompt up to q."""
        n_pos = int(self.input_ids.shape[1])
        n_buckets = max(1, min(8, n_pos // 16))
        return torch.tensor([-(-n_pos * (i + 1) // n_buckets) for i in range(n_buckets)])

    def blocks(self, groups: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield `(nodes [B], dense rows [B, n_nodes] on the CPU)` for each group of target
        indices, in order, in batches of `batch_size`.

        The model is causal, so each group is split by prompt prefix and runs backward through
        the shorter prefix only; a prefix's frozen forward is built when first needed and
        dropped after its last use, so groups may come in any order (e.g. layer by layer).
        """
        ends = self.bucket_ends()
        n_pos = int(self.input_ids.shape[1])
        schedule = []
        for group in groups:
            bucket = torch.searchsorted(ends, self.target_pos[group], right=True)
            for index in range(int(ends.numel())):
                members = group[bucket == index]
                for lo in range(0, int(members.numel()), self.batch_size):
                    schedule.append((index, members[lo : lo + self.batch_size]))
        last_use = {index: step for step, (index, _) in enumerate(schedule)}
        forwards: dict[int, tuple[dict[int, Tensor], list[Tensor]]] = {}
        for step, (index, batch) in enumerate(schedule):
            end = int(ends[index])
            if index not in forwards:
                tick = time.perf_counter()
                forwards[index] = _frozen_forward(
                    self.replacement,
                    self.input_ids[:, :end],
                    self.state if end == n_pos else None,
                )
                self.timings["forward"] = self.timings.get("forward", 0.0) + (
                    time.perf_counter() - tick
                )
            read_points, sources = forwards[index]
            last = last_use[index] == step
            block = self.row_block(batch, read_points, sources, last, end)
            if last:
                del forwards[index]
            yield self.target_node[batch], block.cpu()

    def row_block(
        self,
        targets: Tensor,
        read_points: dict[int, Tensor],
        sources: list[Tensor],
        last: bool,
        prefix: int,
    ) -> Tensor:
        """Dense edge rows `[len(targets), n_nodes]` of a batch of targets (indices into the
        target list) from one vmapped backward through the frozen forward of the first `prefix`
        tokens (its `read_points` and `sources`; `last`: that forward's last use)."""
        grads = self._backward(targets, read_points, sources, last)
        batch, n_layers = int(targets.numel()), self.replacement.n_layers
        block = torch.zeros(
            batch, self.nodes.n_nodes, dtype=torch.float32, device=self.replacement.device
        )
        decoders, feature_offsets = self.nodes.decoders, self.feature_offsets
        n_feat = feature_offsets[-1]
        n_pos = self.nodes.n_pos
        for i, layer in enumerate(sorted(decoders)):
            # Sum over the MLP outputs the source layer writes to (one for a per-layer transcoder).
            per_pos: Tensor | None = None
            for target, positions, dec_padded, _ in decoders[layer]:
                g = grads[target]
                if g is None:
                    continue
                inside = positions < prefix  # features later than the prefix get no edge
                # [pos, batch, d] x [pos, d, max features per position] -> the feature columns
                written = torch.bmm(
                    g[:, 0, positions[inside]].transpose(0, 1), dec_padded[inside].transpose(1, 2)
                )
                if per_pos is None:
                    per_pos = torch.zeros(
                        positions.numel(),
                        batch,
                        dec_padded.shape[1],
                        dtype=g.dtype,
                        device=g.device,
                    )
                    per_pos[inside] = written
                else:
                    per_pos[inside] += written
            if per_pos is None:
                continue
            columns = decoders[layer][0][3]
            flat = per_pos.permute(1, 0, 2).reshape(batch, -1)
            block[:, feature_offsets[i] : feature_offsets[i + 1]] = flat[:, columns]
        for layer in range(n_layers):
            g = grads[layer]
            if g is not None:
                col = n_feat + layer * n_pos
                block[:, col : col + prefix] = torch.einsum(
                    "bpd,pd->bp", g[:, 0], self.nodes.error_vectors[layer][:prefix]
                )
        g = grads[n_layers]
        if g is not None:
            col = n_feat + n_layers * n_pos
            block[:, col : col + prefix] = torch.einsum(
                "bpd,pd->bp", g[:, 0], self.nodes.embed[:prefix]
            )
        return block

    def _backward(
        self,
        targets: Tensor,
        read_points: dict[int, Tensor],
        sources: list[Tensor],
        last: bool,
    ) -> tuple[Tensor | None, ...]:
        """The gradients `[B, 1, prefix, d]` at every source (None where a source is unused) of
        the batch of `targets`, from one vmapped backward."""
        batch = int(targets.numel())
        outputs, grad_outputs = [], []
        layers = self.target_layer[targets]
        for layer in sorted(set(layers.tolist())):
            slots = (layers == layer).nonzero(as_tuple=True)[0]
            grad = torch.zeros(
                batch,
                *read_points[layer].shape,
                dtype=self.replacement.dtype,
                device=self.replacement.device,
            )
            grad[slots, 0, self.target_pos[targets[slots]]] = self.injection[targets[slots]]
            outputs.append(read_points[layer])
            grad_outputs.append(grad)
        return torch.autograd.grad(
            outputs,
            sources,
            grad_outputs=grad_outputs,
            retain_graph=not last,
            is_grads_batched=True,
            allow_unused=True,
        )


def _collect_edges(
    rows: _RowMaker,
    targets: Tensor,
    row_mass: float,
    row_cap: int | None,
    row_abs_sums: Tensor,
    source_mask: Tensor | None = None,
) -> SparseAdjacency:
    """The (truncated) rows of `targets` (indices into the target list) as a sparse adjacency,
    keeping only edges from `source_mask` nodes when given; each row's exact |sum| is written
    into `row_abs_sums [n_nodes]`, which the adjacency keeps."""
    rows_t, rows_s, rows_w = [], [], []
    for nodes, block in rows.blocks([targets]):
        t_idx, s_idx, w, sums = _sparsify(block, nodes, row_mass, row_cap)
        row_abs_sums[nodes] = sums
        if source_mask is not None:
            keep = source_mask[s_idx.long()]
            t_idx, s_idx, w = t_idx[keep], s_idx[keep], w[keep]
        rows_t.append(t_idx)
        rows_s.append(s_idx)
        rows_w.append(w)
    return SparseAdjacency(
        n_nodes=rows.nodes.n_nodes,
        targets=torch.cat(rows_t) if rows_t else torch.zeros(0, dtype=torch.int32),
        sources=torch.cat(rows_s) if rows_s else torch.zeros(0, dtype=torch.int32),
        weights=torch.cat(rows_w) if rows_w else torch.zeros(0),
        row_abs_sums=row_abs_sums,
    )


@dataclass
class _Streamed:
    """Pass one of `store="influential"`: exact influence, scores and row sums, no edges kept."""

    influence: Tensor  # [n_nodes] float64, as `prune.compute_influence` on the full graph
    node_mask: Tensor  # [n_nodes] bool: the nodes passing the node threshold
    row_abs_sums: Tensor  # [n_nodes] float64
    scores: tuple[float, float]  # (replacement, completeness) of the full graph


def _stream_influence(rows: _RowMaker, cfg: GraphConfig, row_cap: int | None) -> _Streamed:
    """Influence on the logits without storing the adjacency: rows come in reverse topological
    order (logits, then features from the last layer down; a feature only reads lower layers),
    so a row's target influence is final when the row is computed and is pushed onto its
    sources at once: `influence[s] += (influence[t] + w[t]) * |A[t, s]| / sum|A[t, :]|`, the
    terms of `w A + w A^2 + ...` grouped by target. Rows are truncated exactly as stored rows
    would be, so every number equals the full graph's."""
    n, n_features, n_errors = rows.nodes.n_nodes, rows.nodes.n_features, rows.nodes.n_errors
    n_tokens, n_logits = rows.nodes.n_pos, rows.nodes.n_logits
    logit_weights = logit_weight_vector(n, rows.nodes.logit_probs)
    influence = torch.zeros(n, dtype=torch.float64)
    row_abs_sums = torch.zeros(n, dtype=torch.float64)
    error_fraction = torch.zeros(n, dtype=torch.float64)
    layers = rows.target_layer
    groups = [(layers == layer).nonzero(as_tuple=True)[0] for layer in layers.unique().flip(0)]
    for nodes, block in rows.blocks(groups):
        t_idx, s_idx, w, sums = _sparsify(block, nodes, cfg.row_mass, row_cap)
        row_abs_sums[nodes] = sums
        t_idx, s_idx = t_idx.long(), s_idx.long()
        normalized = w.abs().double() / row_abs_sums[t_idx].clamp_min(1e-10)
        influence.index_add_(0, s_idx, normalized * (influence + logit_weights)[t_idx])
        from_error = (s_idx >= n_features) & (s_idx < n_features + n_errors)
        error_fraction.index_add_(0, t_idx[from_error], normalized[from_error])
    node_mask = influential_nodes(influence, cfg.node_threshold, n_tokens + n_logits)
    scores = scores_from(influence, error_fraction, logit_weights, n_features, n_errors, n_tokens)
    return _Streamed(influence, node_mask, row_abs_sums, scores)


def _frozen_forward(
    replacement: ReplacementModel, input_ids: Tensor, state: ReplacementState | None = None
) -> tuple[dict[int, Tensor], list[Tensor]]:
    """One frozen forward pass of `input_ids [1, T]` (clean `state` given or computed) kept for
    many backward passes.

    Returns the read points (`{layer: transcoder input}`, `{n_layers: final norm output}`) where
    targets inject their gradient, and the sources (every MLP output, then the embedding) where
    edges are read.
    """
    from sparsecircuits.circuits.replacement import Multipliers

    n_pos, n_layers = int(input_ids.shape[1]), replacement.n_layers

    def unit() -> Tensor:
        return torch.ones(
            (1, n_pos, 1), dtype=replacement.dtype, device=replacement.device, requires_grad=True
        )

    state = replacement.run(input_ids) if state is None else state
    mults = Multipliers(embed=unit(), errors={layer: unit() for layer in range(n_layers)})
    with torch.enable_grad():
        out = replacement.run_with_multipliers(state, mults, features="frozen")
    read_points = {layer: out.tc_in[layer] for layer in replacement.feature_layers}
    read_points[n_layers] = out.final_normed
    return read_points, [out.mlp_out[layer] for layer in range(n_layers)] + [out.embed]


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


def _sparsify(
    block: Tensor, rows: Tensor, row_mass: float, max_edges: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stored edges of a row block `[B, N]`: per row the largest |entries| covering `row_mass` of
    its absolute sum, at most `max_edges` of them. Returns `(targets, sources, weights, exact row
    abs sums [B])`; indices int32."""
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
    return rows[b].int(), s.int(), block[b, s], sums
