"""Attribution graphs: direct effects among all active transcoder features of a prompt.

Nodes (circuit-tracer's layout): `[active features (F) | MLP errors (L x T) | token embeddings (T) |
output logits (K)]`. Errors and tokens are sources only; features and logits are targets. A
feature target is its transcoder pre-activation `(x - b_in) W_enc[:, f] + b_enc[f]`; a logit target
is the de-meaned logit `logit_t - mean_v logit_v`. The logits kept are the most likely next tokens
up to a cumulative probability of `desired_logit_prob` (at most `max_n_logits`).

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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.graph import neuronpedia as npd
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


@dataclass
class GraphConfig:
    """How to build and prune an attribution graph."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 64  # targets per batched backward pass
    row_mass: float = 0.999  # per row, keep the largest |edges| covering this share (1 = all)
    max_edges_per_row: int | None = None  # and at most this many per row (None: no cap)
    # and at most this many stored edges in all (each row keeps at most edge_budget //
    # n_targets; ~12 bytes an edge): bounds storage on long prompts, but dropped edges change
    # influence pruning (benchmarks/graph_storage.py: at 256 tokens a 50M budget kept 42 % of
    # the exact graph's pruned nodes), so it is off by default
    edge_budget: int | None = None
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    skip_bos: bool = True  # no feature/error nodes at position 0
    # "all": keep every target's row (the full graph; re-prune at any threshold).
    # "influential": stream the rows in reverse layer order, computing the exact influence on
    # the fly, then recompute and keep only the rows among nodes passing `node_threshold`:
    # the same pruned graph and scores in memory linear in the prompt (one extra backward
    # per kept target); pruning at a higher node threshold then needs a rebuild
    store: str = "all"

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
        if self.store not in ("all", "influential"):
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
    `[features | errors (layer-major, L x T) | tokens | logits]`.

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
    timings: dict[str, float] = field(default_factory=dict)
    full_influence: Tensor | None = None
    stored_node_threshold: float | None = None
    full_scores: tuple[float, float] | None = None
    _node_influence: Tensor | None = field(default=None, init=False, repr=False)

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
    replacement: Any, prompt: str | Tensor, config: GraphConfig | None = None
) -> AttributionGraph:
    """Return the unpruned `AttributionGraph` of `prompt` (text, or input_ids `[T]` / `[1, T]`).

    `replacement` is a `sparsecircuits.circuits.replacement.ReplacementModel`.
    """
    cfg = config or GraphConfig()
    cfg.check()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    adapter = replacement.adapter
    if isinstance(prompt, str):
        input_ids = replacement.tokenize(prompt)
        text = prompt
    else:
        input_ids = prompt.reshape(1, -1).to(replacement.device)
        text = adapter.tokenizer.decode(input_ids[0].tolist())
    if input_ids.shape[0] != 1:
        raise SparseCircuitsError("build_graph takes one prompt; call it once per prompt")
    n_layers, n_pos = replacement.n_layers, int(input_ids.shape[1])
    state = replacement.run(input_ids)
    timings["clean_run"] = time.perf_counter() - start

    # ---- nodes
    first = 1 if cfg.skip_bos and n_pos > 1 else 0
    feats, acts, decoders = [], [], {}
    for layer in replacement.feature_layers:
        layer_acts = state.feature_acts[layer][0, first:]
        pos, feat = layer_acts.nonzero(as_tuple=True)  # sorted by position, then feature
        values = layer_acts[pos, feat]
        pos, feat = pos.cpu() + first, feat.cpu()  # index bookkeeping stays on the CPU
        feats.append(torch.stack([torch.full_like(pos, layer), pos, feat], dim=1))
        acts.append(values.cpu())
        index = feat.to(values.device)
        decoders[layer] = [
            (target, *_position_groups(pos, block[index] * values[:, None], n_pos))
            for target, block in replacement.decoders(layer)
        ]
    active = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(acts) if acts else torch.zeros(0)
    logit_ids, logit_probs = salient_logits(
        state.logits[0, -1], cfg.max_n_logits, cfg.desired_logit_prob
    )
    logit_ids, logit_probs = logit_ids.cpu(), logit_probs.cpu()
    n_feat, n_logits = int(active.shape[0]), int(logit_ids.numel())
    n_nodes = n_feat + n_layers * n_pos + n_pos + n_logits
    error_vectors = []
    for layer in range(n_layers):
        err = (
            state.errors[layer][0]
            if layer in replacement.feature_layers
            else state.mlp_out[layer][0]
        )
        if first:
            err = torch.cat([torch.zeros_like(err[:1]), err[1:]])
        error_vectors.append(err)
    embed = state.embed[0]

    # ---- targets: logits first, then features by layer (each batch's backward stays shallow).
    # The injected gradient is the target's input direction at its read point.
    W_U = replacement.W_U
    de_meaned = W_U[:, logit_ids.to(W_U.device)] - W_U.mean(1, keepdim=True)
    injections = [de_meaned.T]  # [K, d]
    for layer in replacement.feature_layers:
        layer_feats = active[active[:, 0] == layer, 2].to(replacement.device)
        injections.append(replacement.encoder(layer).W_enc[:, layer_feats].T)
    feature_counts = [int(decoders[k][0][3].numel()) for k in sorted(decoders)]
    rows = _RowMaker(
        replacement=replacement,
        input_ids=input_ids,
        state=state,
        n_nodes=n_nodes,
        injection=torch.cat(injections),  # [n_targets, d]
        target_layer=torch.cat([torch.full((n_logits,), n_layers, dtype=torch.long), active[:, 0]]),
        target_pos=torch.cat([torch.full((n_logits,), n_pos - 1, dtype=torch.long), active[:, 1]]),
        target_node=torch.cat([torch.arange(n_logits) + n_nodes - n_logits, torch.arange(n_feat)]),
        decoders=decoders,
        feature_offsets=[sum(feature_counts[:i]) for i in range(len(feature_counts) + 1)],
        error_vectors=error_vectors,
        embed=embed,
        batch_size=cfg.batch_size,
        timings=timings,
    )
    row_cap = cfg.row_cap(int(rows.target_node.numel()), n_nodes)
    timings["forward"] = 0.0
    streamed: _Streamed | None = None
    all_targets = torch.arange(int(rows.target_node.numel()))
    if cfg.store == "all":
        sums = torch.zeros(n_nodes, dtype=torch.float64)
        adjacency = _collect_edges(rows, all_targets, cfg.row_mass, row_cap, sums)
    else:
        streamed = _stream_influence(
            rows, cfg, row_cap, n_feat, n_layers * n_pos, n_pos, logit_probs
        )
        # pass two: recompute the kept targets' rows, store their edges from kept sources
        kept = all_targets[streamed.node_mask[rows.target_node]]
        adjacency = _collect_edges(
            rows, kept, cfg.row_mass, row_cap, streamed.row_abs_sums, streamed.node_mask
        )
    timings["backward"] = time.perf_counter() - start - timings["clean_run"] - timings["forward"]

    tokenizer = adapter.tokenizer
    ids = input_ids[0].cpu()
    graph = AttributionGraph(
        prompt=text,
        input_ids=ids,
        prompt_tokens=[tokenizer.decode([i]) for i in ids.tolist()],
        n_layers=n_layers,
        active_features=active.cpu(),
        activations=activations.cpu(),
        logit_ids=logit_ids.cpu(),
        logit_probs=logit_probs.cpu(),
        logit_tokens=[tokenizer.decode([i]) for i in logit_ids.tolist()],
        adjacency=adjacency,
        timings=timings,
    )
    if streamed is not None:
        graph.full_influence = streamed.influence
        graph.stored_node_threshold = cfg.node_threshold
        graph.full_scores = streamed.scores
    return graph


