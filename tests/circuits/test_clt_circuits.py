"""Cross-layer transcoders in the replacement model and every circuit tool built on it.

A CLT feature of layer ℓ writes `act · W_dec[ℓ][f, t-ℓ]` into MLP output t for every t >= ℓ: the
clean run stays exact, a one-layer CLT behaves exactly like the per-layer transcoder it copies,
graph edges equal frozen ablations (also edges that only flow through cross-layer blocks), and
the input-invariant views sum the decoder blocks a reader sees.
"""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits import attribution as A
from sparsecircuits.circuits import deembed as D
from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
from sparsecircuits.circuits.interventions import edited_logits
from sparsecircuits.circuits.paths import search_paths
from sparsecircuits.circuits.replacement import Edits, ErrorEdit, FeatureEdit, ReplacementModel
from sparsecircuits.circuits.verify import verify_nodes
from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    DictionaryConfig,
    make,
    save_dictionary,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.interpret import DashboardConfig, compute_dashboards
from sparsecircuits.models import load_model
from testkit import copy_one_layer_clt

PROMPT = "The cat saw the house in the year 1732"


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    """The tiny GPT-2 (3 layers, d_model 32) on the CPU."""
    return load_model(tiny_model_dir("gpt2"), device="cpu")


def make_clt(
    adapter,
    architecture: str = "relu",
    n_layers: int | None = None,
    hook_in: str = "blocks.{layer}.hook_mlp_in",
    hook_out: str = "blocks.{layer}.hook_mlp_out",
    d_sae: int = 24,
    seed: int = 0,
    cross_layer_only: bool = False,
) -> CrossLayerTranscoder:
    """A CLT with random non-zero biases and decoders large enough to matter.

    `cross_layer_only` zeroes layer 0's own-layer block for its even features, so they write
    only into later MLPs.
    """
    cfg = DictionaryConfig(
        architecture=architecture,
        kind="clt",
        n_layers=adapter.n_layers if n_layers is None else n_layers,
        d_in=adapter.d_model,
        d_sae=d_sae,
        hook_in=hook_in,
        hook_out=hook_out,
        k=5,
        seed=seed,
    )
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        clt.b_enc.copy_(0.2 * torch.randn(clt.b_enc.shape, generator=gen))
        clt.b_in.copy_(0.1 * torch.randn(clt.b_in.shape, generator=gen))
        clt.b_dec.copy_(0.1 * torch.randn(clt.b_dec.shape, generator=gen))
        for W_dec in clt.W_dec:
            W_dec.copy_(torch.randn(W_dec.shape, generator=gen))
        if cross_layer_only:
            clt.W_dec[0][::2, 0] = 0.0
    return clt


def _stacked(state, layers) -> torch.Tensor:
    """The per-layer transcoder inputs `[b*p, L, d]` of a state, as the CLT takes them."""
    return torch.stack([state.tc_in[layer].flatten(0, 1) for layer in layers], dim=1)


# ---------------------------------------------------------------------------- exact forward


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_clean_run_reproduces_the_model_and_the_clt(adapter, architecture):
    clt = make_clt(adapter, architecture)
    rm = ReplacementModel(adapter, clt)
    ids = torch.randint(1, adapter.vocab_size, (3, 11), generator=torch.Generator().manual_seed(3))
    state = rm.run(ids)
    with torch.no_grad():
        hf_logits = adapter.model(ids).logits
    torch.testing.assert_close(state.logits, hf_logits, atol=1e-5, rtol=1e-5)
    # the replacement's feature activations and MLP reconstructions are the CLT's own
    layers = list(range(adapter.n_layers))
    with torch.no_grad():
        acts = clt.encode(_stacked(state, layers))
        recon = clt.decode(acts)
    for layer in layers:
        torch.testing.assert_close(
            state.feature_acts[layer].flatten(0, 1), acts[:, layer], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            state.tc_out[layer].flatten(0, 1), recon[:, layer], atol=1e-5, rtol=1e-5
        )
    assert all(int((state.feature_acts[layer] != 0).sum()) > 0 for layer in layers)
    # without errors the output is the CLT's (a different model), with them the true one
    dropped = rm.forward_with(state, Edits(drop_errors=set(layers)), freeze=False)
    assert not torch.allclose(dropped, hf_logits, atol=1e-3)


