"""Attribution graphs: every edge equals an intervention with everything frozen; export validates."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.graph.build import GraphConfig, build_graph, salient_logits
from sparsecircuits.circuits.graph.neuronpedia import (
    export_graph,
    to_neuronpedia,
    validate_graph_json,
)
from sparsecircuits.circuits.graph.prune import graph_scores
from sparsecircuits.circuits.replacement import (
    Edits,
    EmbedEdit,
    ErrorEdit,
    FeatureEdit,
    Multipliers,
    ReplacementModel,
)
from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.errors import SparseCircuitsError

PROMPT = "The cat saw the house in the year 1732"


def _transcoders(
    adapter, architecture: str, layers, d_sae: int = 48, k: int = 5, hook_out: str = "hook_mlp_out"
):
    out = {}
    for layer in layers:
        cfg = DictionaryConfig(
            architecture=architecture,
            kind="transcoder",
            d_in=adapter.d_model,
            d_sae=d_sae,
            k=k,
            hook_in=f"blocks.{layer}.hook_mlp_in",
            hook_out=f"blocks.{layer}.{hook_out}",
            seed=layer + 7,
        )
        tc = make(cfg)
        gen = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            tc.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.2)
            tc.b_dec.copy_(torch.randn(adapter.d_model, generator=gen) * 0.1)
        out[layer] = tc
    return out


@pytest.fixture(
    scope="module",
    params=["gpt2", "llama", "llama3", "gemma2", "gemma3_text", "gemma2-mlp.hook_out"],
)
def replacement(request, tiny_model_dir):
    """The last: transcoders writing the MLP's own output, before Gemma's post-MLP norm."""
    from sparsecircuits.models import load_model

    family, _, hook_out = request.param.partition("-")
    adapter = load_model(tiny_model_dir(family), device="cpu")
    architecture = "topk" if family == "gpt2" else "relu"
    layers = (
        range(adapter.n_layers) if family == "gpt2" else [0, 2]
    )  # the others: layer 1 has no transcoder
    transcoders = _transcoders(adapter, architecture, layers, hook_out=hook_out or "hook_mlp_out")
    return ReplacementModel(adapter, transcoders)


def _target_values(rm, graph, state) -> torch.Tensor:
    """Every target's value: feature pre-activations and de-meaned logits (before a final
    soft-cap), in node order."""
    values = torch.zeros(graph.n_nodes, dtype=torch.float64)
    for i, (layer, pos, feat) in enumerate(graph.active_features.tolist()):
        values[i] = float(state.feature_pre[layer][0, pos, feat])
    logits = (state.final_normed[0, -1] @ rm.W_U + rm.b_U).double()
    for k, token in enumerate(graph.logit_ids.tolist()):
        values[graph.logit_index(k)] = logits[token] - logits.mean()
    return values


def _ablated(rm, state, graph, source: int):
    """Frozen re-run with source node `source` removed."""
    n_feat, n_pos = graph.n_features, graph.n_pos
    if source < n_feat:
        layer, pos, feat = graph.active_features[source].tolist()
        return rm.run_with(
            state,
            Edits(features=[FeatureEdit(layer, pos, feat, value=0.0)]),
            freeze=True,
            features="frozen",
        )
    if source < n_feat + graph.n_errors:
        layer, pos = divmod(source - n_feat, n_pos)
        if layer in rm.feature_layers:
            return rm.run_with(
                state,
                Edits(errors=[ErrorEdit(layer, pos=pos, scale=0.0)]),
                freeze=True,
                features="frozen",
            )
        # a layer without a transcoder: its error node is the whole frozen MLP output
        errors = {lay: torch.ones(1, n_pos, 1) for lay in range(rm.n_layers)}
        errors[layer][0, pos] = 0.0
        with torch.no_grad():
            return rm.run_with_multipliers(state, Multipliers(errors=errors))
    pos = source - n_feat - graph.n_errors
    return rm.run_with(
        state, Edits(embeds=[EmbedEdit(pos=pos, scale=0.0)]), freeze=True, features="frozen"
    )


def test_every_edge_equals_a_frozen_ablation(replacement):
    rm = replacement
    graph = build_graph(
        rm, PROMPT, GraphConfig(row_mass=1.0, batch_size=7, max_edges_per_row=None, store="all")
    )
    state = rm.run(graph.input_ids[None])
    clean = _target_values(rm, graph, state)
    dense = graph.adjacency.to_dense().double()
    assert graph.n_features > 10 and graph.adjacency.nnz > 100
    n_sources = graph.n_nodes - graph.logit_ids.numel()
    checked = 0
    bos_errors = {graph.error_index(layer, 0) for layer in range(rm.n_layers)}
    for source in range(n_sources):
        if (
            source in bos_errors
        ):  # not nodes (as in circuit-tracer): their effect is left out, like a bias
            continue
        change = clean - _target_values(rm, graph, _ablated(rm, state, graph, source))
        torch.testing.assert_close(change, dense[:, source], atol=2e-5, rtol=1e-4)
        checked += int((dense[:, source] != 0).sum())
    assert checked == graph.adjacency.nnz
    # rows hold only targets; sources at BOS (pos 0) carry nothing
    n_feat = graph.n_features
    assert (graph.active_features[:, 1] > 0).all()
    assert not dense[:, [graph.error_index(layer, 0) for layer in range(rm.n_layers)]].any()
    assert not dense[n_feat : n_feat + graph.n_errors + graph.n_pos].any()
    assert torch.allclose(graph.adjacency.row_abs_sums, dense.abs().sum(1))


def test_truncated_rows_keep_exact_weights_and_sums(replacement):
    full = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, max_edges_per_row=None, store="all")
    )
    cut = build_graph(replacement, PROMPT, GraphConfig(row_mass=0.9, batch_size=5, store="all"))
    assert cut.adjacency.nnz < full.adjacency.nnz
    dense_full = full.adjacency.to_dense()
    torch.testing.assert_close(
        cut.adjacency.weights,
        dense_full[cut.adjacency.targets, cut.adjacency.sources],
        atol=1e-6,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        cut.adjacency.row_abs_sums, full.adjacency.row_abs_sums, atol=1e-5, rtol=1e-5
    )
    kept = torch.zeros(full.n_nodes, dtype=torch.float64).index_add_(
        0, cut.adjacency.targets, cut.adjacency.weights.abs().double()
    )
    rows = full.adjacency.row_abs_sums > 0
    assert (kept[rows] >= 0.9 * full.adjacency.row_abs_sums[rows] - 1e-6).all()


def test_salient_logits_cut_at_cumulative_probability():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05]))
    ids, probs = salient_logits(logits, 10, 0.8)
    assert ids.tolist() == [0, 1] and torch.allclose(probs, torch.tensor([0.5, 0.3]))
    ids, _ = salient_logits(logits, 10, 0.95)
    assert len(ids) == 4
    ids, _ = salient_logits(logits, 2, 0.99)
    assert len(ids) == 2


def test_export_is_valid_neuronpedia_json_with_pruned_nodes(replacement):
    graph = build_graph(replacement, PROMPT, GraphConfig(store="all", batch_size=16))
    pruned = graph.prune(0.8, 0.98)
    model = to_neuronpedia(graph, pruned, slug="t", scan="tiny")
    data = export_graph(model)
    validate_graph_json(data)
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert (
        {"embedding", "logit"}
        <= kinds
        <= {"embedding", "logit", "cross layer transcoder", "mlp reconstruction error"}
    )
    if (
        len(replacement.feature_layers) == replacement.n_layers
    ):  # random llama graphs may prune every feature
        assert "cross layer transcoder" in kinds
    assert sum(n["feature_type"] == "embedding" for n in data["nodes"]) == graph.n_pos
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == graph.logit_ids.numel() and logits[0]["is_target_logit"]
    assert data["metadata"]["prompt_tokens"] == graph.prompt_tokens
    settings = data["metadata"]["generation_settings"]  # the config the graph was built with
    assert (settings["batch_size"], settings["store"]) == (16, "all")
    # links carry the raw adjacency weights
    dense = graph.adjacency.to_dense()
    index = {}
    for i, (layer, pos, feat) in enumerate(graph.active_features.tolist()):
        index[f"{layer}_{feat}_{pos}"] = i
    for link in data["links"][:50]:
        if link["source"] in index and link["target"] in index:
            assert link["weight"] == pytest.approx(
                float(dense[index[link["target"]], index[link["source"]]])
            )
    replacement_score, completeness = graph.scores()  # reuses the influence `prune` computed
    assert 0.0 <= replacement_score <= 1.0 and 0.0 <= completeness <= 1.0
    fresh = graph_scores(
        graph.adjacency, graph.logit_probs, graph.n_features, graph.n_errors, graph.n_pos
    )
    assert fresh == pytest.approx((replacement_score, completeness))


def test_long_prompt_uses_prefix_buckets_and_stays_exact(replacement):
    """40 tokens: targets are grouped into prompt prefixes; sampled columns still equal ablations."""
    rm = replacement
    prompt = " ".join([PROMPT] * 4)
    graph = build_graph(
        rm, prompt, GraphConfig(row_mass=1.0, batch_size=32, max_edges_per_row=None, store="all")
    )
    assert graph.n_pos >= 32  # at least two prefix buckets
    state = rm.run(graph.input_ids[None])
    clean = _target_values(rm, graph, state)
    dense = graph.adjacency.to_dense().double()
    gen = torch.Generator().manual_seed(0)
    n_sources = graph.n_nodes - graph.logit_ids.numel()
    bos_errors = {graph.error_index(layer, 0) for layer in range(rm.n_layers)}
    picks = [
        i for i in torch.randperm(n_sources, generator=gen)[:25].tolist() if i not in bos_errors
    ]
    picks += [graph.token_index(graph.n_pos - 2), graph.n_features - 1]
    for source in picks:
        change = clean - _target_values(rm, graph, _ablated(rm, state, graph, source))
        torch.testing.assert_close(change, dense[:, source], atol=2e-5, rtol=1e-4)


def test_edge_cap_per_row(replacement):
    capped = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, max_edges_per_row=3, store="all")
    )
    counts = torch.bincount(capped.adjacency.targets.long(), minlength=capped.n_nodes)
    assert counts.max() == 3
    full = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, max_edges_per_row=None, store="all")
    )
    dense = full.adjacency.to_dense()
    for row in capped.adjacency.targets.unique().tolist():
        top = dense[row].abs().topk(min(3, int((dense[row] != 0).sum()))).values
        mine = (
            capped.adjacency.weights[capped.adjacency.targets == row]
            .abs()
            .sort(descending=True)
            .values
        )
        torch.testing.assert_close(mine, top)


def test_edge_budget_caps_rows_only_when_it_binds(replacement):
    assert GraphConfig(edge_budget=10**9).row_cap(n_targets=10, n_nodes=50) is None
    assert GraphConfig(edge_budget=100).row_cap(n_targets=10, n_nodes=50) == 10
    assert GraphConfig(edge_budget=100, max_edges_per_row=4).row_cap(10, 50) == 4
    assert GraphConfig(edge_budget=None).row_cap(10, 50) is None
    full = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, edge_budget=None, store="all")
    )
    n_targets = full.n_features + int(full.logit_ids.numel())
    budget = 4 * n_targets
    small = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, edge_budget=budget, store="all")
    )
    assert small.adjacency.weights.numel() <= budget < full.adjacency.weights.numel()
    torch.testing.assert_close(small.adjacency.row_abs_sums, full.adjacency.row_abs_sums)
    with pytest.raises(SparseCircuitsError, match="edge_budget"):
        GraphConfig(edge_budget=0).check()


def _edge_set(graph, pruned) -> dict[tuple[int, int], float]:
    adj, keep = graph.adjacency, pruned.edge_mask
    return {
        (t, s): w
        for t, s, w in zip(
            adj.targets[keep].tolist(),
            adj.sources[keep].tolist(),
            adj.weights[keep].tolist(),
            strict=True,
        )
    }


@pytest.mark.parametrize("row_mass", [1.0, 0.95])
def test_streamed_graph_prunes_exactly_like_the_full_graph(replacement, row_mass):
    """store="influential" keeps O(nodes) memory, yet influence, scores, pruned nodes and kept
    edges equal those of the full graph (also with truncated rows, and over prefix buckets)."""
    prompt = " ".join([PROMPT] * 4)
    full = build_graph(
        replacement, prompt, GraphConfig(row_mass=row_mass, batch_size=16, store="all")
    )
    streamed = build_graph(
        replacement, prompt, GraphConfig(row_mass=row_mass, batch_size=16, store="influential")
    )
    assert streamed.adjacency.nnz < full.adjacency.nnz
    for threshold in (0.8, 0.5):
        a, b = full.prune(threshold, 0.98), streamed.prune(threshold, 0.98)
        torch.testing.assert_close(b.node_influence, a.node_influence, rtol=1e-5, atol=1e-12)
        assert torch.equal(a.node_mask, b.node_mask)
        mine, theirs = _edge_set(streamed, b), _edge_set(full, a)
        assert mine.keys() == theirs.keys() and len(mine) > 0
        for key, weight in theirs.items():
            assert mine[key] == pytest.approx(weight, rel=1e-4, abs=1e-6)
    assert streamed.scores() == pytest.approx(full.scores(), rel=1e-6)
    with pytest.raises(SparseCircuitsError, match="rebuild it with store='all'"):
        streamed.prune(0.9, 0.98)
    with pytest.raises(SparseCircuitsError, match="store must be"):
        GraphConfig(store="some").check()


def test_every_family_uses_the_transposed_model_and_stays_exact(tiny_models, variant):
    """Every tiny family (parallel residual, GQA, skip transcoders, ln2.hook_normalized inputs,
    a layer without a transcoder) passes the adjoint's probe, and sampled edges equal ablations."""
    import warnings

    rm, input_ids = tiny_models[variant]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to autograd warns
        graph = build_graph(rm, input_ids[0], GraphConfig(row_mass=1.0, batch_size=5, store="all"))
    assert graph.timings["transpose"] > 0
    state = rm.run(graph.input_ids[None])
    clean = _target_values(rm, graph, state)
    dense = graph.adjacency.to_dense().double()
    gen = torch.Generator().manual_seed(1)
    n_sources = graph.n_nodes - graph.logit_ids.numel()
    bos_errors = {graph.error_index(layer, 0) for layer in range(rm.n_layers)}
    picks = [
        i for i in torch.randperm(n_sources, generator=gen)[:12].tolist() if i not in bos_errors
    ]
    for source in picks:
        change = clean - _target_values(rm, graph, _ablated(rm, state, graph, source))
        torch.testing.assert_close(change, dense[:, source], atol=2e-5, rtol=1e-4)