@dataclass
class _RowMaker:
    """What computing edge rows needs: the clean run, the targets and the source read-outs.

    Target `i` (`0 <= i < n_targets`: logits first, then features in node order) is node
    `target_node[i]`, read at `(target_layer[i], target_pos[i])` along `injection[i]`.
    """

    replacement: Any
    input_ids: Tensor
    state: Any
    n_nodes: int
    injection: Tensor
    target_layer: Tensor
    target_pos: Tensor
    target_node: Tensor
    decoders: dict[int, list[tuple[int, Tensor, Tensor, Tensor]]]
    feature_offsets: list[int]
    error_vectors: list[Tensor]
    embed: Tensor
    batch_size: int
    timings: dict[str, float]

    def bucket_ends(self) -> Tensor:
        """Prefix lengths `[n_buckets]`: targets at a position q only need the prompt up to q."""
        n_pos = int(self.input_ids.shape[1])
        n_buckets = max(1, min(8, n_pos // 16))
        return torch.tensor([-(-n_pos * (i + 1) // n_buckets) for i in range(n_buckets)])

    def blocks(self, groups: list[Tensor]) -> Any:
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
            block = _row_block(
                self.replacement,
                batch,
                read_points,
                sources,
                last,
                self.n_nodes,
                end,
                self.target_layer,
                self.target_pos,
                self.injection,
                self.decoders,
                self.feature_offsets,
                self.error_vectors,
                self.embed,
            )
            if last:
                del forwards[index]
            yield self.target_node[batch], block.cpu()


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
        n_nodes=rows.n_nodes,
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


def _stream_influence(
    rows: _RowMaker,
    cfg: GraphConfig,
    row_cap: int | None,
    n_features: int,
    n_errors: int,
    n_tokens: int,
    logit_probs: Tensor,
) -> _Streamed:
    """Influence on the logits without storing the adjacency: rows come in reverse topological
    order (logits, then features from the last layer down; a feature only reads lower layers),
    so a row's target influence is final when the row is computed and is pushed onto its
    sources at once: `influence[s] += (influence[t] + w[t]) * |A[t, s]| / sum|A[t, :]|`, the
    terms of `w A + w A^2 + ...` grouped by target. Rows are truncated exactly as stored rows
    would be, so every number equals the full graph's."""
    n = rows.n_nodes
    logit_weights = logit_weight_vector(n, logit_probs)
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
    node_mask = influential_nodes(
        influence, cfg.node_threshold, n_tokens + int(logit_probs.numel())
    )
    scores = scores_from(influence, error_fraction, logit_weights, n_features, n_errors, n_tokens)
    return _Streamed(influence, node_mask, row_abs_sums, scores)


def _frozen_forward(
    replacement: Any, input_ids: Tensor, state: Any = None
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


def _row_block(
    replacement: Any,
    targets: Tensor,
    read_points: dict[int, Tensor],
    sources: list[Tensor],
    last: bool,
    n_nodes: int,
    prefix: int,
    target_layer: Tensor,
    target_pos: Tensor,
    injection: Tensor,
    decoders: dict[int, list[tuple[int, Tensor, Tensor, Tensor]]],
    feature_offsets: list[int],
    error_vectors: list[Tensor],
    embed: Tensor,
) -> Tensor:
    """Dense edge rows `[len(targets), n_nodes]` of a batch of targets, from one vmapped backward."""
    batch, n_layers = int(targets.numel()), replacement.n_layers
    outputs, grad_outputs = [], []
    for layer in sorted(set(target_layer[targets].tolist())):
        slots = (target_layer[targets] == layer).nonzero(as_tuple=True)[0]
        grad = torch.zeros(
            batch, *read_points[layer].shape, dtype=replacement.dtype, device=replacement.device
        )
        grad[slots, 0, target_pos[targets[slots]]] = injection[targets[slots]]
        outputs.append(read_points[layer])
        grad_outputs.append(grad)
    grads = torch.autograd.grad(
        outputs,
        sources,
        grad_outputs=grad_outputs,
        retain_graph=not last,
        is_grads_batched=True,
        allow_unused=True,
    )
    block = torch.zeros(batch, n_nodes, dtype=torch.float32, device=replacement.device)
    n_feat = feature_offsets[-1]
    n_pos = int(embed.shape[0])
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
                    positions.numel(), batch, dec_padded.shape[1], dtype=g.dtype, device=g.device
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
                "bpd,pd->bp", g[:, 0], error_vectors[layer][:prefix]
            )
    if grads[n_layers] is not None:
        col = n_feat + n_layers * n_pos
        block[:, col : col + prefix] = torch.einsum(
            "bpd,pd->bp", grads[n_layers][:, 0], embed[:prefix]
        )
    return block


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


# ------------------------------------------------------------------------------ export


def to_neuronpedia(
    graph: AttributionGraph,
    pruned: PruneResult | None = None,
    *,
    slug: str = "graph",
    scan: str = "",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    generation: GraphConfig | None = None,
    info: dict[str, Any] | None = None,
) -> npd.NeuronpediaGraph:
    """The pruned graph in Neuronpedia's graph JSON model (prunes with the thresholds if not given)."""
    from sparsecircuits import __version__

    pruned = pruned or graph.prune(node_threshold, edge_threshold)
    n_feat, n_err, n_pos = graph.n_features, graph.n_errors, graph.n_pos
    cumulative = pruned.cumulative_scores.tolist()
    nodes: dict[int, npd.GraphNode] = {}
    for i in pruned.node_mask.nonzero(as_tuple=True)[0].tolist():
        if i < n_feat:
            layer, pos, feat = graph.active_features[i].tolist()
            nodes[i] = npd.feature_node(
                layer,
                feat,
                pos,
                n_pos,
                activation=float(graph.activations[i]),
                influence=cumulative[i],
            )
        elif i < n_feat + n_err:
            layer, pos = divmod(i - n_feat, n_pos)
            nodes[i] = npd.error_node(
                layer, pos, n_pos, graph.prompt_tokens[pos], influence=cumulative[i]
            )
        elif i < n_feat + n_err + n_pos:
            pos = i - n_feat - n_err
            nodes[i] = npd.token_node(
                int(graph.input_ids[pos]),
                pos,
                n_pos,
                graph.prompt_tokens[pos],
                influence=cumulative[i],
            )
        else:
            k = i - n_feat - n_err - n_pos
            nodes[i] = npd.logit_node(
                int(graph.logit_ids[k]),
                n_pos - 1,
                graph.n_layers,
                graph.logit_tokens[k],
                float(graph.logit_probs[k]),
                is_target=k == 0,
            )
    adj = graph.adjacency
    kept = pruned.edge_mask.nonzero(as_tuple=True)[0]
    links = []
    connected: set[int] = set()
    for t, s, w in zip(
        adj.targets[kept].tolist(),
        adj.sources[kept].tolist(),
        adj.weights[kept].tolist(),
        strict=True,
    ):
        if t in nodes and s in nodes:
            links.append(
                npd.GraphLink(source=nodes[s].node_id, target=nodes[t].node_id, weight=float(w))
            )
            connected.update((t, s))
    used = [
        node
        for i, node in sorted(nodes.items())
        if i in connected
        or node.feature_type in (npd.FEATURE_TYPE_EMBEDDING, npd.FEATURE_TYPE_LOGIT)
    ]
    gen = generation or GraphConfig()
    metadata = npd.GraphMetadata(
        slug=slug,
        scan=scan,
        prompt_tokens=list(graph.prompt_tokens),
        prompt=graph.prompt,
        node_threshold=node_threshold,
        info=npd.GraphInfo(
            generator=npd.Generator(name="sparsecircuits", version=__version__),
            create_time_ms=float(int(time.time() * 1000)),
            extra=dict(info or {}),
        ),
        generation_settings=npd.GenerationSettings(
            max_n_logits=gen.max_n_logits,
            desired_logit_prob=gen.desired_logit_prob,
            batch_size=gen.batch_size,
            max_feature_nodes=graph.n_features,
            extra={
                "row_mass": gen.row_mass,
                "max_edges_per_row": gen.max_edges_per_row,
                "edge_budget": gen.edge_budget,
                "skip_bos": gen.skip_bos,
                "store": gen.store,
            },
        ),
        pruning_settings=npd.PruningSettings(
            node_threshold=node_threshold, edge_threshold=edge_threshold
        ),
        schema_version=1,
    )
    return npd.NeuronpediaGraph(
        metadata=metadata, qParams=npd.default_qparams(), nodes=used, links=links
    )