def test_live_edit_of_a_layer0_feature_changes_later_mlp_outputs_by_its_blocks(adapter):
    clt = make_clt(adapter)
    rm = ReplacementModel(adapter, clt)
    state = rm.run(rm.tokenize(PROMPT))
    pos = 4
    f = int(state.feature_acts[0][0, pos].argmax())
    act = float(state.feature_acts[0][0, pos, f])
    edited = rm.run_with(state, Edits(features=[FeatureEdit(0, pos, f)]), features="frozen")
    for target in range(adapter.n_layers):
        change = state.mlp_out[target][0, pos] - edited.mlp_out[target][0, pos]
        torch.testing.assert_close(
            change, act * clt.W_dec[0][f, target].detach(), atol=1e-5, rtol=1e-4
        )


# ---------------------------------------------------------------------------- one-layer CLT


def test_one_layer_clt_equals_the_per_layer_transcoder(adapter):
    layer = 1  # hooks without "{layer}": the one CLT layer sits at model layer 1
    clt = make_clt(
        adapter,
        n_layers=1,
        hook_in=f"blocks.{layer}.hook_mlp_in",
        hook_out=f"blocks.{layer}.hook_mlp_out",
        d_sae=32,
    )
    tc = make(
        DictionaryConfig(
            architecture="relu",
            kind="transcoder",
            d_in=adapter.d_model,
            d_sae=32,
            hook_in=f"blocks.{layer}.hook_mlp_in",
            hook_out=f"blocks.{layer}.hook_mlp_out",
        )
    )
    copy_one_layer_clt(clt, tc)
    rm_clt, rm_tc = ReplacementModel(adapter, clt), ReplacementModel(adapter, {layer: tc})
    assert rm_clt.feature_layers == [layer] and rm_clt.transcoders is clt
    ids = rm_tc.tokenize(PROMPT)
    s_clt, s_tc = rm_clt.run(ids), rm_tc.run(ids)
    torch.testing.assert_close(s_clt.feature_acts[layer], s_tc.feature_acts[layer])
    torch.testing.assert_close(s_clt.errors[layer], s_tc.errors[layer])

    config = GraphConfig(row_mass=1.0, batch_size=16, max_edges_per_row=None, store="all")
    g_clt, g_tc = build_graph(rm_clt, PROMPT, config), build_graph(rm_tc, PROMPT, config)
    assert torch.equal(g_clt.active_features, g_tc.active_features)
    assert g_clt.n_features > 5
    torch.testing.assert_close(g_clt.adjacency.to_dense(), g_tc.adjacency.to_dense())

    target_clt = A.logit_target(rm_clt, s_clt, int(s_clt.logits[0, -1].argmax()))
    target_tc = A.logit_target(rm_tc, s_tc, int(s_tc.logits[0, -1].argmax()))
    dec_clt = A.decompose(rm_clt, s_clt, target_clt.resid_vector(rm_clt, s_clt))
    dec_tc = A.decompose(rm_tc, s_tc, target_tc.resid_vector(rm_tc, s_tc))
    torch.testing.assert_close(dec_clt.features[layer], dec_tc.features[layer])
    torch.testing.assert_close(dec_clt.resid_total, dec_tc.resid_total)
    attr_clt = A.attribute(rm_clt, s_clt, target_clt, mode="linear")
    attr_tc = A.attribute(rm_tc, s_tc, target_tc, mode="linear")
    torch.testing.assert_close(attr_clt.features[layer], attr_tc.features[layer])
    f = int(s_tc.feature_acts[layer][0, -1].argmax())
    torch.testing.assert_close(
        D.feature_logits(rm_clt, layer, f).scores, D.feature_logits(rm_tc, layer, f).scores
    )


# ---------------------------------------------------------------------------- graph = ablation


@pytest.fixture(scope="module")
def clt_model(adapter):
    """A 3-layer CLT model whose even layer-0 features write only into MLPs 1 and 2."""
    clt = make_clt(adapter, cross_layer_only=True, seed=1)
    return ReplacementModel(adapter, clt), clt


def _target_values(graph, state) -> torch.Tensor:
    """Every target's value: feature pre-activations and de-meaned logits, in node order."""
    values = torch.zeros(graph.n_nodes, dtype=torch.float64)
    for i, (layer, pos, feat) in enumerate(graph.active_features.tolist()):
        values[i] = float(state.feature_pre[layer][0, pos, feat])
    logits = state.logits[0, -1].double()
    for k, token in enumerate(graph.logit_ids.tolist()):
        values[graph.logit_index(k)] = logits[token] - logits.mean()
    return values