def test_feature_budget_keeps_exact_rows_of_the_chosen_features(replacement):
    full = build_graph(replacement, PROMPT, GraphConfig(row_mass=1.0, store="all"))
    everything = build_graph(
        replacement, PROMPT, GraphConfig(row_mass=1.0, max_feature_nodes=10**6)
    )
    torch.testing.assert_close(everything.adjacency.to_dense(), full.adjacency.to_dense())
    budget = full.n_features // 3
    small = build_graph(replacement, PROMPT, GraphConfig(row_mass=1.0, max_feature_nodes=budget))
    assert small.n_features == budget and small.n_active_features == full.n_features
    # every kept feature is an active feature; its row and its edges to kept nodes are the full graph's
    index = [full.feature_index(*f) for f in small.active_features.tolist()]
    non_features = list(range(full.n_features, full.n_nodes))
    nodes = torch.tensor(index + non_features)
    expected = full.adjacency.to_dense()[nodes][:, nodes]
    rows = torch.tensor(
        list(range(budget)) + list(range(small.n_nodes - small.logit_ids.numel(), small.n_nodes))
    )
    torch.testing.assert_close(small.adjacency.to_dense()[rows], expected[rows])
    # the first features chosen are the logits' strongest direct sources
    logit_rows = full.adjacency.to_dense()[-full.logit_ids.numel() :, : full.n_features]
    direct = logit_rows.abs() / full.adjacency.row_abs_sums[-full.logit_ids.numel() :, None].float()
    strongest = (full.logit_probs[:, None] * direct).sum(0).argmax()
    assert int(strongest) in index


