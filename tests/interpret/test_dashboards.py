"""Dashboards: the streaming one-pass statistics equal a brute-force computation over all tokens."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.interpret import (
    DashboardConfig,
    compute_dashboards,
    load_dashboards,
    save_dashboards,
)
from sparsecircuits.models.architectures import apply_gain, normalize

CFG = DashboardConfig(
    n_top=5,
    n_samples=6,
    n_quantiles=3,
    context_left=3,
    context_right=2,
    n_logits=4,
    n_deembed=3,
    hist_bins=12,
)


@pytest.fixture(scope="module", params=["gpt2", "gemma2"])
def adapter(tiny_model_dir, request):
    from sparsecircuits.models import load_model

    return load_model(tiny_model_dir(request.param), device="cpu")


def _dictionary(adapter, architecture: str, layer: int, seed: int):
    cfg = DictionaryConfig(
        architecture=architecture,
        kind="transcoder",
        d_in=adapter.d_model,
        d_sae=40,
        k=6,
        hook_in=f"blocks.{layer}.mlp.hook_in",
        hook_out=f"blocks.{layer}.mlp.hook_out",
        seed=seed,
    )
    dictionary = make(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dictionary.b_enc.copy_(torch.randn(40, generator=gen) * 0.3 - 0.2)
        dictionary.b_in.copy_(torch.randn(adapter.d_model, generator=gen) * 0.1)
        dictionary.W_enc.mul_(3.0)
    return dictionary


@pytest.fixture(scope="module")
def data(adapter):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, adapter.vocab_size, (6, 20), generator=gen)
    ids[:, 0] = adapter.bos_token_id
    return ids


@pytest.fixture(scope="module")
def dictionaries(adapter):
    return {
        "relu-L1": _dictionary(adapter, "relu", 1, 1),
        "topk-L0": _dictionary(adapter, "topk", 0, 2),
    }


@pytest.fixture(scope="module")
def dashboards(adapter, dictionaries, data):
    batches = [data[i : i + 4] for i in range(0, len(data), 4)]  # uneven batches on purpose
    return compute_dashboards(adapter, dictionaries, batches, CFG)


def _all_acts(adapter, dictionary, data):
    with torch.no_grad():
        _, cache = adapter.run_with_cache(data, [dictionary.cfg.hook_in])
        acts = dictionary.encode(cache[dictionary.cfg.hook_in])
    acts[:, 0] = 0  # skip_first_position
    return acts  # [n, p, d_sae]


@pytest.mark.parametrize("name", ["relu-L1", "topk-L0"])
def test_streaming_top_examples_equal_brute_force(adapter, dictionaries, data, dashboards, name):
    dash = dashboards[name]
    acts = _all_acts(adapter, dictionaries[name], data)
    n, p, d_sae = acts.shape
    flat = acts.permute(2, 0, 1).reshape(d_sae, -1)
    expected = flat.topk(CFG.n_top, dim=1).values
    torch.testing.assert_close(dash.top_acts, expected)
    assert (dash.fire_counts == (flat != 0).sum(1)).all()
    assert dash.n_tokens == n * (p - 1)
    torch.testing.assert_close(dash.max_acts, flat.max(1).values)
    assert (dash.hist_counts.sum(1) == dash.fire_counts).all()
    assert (dash.fire_counts > 0).sum() > 5, "test dictionary should have live latents"
    # windows: every kept example's centre token and window activations are where they claim
    for f in range(d_sae):
        for slot in range(CFG.n_top):
            value = float(dash.top_acts[f, slot])
            if value == 0:
                continue
            matches = (acts[..., f] == value).nonzero()
            found = False
            for seq, pos in matches.tolist():
                lo = pos - CFG.context_left
                ids = [
                    int(data[seq, q]) if 0 <= q < p else -1
                    for q in range(lo, pos + CFG.context_right + 1)
                ]
                wacts = [
                    float(acts[seq, q, f]) if 0 <= q < p else 0.0
                    for q in range(lo, pos + CFG.context_right + 1)
                ]
                if ids == dash.top_token_ids[f, slot].tolist():
                    torch.testing.assert_close(dash.top_window_acts[f, slot], torch.tensor(wacts))
                    found = True
            assert found, (f, slot)


def test_random_sample_holds_real_activating_tokens(adapter, dictionaries, data, dashboards):
    dash = dashboards["relu-L1"]
    acts = _all_acts(adapter, dictionaries["relu-L1"], data)
    for f in range(dash.d_sae):
        filled = dash.sample_acts[f] != 0
        assert int(filled.sum()) == min(int(dash.fire_counts[f]), CFG.n_samples)
        centre = dash.sample_window_acts[f, filled, CFG.context_left]
        torch.testing.assert_close(centre, dash.sample_acts[f, filled])
        present = set(acts[..., f][acts[..., f] != 0].tolist())
        assert set(dash.sample_acts[f, filled].tolist()) <= present


def test_logit_and_deembedding_tables(adapter, dictionaries, dashboards):
    dictionary = dictionaries["relu-L1"]
    dash = dashboards["relu-L1"]
    final = adapter.norm("ln_final")
    rows = dictionary.W_dec.detach()
    if final.kind == "layernorm":
        rows = rows - rows.mean(-1, keepdim=True)
    gain = final.weight + 1 if adapter.family.startswith("gemma") else final.weight
    rows = rows * gain  # Gemma's norms multiply by 1 + weight
    scores = rows @ adapter.W_U
    torch.testing.assert_close(dash.top_logit_values, scores.topk(CFG.n_logits, dim=1).values)
    torch.testing.assert_close(
        dash.bottom_logit_values, (-scores).topk(CFG.n_logits, dim=1).values.neg()
    )
    params = adapter.norm("ln2", 1)
    embed = apply_gain(normalize(adapter.W_E, params), params) - dictionary.b_in.detach()
    de = (embed @ dictionary.W_enc.detach()).T
    torch.testing.assert_close(dash.deembed_values, de.topk(CFG.n_deembed, dim=1).values)
    assert dash.deembed_ids[0, 0] == int(de[0].argmax())


def test_save_load_feature_json_and_table(tmp_path, dashboards):
    folder = save_dashboards(dashboards, tmp_path / "dash")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["index.json", "relu-L1.safetensors", "topk-L0.safetensors"]
    store = load_dashboards(folder)
    assert store.names == ["relu-L1", "topk-L0"]
    assert store.name_for_layer(0) == "topk-L0" and store.name_for_layer(3) is None
    dash = dashboards["relu-L1"]
    f = int(dash.fire_counts.argmax())
    feature = store.feature("relu-L1", f)
    top = feature["examples_quantiles"][0]
    assert top["quantile_name"] == "Top activations"
    first = top["examples"][0]
    assert first["activation"] == pytest.approx(float(dash.top_acts[f, 0]))
    assert first["tokens_acts_list"][first["train_token_ind"]] == pytest.approx(first["activation"])
    assert len(first["tokens"]) == len(first["tokens_acts_list"]) == len(first["token_ids"])
    assert (
        first["tokens"][first["train_token_ind"]]
        == store.tokens[first["token_ids"][first["train_token_ind"]]]
    )
    assert feature["activation_frequency"] == pytest.approx(float(dash.density[f]))
    assert sum(feature["histogram"]["counts"]) == int(dash.fire_counts[f])
    assert (
        len(feature["top_logits"]) == CFG.n_logits and len(feature["deembeddings"]) == CFG.n_deembed
    )
    n_sampled = sum(len(g["examples"]) for g in feature["examples_quantiles"][1:])
    assert n_sampled == min(int(dash.fire_counts[f]), CFG.n_samples)
    acts = [e["activation"] for g in feature["examples_quantiles"][1:] for e in g["examples"]]
    assert acts == sorted(acts, reverse=True)

    page = store.table("relu-L1", sort="density", limit=5)
    assert page["total"] == dash.d_sae and len(page["rows"]) == 5
    densities = [r["density"] for r in page["rows"]]
    assert densities == sorted(densities, reverse=True)
    token = feature["top_logits"][0]
    hits = store.table("relu-L1", query=token, limit=500)
    assert f in [r["index"] for r in hits["rows"]]
    with pytest.raises(SparseCircuitsError, match="out of range"):
        store.feature("relu-L1", 999)
    with pytest.raises(SparseCircuitsError, match="no dashboards"):
        store.feature("nope", 0)


def test_wrong_width_dictionary_is_rejected(adapter, data):
    cfg = DictionaryConfig(
        architecture="relu",
        kind="transcoder",
        d_in=adapter.d_model + 1,
        d_sae=8,
        hook_in="blocks.0.hook_mlp_in",
        hook_out="blocks.0.hook_mlp_out",
    )
    with pytest.raises(SparseCircuitsError, match="d_in"):
        compute_dashboards(adapter, {"bad": make(cfg)}, [data], CFG)