def test_clt_graph_edges_equal_frozen_ablations(clt_model):
    rm, clt = clt_model
    graph = build_graph(
        rm, PROMPT, GraphConfig(row_mass=1.0, batch_size=9, max_edges_per_row=None, store="all")
    )
    state = rm.run(graph.input_ids[None])
    clean = _target_values(graph, state)
    dense = graph.adjacency.to_dense().double()
    n_feat, n_pos = graph.n_features, graph.n_pos
    assert n_feat > 50
    is_logit = torch.zeros(graph.n_nodes, dtype=torch.bool)
    is_logit[n_feat + graph.n_errors + n_pos :] = True
    target_layer = torch.full((graph.n_nodes,), -1)
    target_layer[:n_feat] = graph.active_features[:, 0]

    cross_only_edges = 0
    rel_errors = []
    for source in range(n_feat):
        layer, pos, feat = graph.active_features[source].tolist()
        edited = rm.run_with(
            state, Edits(features=[FeatureEdit(layer, pos, feat)]), features="frozen"
        )
        effect = clean - _target_values(graph, edited)
        edge = dense[:, source]
        torch.testing.assert_close(edge, effect, atol=2e-5, rtol=1e-4)
        big = effect.abs() > 1e-2
        rel_errors += ((edge[big] - effect[big]).abs() / effect[big].abs()).tolist()
        if layer == 0 and feat % 2 == 0:
            # writes only into MLPs 1 and 2: no direct effect on layer-1 pre-activations ...
            assert not edge[target_layer == 1].any()
            # ... but on layer-2 features (through block 0 -> 1) and logits (blocks 0 -> 1, 2)
            reached = edge[(target_layer == 2) | is_logit].abs() > 1e-3
            cross_only_edges += int(reached.sum())
    assert cross_only_edges > 0
    assert rel_errors and max(rel_errors) < 1e-4

    # error nodes of the CLT layers are exact too
    for layer in range(rm.n_layers):
        source = graph.error_index(layer, n_pos - 2)
        edited = rm.run_with(
            state, Edits(errors=[ErrorEdit(layer, pos=n_pos - 2)]), features="frozen"
        )
        torch.testing.assert_close(
            dense[:, source], clean - _target_values(graph, edited), atol=2e-5, rtol=1e-4
        )


def test_clt_attributions_equal_ablations_in_both_modes(clt_model):
    rm, _ = clt_model
    state = rm.run(rm.tokenize(PROMPT))
    target = A.logit_target(rm, state, int(state.logits[0, -1].argmax()))
    for mode in ("frozen", "linear"):
        attr = A.attribute(rm, state, target, mode=mode)
        nodes = [node for node, _ in attr.top_features(12)]
        assert any(node.layer == 0 for node in nodes)
        report = verify_nodes(rm, state, target, nodes, mode=mode)
        assert report.max_rel_error < 1e-4


# ---------------------------------------------------------------------------- one-hop and weights


def test_decomposition_and_path_vectors_sum_the_blocks_written_before_the_read(clt_model):
    rm, clt = clt_model
    state = rm.run(rm.tokenize(PROMPT))
    t = state.n_pos - 1
    j = int(state.feature_pre[2][0, t].argmax())
    vec = A.feature_target(rm, state, 2, j, pos=t).resid_vector(rm, state)
    dec = A.decompose(rm, state, vec)
    torch.testing.assert_close(dec.resid_total, vec.value(state) - vec.constant)
    # layer 2 reads after MLPs 0 and 1 wrote: blocks 0->0, 0->1 (not 0->2)
    W0 = clt.W_dec[0].detach()
    expected = state.feature_acts[0][0, t] * ((W0[:, 0] + W0[:, 1]) @ vec.vector[0])
    torch.testing.assert_close(dec.features[0][0], expected, atol=1e-5, rtol=1e-4)
    # each feature child's pulled-back vector evaluates to its contribution
    result = search_paths(rm, state, A.logit_target(rm, state, 7), num_iters=2, num_branches=6)
    checked = 0
    for path in result.all_paths():
        node = path[-1]
        if node.kind == "feature" and node.vector is not None:
            value = float(node.vector.value(state)[0])
            assert value == pytest.approx(node.contrib, rel=1e-4, abs=1e-5)
            checked += 1
    assert checked > 0


def test_connections_and_feature_logits_sum_the_decoder_blocks(clt_model):
    rm, clt = clt_model
    W0 = clt.W_dec[0].detach()
    enc2 = D.encoder_directions(rm, 2)
    torch.testing.assert_close(
        D.connection_matrix(rm, 0, 2), (W0[:, 0] + W0[:, 1]) @ enc2.T, atol=1e-5, rtol=1e-4
    )
    # through head 1.h: only MLP 0 writes before attention 1 reads
    through = D.ov_pull_back(rm, 1, 2, enc2)
    torch.testing.assert_close(
        D.connection_matrix(rm, 0, 2, head=(1, 2)), W0[:, 0] @ through.T, atol=1e-5, rtol=1e-4
    )
    for f in (0, 3):  # an even feature (cross-layer only) and an odd one
        expected = sum(
            D.unembed_directions(rm, W0[f, offset][None])[0] for offset in range(rm.n_layers)
        )
        scores = D.feature_logits(rm, 0, f).scores
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        rm.decoder_vectors(0, [0, 3]), W0[[0, 3]].sum(1), atol=1e-6, rtol=1e-5
    )