def test_token_logit_difference_and_direction_targets(replacement):
    from sparsecircuits.circuits.graph.targets import (
        direction_target,
        logit_diff_target,
        token_target,
    )

    rm = replacement
    state = rm.run(rm.tokenize(PROMPT))
    good, bad = 5, 9
    diff = logit_diff_target(rm, good, bad)
    direction = direction_target(rm, rm.W_U[:, good] - rm.W_U[:, bad], "same")
    token = token_target(rm, state.logits[0, -1], good)
    config = GraphConfig(row_mass=1.0, store="all")
    graph = build_graph(rm, PROMPT, config, [diff, direction, token])
    assert graph.logit_ids.tolist() == [rm.W_U.shape[1], rm.W_U.shape[1] + 1, good]
    dense = graph.adjacency.to_dense().double()
    k0 = graph.logit_index(0)
    torch.testing.assert_close(dense[k0], dense[k0 + 1])

    # the logit-difference row equals ablations of the raw logit difference (before a final
    # soft-cap, as every logit target)
    def raw_logits(run):  # type: ignore[no-untyped-def]
        return (run.final_normed[0, -1] @ rm.W_U + rm.b_U).double()

    clean_logits = raw_logits(state)
    n_sources = graph.n_nodes - graph.logit_ids.numel()
    for source in range(0, n_sources, 7):
        if source in {graph.error_index(layer, 0) for layer in range(rm.n_layers)}:
            continue
        logits = raw_logits(_ablated(rm, state, graph, source))
        change = (clean_logits[good] - clean_logits[bad]) - (logits[good] - logits[bad])
        torch.testing.assert_close(change, dense[k0, source], atol=2e-5, rtol=1e-4)
    with pytest.raises(SparseCircuitsError, match="d_model"):
        direction_target(rm, torch.ones(3))


