"""ReplacementModel: exact logits, caches equal the model's hooks, frozen re-runs, edit scoping."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.replacement import (
    Edits,
    EmbedEdit,
    ErrorEdit,
    FeatureEdit,
    HeadEdit,
    ReplacementModel,
)
from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.errors import SparseCircuitsError


def test_logits_equal_the_hf_model(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    hf = rm.adapter.forward(ids)
    assert torch.allclose(state.logits, hf, atol=5e-5), (state.logits - hf).abs().max()


def test_logits_equal_an_independent_eager_hf_model(tiny_models, variant):
    """Against HF's own eager attention (not our attention function): the logits, and for
    Gemma-2 also the logits before the final soft-cap (the HF model with the cap removed)."""
    import transformers

    rm, ids = tiny_models[variant]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        rm.adapter.name, attn_implementation="eager", dtype=torch.float32
    )
    state = rm.run(ids)
    with torch.no_grad():
        expected = hf(ids, use_cache=False).logits
        torch.testing.assert_close(state.logits, expected, atol=5e-5, rtol=0)
        cap = getattr(hf.config, "final_logit_softcapping", None)
        assert (cap is not None) == variant.startswith("gemma2")
        hf.config.final_logit_softcapping = None
        uncapped = hf(ids, use_cache=False).logits
    torch.testing.assert_close(state.final_normed @ rm.W_U + rm.b_U, uncapped, atol=5e-5, rtol=0)
    if cap is not None:  # the cap bites on these tiny models
        assert (uncapped - expected).abs().max() > 0.1


def test_caches_equal_the_adapter_hooks(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    names = []
    for layer in range(rm.n_layers):
        names += [
            f"blocks.{layer}.hook_resid_pre",
            f"blocks.{layer}.mlp.hook_in",
            f"blocks.{layer}.hook_mlp_out",
            f"blocks.{layer}.mlp.hook_out",
            f"blocks.{layer}.attn.hook_pattern",
        ]
    names += [rm.transcoders.hook_in(layer) for layer in rm.feature_layers]
    _, cache = rm.adapter.run_with_cache(ids, names, stop_after_last=False)
    for layer in range(rm.n_layers):
        torch.testing.assert_close(
            state.resid_pre[layer], cache[f"blocks.{layer}.hook_resid_pre"], atol=2e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            state.mlp_in[layer], cache[f"blocks.{layer}.mlp.hook_in"], atol=2e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            state.mlp_out[layer], cache[f"blocks.{layer}.hook_mlp_out"], atol=2e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            state.patterns[layer], cache[f"blocks.{layer}.attn.hook_pattern"], atol=2e-6, rtol=1e-4
        )
        if layer in rm.feature_layers:
            # the transcoder reads what the adapter's hook of that name carries
            torch.testing.assert_close(
                state.tc_in[layer], cache[rm.transcoders.hook_in(layer)], atol=2e-5, rtol=1e-4
            )
            # the error term is exactly what the transcoder misses
            tc = rm.transcoders[layer]
            recon = tc.reconstruct(state.tc_in[layer])
            torch.testing.assert_close(
                state.errors[layer],
                cache[rm.transcoders.hook_out(layer)] - recon,
                atol=2e-5,
                rtol=1e-4,
            )


def test_rerun_without_edits_reproduces_the_clean_run(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    for freeze, features in ((True, "frozen"), (True, "linear"), (True, "live"), (False, "live")):
        logits = rm.forward_with(state, None, freeze=freeze, features=features)
        assert torch.allclose(logits, state.logits, atol=5e-5), (freeze, features)


def test_dropping_errors_changes_the_output(tiny_models):
    rm, ids = tiny_models["gpt2"]
    state = rm.run(ids)
    logits = rm.forward_with(state, Edits(drop_errors=set(rm.feature_layers)), freeze=False)
    assert (logits - state.logits).abs().max() > 1e-2


def test_edits_only_touch_their_prompt_and_later_positions(tiny_models):
    rm, ids = tiny_models["llama"]
    state = rm.run(ids)
    layer = min(rm.feature_layers)
    active = int(state.feature_acts[layer][1, 4].nonzero()[0])
    for edits in (
        Edits(features=[FeatureEdit(layer, 4, active, batch=1, value=3.0)]),
        Edits(heads=[HeadEdit(0, 1, dest=4, src=2, batch=1)]),
        Edits(errors=[ErrorEdit(layer, pos=4, batch=1)]),
        Edits(embeds=[EmbedEdit(pos=4, batch=1)]),
    ):
        for freeze in (True, False):
            logits = rm.forward_with(state, edits, freeze=freeze)
            assert torch.equal(logits[0], state.logits[0]) and torch.equal(
                logits[2], state.logits[2]
            )
            assert torch.allclose(logits[1, :4], state.logits[1, :4], atol=1e-6)
            assert (logits[1, 4:] - state.logits[1, 4:]).abs().max() > 1e-6


def test_right_padding_leaves_real_positions_unchanged(tiny_models):
    rm, ids = tiny_models["qwen3"]
    short = ids[:1, :6]
    padded = torch.cat([short, torch.zeros(1, 5, dtype=ids.dtype)], dim=1)
    a = rm.run(short).logits
    b = rm.run(torch.cat([padded, ids[1:2]])).logits
    assert torch.allclose(a[0], b[0, :6], atol=1e-5)


def test_rejects_a_transcoder_for_the_wrong_hook(tiny_models):
    rm, _ = tiny_models["gpt2"]
    cfg = DictionaryConfig(
        architecture="relu",
        kind="transcoder",
        d_in=rm.d_model,
        d_sae=8,
        hook_in="blocks.0.hook_resid_pre",
        hook_out="blocks.0.hook_mlp_out",
    )
    with pytest.raises(SparseCircuitsError, match="hook_mlp_out"):
        ReplacementModel(rm.adapter, {0: make(cfg)})
    cfg = DictionaryConfig(
        architecture="relu",
        kind="transcoder",
        d_in=rm.d_model,
        d_sae=8,
        hook_in="blocks.1.hook_mlp_in",
        hook_out="blocks.1.hook_mlp_out",
    )
    with pytest.raises(SparseCircuitsError, match="layer 0"):
        ReplacementModel(rm.adapter, {0: make(cfg)})


def test_cross_layer_transcoders_before_a_post_mlp_norm_are_refused(tiny_models):
    rm, _ = tiny_models["gemma2"]
    cfg = DictionaryConfig(
        architecture="relu",
        kind="clt",
        d_in=rm.d_model,
        d_sae=8,
        n_layers=rm.n_layers,
        hook_in="blocks.{layer}.hook_mlp_in",
        hook_out="blocks.{layer}.mlp.hook_out",
    )
    with pytest.raises(SparseCircuitsError, match="cross-layer transcoders here must write"):
        ReplacementModel(rm.adapter, make(cfg))


def test_select_repeats_prompts(tiny_models):
    rm, ids = tiny_models["gpt2"]
    state = rm.run(ids)
    sub = state.select([2, 2, 0])
    assert torch.equal(sub.input_ids, ids[[2, 2, 0]])
    assert torch.equal(sub.feature_acts[0], state.feature_acts[0][[2, 2, 0]])
    assert torch.equal(sub.patterns[1], state.patterns[1][[2, 2, 0]])