def test_feature_interventions_on_a_clt_layer(clt_model):
    rm, _ = clt_model
    ids = rm.tokenize(PROMPT)
    state = rm.run(ids)
    pos = 3
    f = int(state.feature_acts[0][0, pos].argmax())
    ablated = edited_logits(rm, ids, [FeatureEdit(0, pos, f, "ablate")], ids.shape[1], freeze=True)
    expected = rm.forward_with(state, Edits(features=[FeatureEdit(0, pos, f)]))
    torch.testing.assert_close(ablated, expected)
    assert not torch.allclose(ablated[0, -1], state.logits[0, -1])


def test_dashboards_give_one_entry_per_clt_layer(adapter, clt_model):
    rm, clt = clt_model
    ids = torch.randint(1, adapter.vocab_size, (4, 12), generator=torch.Generator().manual_seed(2))
    config = DashboardConfig(n_top=3, n_samples=4, context_left=2, context_right=1, n_logits=5)
    dashboards = compute_dashboards(adapter, {"clt": clt}, [ids[:2], ids[2:]], config)
    assert sorted(dashboards) == ["clt.layer0", "clt.layer1", "clt.layer2"]
    state = rm.run(ids)
    for layer in range(rm.n_layers):
        dash = dashboards[f"clt.layer{layer}"]
        assert dash.layer == layer and dash.hook_in == f"blocks.{layer}.hook_mlp_in"
        torch.testing.assert_close(
            dash.max_acts, state.feature_acts[layer][:, 1:].flatten(0, 1).max(0).values.clamp_min(0)
        )
        assert dash.top_logit_values is not None and dash.top_logit_ids is not None
        for f in (0, 5):
            scores = D.feature_logits(rm, layer, f, k=5)
            torch.testing.assert_close(
                dash.top_logit_values[f], scores.scores.topk(5).values, atol=1e-5, rtol=1e-4
            )


# ---------------------------------------------------------------------------- loading and errors


def test_load_accepts_a_saved_clt_folder(adapter, tiny_model_dir, tmp_path):
    clt = make_clt(adapter)
    folder = save_dictionary(clt, tmp_path / "clts" / "clt")
    ids = torch.randint(1, adapter.vocab_size, (2, 9), generator=torch.Generator().manual_seed(5))
    expected = ReplacementModel(adapter, clt).run(ids).logits
    for where in (folder, folder.parent):
        rm = ReplacementModel.load(str(tiny_model_dir("gpt2")), str(where), device="cpu")
        assert isinstance(rm.transcoders, CrossLayerTranscoder) and rm.feature_layers == [0, 1, 2]
        torch.testing.assert_close(rm.run(ids).logits, expected)


def test_a_mapping_over_the_clt_layers_is_accepted(adapter):
    clt = make_clt(adapter)
    rm = ReplacementModel(adapter, {layer: clt for layer in range(adapter.n_layers)})
    assert rm.transcoders is clt and [target for target, _ in rm.decoders(1)] == [1, 2]


def _one_line_error(adapter, transcoders) -> str:
    with pytest.raises(SparseCircuitsError) as info:
        ReplacementModel(adapter, transcoders)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mismatched_clts_and_saes_give_one_clear_error(adapter):
    wrong_hook = make_clt(adapter, hook_out="blocks.{layer}.hook_resid_post")
    assert "hook_mlp_out" in _one_line_error(adapter, wrong_hook)
    too_deep = make_clt(adapter, n_layers=adapter.n_layers + 1)
    assert "0..2" in _one_line_error(adapter, too_deep)
    same_hook = make_clt(adapter, n_layers=2, hook_in="blocks.0.hook_mlp_in")
    assert "increasing" in _one_line_error(adapter, same_hook)
    clt = make_clt(adapter)
    assert "covers layers" in _one_line_error(adapter, {0: clt})
    sae = make(
        DictionaryConfig(
            architecture="relu",
            kind="sae",
            d_in=adapter.d_model,
            d_sae=8,
            hook_in="blocks.0.hook_mlp_out",
        )
    )
    assert "SAE" in _one_line_error(adapter, sae)
    assert "SAE" in _one_line_error(adapter, {0: sae})