def test_export_caps_links_and_says_so(replacement):
    graph = build_graph(replacement, PROMPT, GraphConfig(store="all", max_links=25))
    data = export_graph(to_neuronpedia(graph, node_threshold=0.8, edge_threshold=0.98))
    validate_graph_json(data)
    assert len(data["links"]) <= 25
    extra = data["metadata"]["pruning_settings"]  # `extra` keys are written inline
    assert extra["max_links"] == 25 and extra["links_before_cap"] > 25


def test_autograd_fallback_when_the_transposed_model_does_not_match(replacement, monkeypatch):
    """A model the adjoint does not describe is caught by its probe; autograd then builds the
    same graph."""
    from sparsecircuits.circuits.graph import adjoint, rows

    config = GraphConfig(row_mass=1.0, store="all", batch_size=16)
    fast = build_graph(replacement, PROMPT, config)
    original = adjoint.FrozenAdjoint._attention
    monkeypatch.setattr(
        adjoint.FrozenAdjoint,
        "_attention",
        lambda self, *args: original(self, *args) * 1.01,
    )
    assert not adjoint.matches_autograd(replacement, replacement.tokenize(PROMPT))
    monkeypatch.setattr(adjoint.FrozenAdjoint, "_attention", original)
    monkeypatch.setattr(rows, "matches_autograd", lambda *_: False)
    with pytest.warns(UserWarning, match="autograd"):
        slow = build_graph(replacement, PROMPT, config)
    torch.testing.assert_close(
        slow.adjacency.to_dense(), fast.adjacency.to_dense(), atol=2e-5, rtol=1e-4
    )
