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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.circuits.graph.budget import budget_edges
from sparsecircuits.circuits.graph.prune import (
    PruneResult,
    SparseAdjacency,
    graph_scores,
    influential_nodes,
    logit_weight_vector,
    prune_graph,
    scores_from,
)
from sparsecircuits.circuits.graph.rows import (
    RowMaker,
    graph_nodes,
    salient_logits,
    sparsify_rows,
)
from sparsecircuits.circuits.graph.targets import GraphTarget, salient_targets, target_arrays
from sparsecircuits.errors import SparseCircuitsError

__all__ = [
    "STORES",
    "AttributionGraph",
    "GraphConfig",
    "GraphTarget",
    "build_graph",
    "salient_logits",
]
# budget mode: re-rank the remaining features after this many batches (circuit-tracer's default)
UPDATE_INTERVAL = 4

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel

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
    max_feature_nodes: int | None = field(
        default=None,
        metadata={
            "help": "keep only this many features, the most influential by an estimate updated "
            "as rows are computed (circuit-tracer's max_feature_nodes; None: every active feature)"
        },
    )
    max_links: int | None = field(
        default=100_000,
        metadata={
            "help": "most links written to graph.json after pruning, the strongest by "
            "influence-weighted score (about 70 bytes each; None: every kept link)"
        },
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
        if self.max_feature_nodes is not None and self.max_feature_nodes < 1:
            raise SparseCircuitsError("max_feature_nodes must be at least 1 (or None for all)")
        if self.max_links is not None and self.max_links < 1:
            raise SparseCircuitsError("max_links must be at least 1 (or None for all)")
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
    `n_active_features` counts the prompt's active features; with `max_feature_nodes` the graph
    keeps `n_features` of them. `logit_ids` past the vocabulary are targets without a token
    (`graph.targets`); `logit_probs` are the targets' influence weights.
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
    n_active_features: int | None = None
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


def build_graph(
    replacement: ReplacementModel,
    prompt: str | Tensor,
    config: GraphConfig | None = None,
    targets: Sequence[GraphTarget] | None = None,
) -> AttributionGraph:
    """Return the unpruned `AttributionGraph` of `prompt` (text, or input_ids `[T]` / `[1, T]`),
    built in the steps of the module docstring. `targets` are its output nodes (default: the
    salient logits of `config`; see `graph.targets`)."""
    cfg = replace(config) if config else GraphConfig()  # a copy: the graph keeps it
    cfg.check()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # 1. one clean run
    input_ids, text = _prompt_ids(replacement, prompt)
    state = replacement.run(input_ids)
    timings["clean_run"] = time.perf_counter() - start
    # 2. nodes
    if targets is None:
        targets = salient_targets(
            replacement, state.logits[0, -1], cfg.max_n_logits, cfg.desired_logit_prob
        )
    logit_ids, logit_weights, directions, labels = target_arrays(replacement, targets)
    nodes = graph_nodes(replacement, state, cfg.skip_bos, logit_ids, logit_weights)
    # 3. targets
    rows = RowMaker.for_targets(
        replacement, input_ids, state, nodes, cfg.batch_size, timings, directions
    )
    # 4. edge rows
    streamed: _Streamed | None = None
    active, activations = nodes.active, nodes.activations
    if cfg.max_feature_nodes is not None:
        row_cap = cfg.row_cap(cfg.max_feature_nodes + nodes.n_logits, nodes.n_nodes)
        adjacency, kept = budget_edges(
            rows, cfg.max_feature_nodes, UPDATE_INTERVAL, cfg.row_mass, row_cap
        )
        active, activations = active[kept], activations[kept]
        cfg.store = "all"  # every computed row is stored
    else:
        adjacency, streamed = _edges(rows, cfg)
    timings["edges"] = time.perf_counter() - start - timings["clean_run"]
    # 5. the graph
    tokenizer = replacement.adapter.tokenizer
    ids = input_ids[0].cpu()
    return AttributionGraph(
        prompt=text,
        input_ids=ids,
        prompt_tokens=[tokenizer.decode([i]) for i in ids.tolist()],
        n_layers=replacement.n_layers,
        active_features=active,
        activations=activations,
        logit_ids=nodes.logit_ids,
        logit_probs=nodes.logit_probs,
        logit_tokens=labels,
        adjacency=adjacency,
        config=cfg,
        timings=timings,
        full_influence=None if streamed is None else streamed.influence,
        full_scores=None if streamed is None else streamed.scores,
        n_active_features=nodes.n_features,
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


def _edges(rows: RowMaker, cfg: GraphConfig) -> tuple[SparseAdjacency, _Streamed | None]:
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


def _collect_edges(
    rows: RowMaker,
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
    for nodes, block, columns in rows.blocks([targets]):
        t_idx, s_idx, w, sums = sparsify_rows(block, nodes, columns, row_mass, row_cap)
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


def _stream_influence(rows: RowMaker, cfg: GraphConfig, row_cap: int | None) -> _Streamed:
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
    for nodes, block, columns in rows.blocks(groups):
        t_idx, s_idx, w, sums = sparsify_rows(block, nodes, columns, cfg.row_mass, row_cap)
        row_abs_sums[nodes] = sums
        t_idx, s_idx = t_idx.long(), s_idx.long()
        normalized = w.abs().double() / row_abs_sums[t_idx].clamp_min(1e-10)
        influence.index_add_(0, s_idx, normalized * (influence + logit_weights)[t_idx])
        from_error = (s_idx >= n_features) & (s_idx < n_features + n_errors)
        error_fraction.index_add_(0, t_idx[from_error], normalized[from_error])
    node_mask = influential_nodes(influence, cfg.node_threshold, n_tokens + n_logits)
    scores = scores_from(influence, error_fraction, logit_weights, n_features, n_errors, n_tokens)
    return _Streamed(influence, node_mask, row_abs_sums, scores)
