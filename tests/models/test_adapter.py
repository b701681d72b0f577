"""ModelAdapter metadata, tokenization, weights and the errors a user can cause."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.errors import SparseCircuitsError


def test_sizes_come_from_the_config(tiny_adapter):
    grouped = tiny_adapter.family not in ("gpt2", "gpt_neox")
    assert (
        tiny_adapter.n_layers,
        tiny_adapter.d_model,
        tiny_adapter.n_heads,
        tiny_adapter.d_head,
    ) == (3, 32, 4, 8)
    assert tiny_adapter.n_kv_heads == (2 if grouped else 4)
    assert (tiny_adapter.d_mlp, tiny_adapter.vocab_size, tiny_adapter.max_context) == (64, 512, 128)
    assert tiny_adapter.parallel_residual == (tiny_adapter.family == "gpt_neox")
    assert tiny_adapter.norm_kind == (
        "layernorm" if tiny_adapter.family in ("gpt2", "gpt_neox") else "rmsnorm"
    )
    assert tiny_adapter.positional == ("learned" if tiny_adapter.family == "gpt2" else "rotary")
    assert tiny_adapter.device == torch.device("cpu") and tiny_adapter.dtype == torch.float32
    assert not tiny_adapter.model.training
    assert not any(p.requires_grad for p in tiny_adapter.model.parameters())


def test_weight_shapes_and_gqa_expansion(tiny_adapter):
    h, d, dh, vocab = (
        tiny_adapter.n_heads,
        tiny_adapter.d_model,
        tiny_adapter.d_head,
        tiny_adapter.vocab_size,
    )
    w = tiny_adapter.attention_weights(1)
    assert w.W_Q.shape == w.W_K.shape == w.W_V.shape == (h, d, dh)
    assert w.b_Q.shape == w.b_K.shape == w.b_V.shape == (h, dh)
    assert w.W_O.shape == (h, dh, d) and w.b_O.shape == (d,)
    assert tiny_adapter.W_E.shape == (vocab, d) and tiny_adapter.W_U.shape == (d, vocab)
    assert tiny_adapter.b_U.shape == (vocab,)
    n_rep = h // tiny_adapter.n_kv_heads
    for head in range(h):
        # query head `head` reads kv head head // n_rep: heads sharing a kv head have equal W_K
        assert torch.equal(w.W_K[head], w.W_K[(head // n_rep) * n_rep])
    assert not torch.equal(w.W_K[0], w.W_K[h - 1])
    assert torch.equal(tiny_adapter.W_Q(1), w.W_Q) and torch.equal(tiny_adapter.b_O(1), w.b_O)


def test_norm_params(tiny_adapter):
    for which, layer in (("ln1", 0), ("ln2", 2), ("ln_final", None)):
        params = tiny_adapter.norm(which, layer)
        assert params.kind == tiny_adapter.norm_kind and params.weight.shape == (
            tiny_adapter.d_model,
        )
        assert (params.bias is None) == (params.kind == "rmsnorm")
        assert 0 < params.eps < 1e-3
    with pytest.raises(SparseCircuitsError, match="not a norm"):
        tiny_adapter.norm("ln2")


def test_tokenize_prepends_bos_and_right_pads(tiny_adapter):
    ids = tiny_adapter.tokenize(["the cat sat on the mat", "a dog"])
    bare = tiny_adapter.tokenize(["the cat sat on the mat", "a dog"], prepend_bos=False)
    assert ids.dtype == torch.long and ids.shape[0] == 2
    assert (ids[:, 0] == tiny_adapter.bos_token_id).all()
    assert torch.equal(ids[0, 1:], bare[0])
    assert tiny_adapter.tokenizer.decode(bare[0].tolist()) == "the cat sat on the mat"
    short = tiny_adapter.tokenize("a dog")
    assert short.shape == (1, short.shape[1]) and torch.equal(ids[1, : short.shape[1]], short[0])
    # causal attention: right padding leaves the real positions' logits unchanged
    torch.testing.assert_close(
        tiny_adapter.forward(ids)[1, : short.shape[1]],
        tiny_adapter.forward(short)[0],
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "name",
    [
        "blocks.0.hook_nonsense",
        "blocks.3.hook_resid_pre",
        "hook_resid_pre",
        "blocks.x.hook_mlp_in",
        "blocks.-1.hook_mlp_in",
    ],
)
def test_unknown_hook_names_raise_with_the_valid_names(tiny_adapter, name):
    ids = tiny_adapter.tokenize("hello")
    for call in (
        lambda: tiny_adapter.run_with_cache(ids, [name]),
        lambda: tiny_adapter.hook_dim(name),
        lambda: tiny_adapter.hook_layer(name),
        lambda: tiny_adapter.hooks({name: lambda a: None}).__enter__(),
        lambda: tiny_adapter.splice(name, name, lambda a: a).__enter__(),
    ):
        with pytest.raises(SparseCircuitsError, match=r"blocks\.\{0\.\.2\}\.hook_resid_pre"):
            call()


def test_bad_inputs_raise(tiny_adapter):
    too_long = torch.zeros(1, tiny_adapter.max_context + 1, dtype=torch.long)
    with pytest.raises(SparseCircuitsError, match="max_context"):
        tiny_adapter.forward(too_long)
    with pytest.raises(SparseCircuitsError, match="max_context"):
        tiny_adapter.run_with_cache(too_long, ["blocks.0.hook_resid_pre"])
    with pytest.raises(SparseCircuitsError, match="max_context"):
        tiny_adapter.tokenize("word " * (tiny_adapter.max_context + 5))
    with pytest.raises(SparseCircuitsError, match=r"\[batch, pos\]"):
        tiny_adapter.forward(torch.zeros(5, dtype=torch.long))
    with pytest.raises(SparseCircuitsError, match="integer"):
        tiny_adapter.forward(torch.zeros(1, 5))
    with pytest.raises(SparseCircuitsError, match="token ids"):
        tiny_adapter.forward(torch.full((1, 3), tiny_adapter.vocab_size))
    with pytest.raises(SparseCircuitsError, match="no texts"):
        tiny_adapter.tokenize([])
    full = torch.zeros(1, tiny_adapter.max_context, dtype=torch.long)
    assert tiny_adapter.forward(full).shape == (
        1,
        tiny_adapter.max_context,
        tiny_adapter.vocab_size,
    )


def test_splice_rejects_reversed_hooks_and_patterns(tiny_adapter):
    with pytest.raises(SparseCircuitsError, match="after it writes"):
        tiny_adapter.splice(
            "blocks.1.hook_mlp_out", "blocks.1.hook_mlp_in", lambda a: a
        ).__enter__()
    with pytest.raises(SparseCircuitsError, match="hooks\\(\\)"):
        tiny_adapter.splice(
            "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_pattern", lambda a: a
        ).__enter__()


def test_out_of_range_layer_for_weights(tiny_adapter):
    with pytest.raises(SparseCircuitsError, match="out of range"):
        tiny_adapter.W_Q(tiny_adapter.n_layers)


def test_gradients_flow_through_a_spliced_function(tiny_adapter):
    ids = tiny_adapter.tokenize("the cat sat")
    scale = torch.ones((), requires_grad=True)
    with tiny_adapter.splice(
        "blocks.1.hook_mlp_out", "blocks.1.hook_mlp_out", lambda act: act * scale
    ):
        tiny_adapter.forward(ids).sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bfloat16_model_runs_every_hook(tiny_model_dir, family):
    from sparsecircuits.models import load_model

    adapter = load_model(tiny_model_dir(family), device="cpu", dtype=torch.bfloat16)
    ids = adapter.tokenize("the cat sat on the mat")
    # identity hooks stay exact in bf16 (a pattern hook leaves SDPA, so it is left out)
    names = [name for name in adapter.hook_names() if "pattern" not in name]
    with adapter.hooks({name: lambda act: act for name in names}):
        base = adapter.forward(ids)
    assert torch.equal(base, adapter.forward(ids))
    logits, cache = adapter.run_with_cache(ids, adapter.hook_names(), stop_after_last=False)
    assert adapter.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert all(act.dtype == torch.bfloat16 for act in cache.values())
    assert all(torch.isfinite(act.float()).all() for act in cache.values())


def test_splice_output_of_the_wrong_width_is_a_clear_error(tiny_adapter):
    ids = tiny_adapter.tokenize("the cat sat")
    for name in ("blocks.0.hook_mlp_out", "blocks.0.attn.hook_z"):
        with (
            pytest.raises(SparseCircuitsError, match="same shape"),
            tiny_adapter.splice(name, name, lambda act: act[..., :-1]),
        ):
            tiny_adapter.forward(ids)


def test_llama3_rope_is_scaled_past_the_original_context(tiny_model_dir):
    """The tiny Llama-3 (original context 8) rotates with the scaled frequencies, so the tests
    comparing it with Hugging Face exercise the scaling."""
    from sparsecircuits.models import load_model

    adapter = load_model(tiny_model_dir("llama3"), device="cpu")
    positions = torch.arange(20)
    rotary = adapter.rotary_cos_sin(positions)
    assert rotary is not None
    d_head, theta = adapter.d_head, 500000.0
    unscaled = positions[:, None] / theta ** (torch.arange(0, d_head, 2) / d_head)
    unscaled_cos = torch.cat([unscaled, unscaled], -1).cos()
    assert torch.equal(rotary[0][0], unscaled_cos[0])
    assert (rotary[0][9:] - unscaled_cos[9:]).abs().max() > 0.1


def test_gemma_accessors(tiny_model_dir):
    """Gemma's norms multiply by 1 + weight, tokens are scaled by sqrt(d_model), Gemma-3 rotates
    local and global layers differently, Gemma-2 soft-caps."""
    from sparsecircuits.models import load_model

    gemma2 = load_model(tiny_model_dir("gemma2"), device="cpu")
    gemma3 = load_model(tiny_model_dir("gemma3_text"), device="cpu")
    for adapter in (gemma2, gemma3):
        block = adapter.blocks[1]
        for params, module in (
            (adapter.norm("ln1", 1), block.input_layernorm),
            (adapter.norm("ln2", 1), block.pre_feedforward_layernorm),
            (adapter.post_norm("attn", 1), block.post_attention_layernorm),
            (adapter.post_norm("mlp", 1), block.post_feedforward_layernorm),
        ):
            assert params is not None and torch.equal(params.gain, 1 + module.weight)
        raw = adapter.model.get_submodule(adapter.spec.embed).weight
        assert torch.equal(adapter.W_E, raw * adapter.d_model**0.5)
    assert (gemma2.attn_softcap(0), gemma2.logit_softcap) == (5.0, 3.0)
    assert (gemma3.attn_softcap(0), gemma3.logit_softcap) == (None, None)
    assert [gemma2.sliding_window(layer) for layer in range(3)] == [4, None, 4]
    assert [gemma3.sliding_window(layer) for layer in range(3)] == [4, 4, None]
    positions = torch.arange(12)
    local, global_ = gemma3.rotary_cos_sin(positions, 0), gemma3.rotary_cos_sin(positions, 2)
    assert local is not None and global_ is not None
    assert (local[0] - global_[0]).abs().max() > 0.1
    assert gemma3.qk_norms(0) is not None and gemma2.qk_norms(0) is None
    assert load_model(tiny_model_dir("llama"), device="cpu").post_norm("mlp", 0) is None
    with pytest.raises(SparseCircuitsError, match="not a norm"):
        gemma2.post_norm("ln2", 0)
