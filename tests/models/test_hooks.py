"""Every canonical hook, on a tiny model of every family: values, read/replace, splice, early stop."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import load_model
from sparsecircuits.models.architectures import apply_gain

TEXTS = [
    "The cat saw the mountain in the year 1732, and the dog ran to the river quickly.",
    "def add(a, b): return a + b",
]


def token_ids(adapter) -> torch.Tensor:
    return adapter.tokenize(TEXTS)


def hook_counts(adapter) -> list[int]:
    """Torch hooks and pattern hooks per module (HF keeps hooks of its own on some modules)."""
    return [
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m.__dict__.get("_sparsecircuits_pattern_fns", []))
        for m in adapter.model.modules()
    ]


def every_hook_cache(adapter, ids):
    return adapter.run_with_cache(ids, adapter.hook_names(), stop_after_last=False)


def norm_output(adapter, normalized, norm, layer=None):
    """The norm's output from its `hook_normalized` (TransformerLens: LayerNorm's already has its
    gain and bias, RMSNorm's is before its gain)."""
    if adapter.norm_kind == "layernorm":
        return normalized
    return apply_gain(normalized, adapter.norm(norm, layer))


def post_norm_module(adapter, which: str, layer: int):
    """The HF module between attention ("attn") / the MLP ("mlp") and the residual (Gemma's
    post-norms), or the identity."""
    path = adapter.spec.attn_post_norm if which == "attn" else adapter.spec.mlp_post_norm
    return (lambda x: x) if path is None else adapter.blocks[layer].get_submodule(path)


def allowed_positions(adapter, layer: int, n_pos: int) -> torch.Tensor:
    """`[q, k]` bool: where attention of `layer` may look (causal, within its sliding window)."""
    window = adapter.sliding_window(layer) or n_pos
    q, k = torch.arange(n_pos)[:, None], torch.arange(n_pos)[None, :]
    return (k <= q) & (k > q - window)


def test_resid_hooks_equal_hf_hidden_states(tiny_adapter):
    ids = token_ids(tiny_adapter)
    hidden = tiny_adapter.model(ids, output_hidden_states=True, use_cache=False).hidden_states
    names = [
        f"blocks.{L}.hook_resid_{w}" for L in range(tiny_adapter.n_layers) for w in ("pre", "post")
    ]
    _, cache = tiny_adapter.run_with_cache(
        ids, [*names, "ln_final.hook_normalized"], stop_after_last=False
    )
    for layer in range(tiny_adapter.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer])
    for layer in range(tiny_adapter.n_layers - 1):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1])
    # HF's last hidden state is after the final norm.
    final = norm_output(tiny_adapter, cache["ln_final.hook_normalized"], "ln_final")
    torch.testing.assert_close(final, hidden[-1], rtol=0, atol=1e-5)


def test_residual_stream_decomposes(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    for layer in range(tiny_adapter.n_layers):
        get = lambda kind, L=layer: cache[f"blocks.{L}.{kind}"]  # noqa: E731
        assert torch.equal(get("hook_resid_mid"), get("hook_resid_pre") + get("hook_attn_out"))
        torch.testing.assert_close(
            get("hook_resid_post"),
            get("hook_resid_pre") + get("hook_attn_out") + get("hook_mlp_out"),
            rtol=0,
            atol=1e-5,
        )
        if layer + 1 < tiny_adapter.n_layers:
            assert torch.equal(get("hook_resid_post"), cache[f"blocks.{layer + 1}.hook_resid_pre"])


def test_mlp_hooks_are_what_the_mlp_reads_and_writes(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    for layer, block in enumerate(tiny_adapter.blocks):
        ln2 = block.get_submodule(tiny_adapter.spec.ln2)
        mlp = block.get_submodule(tiny_adapter.spec.mlp)
        get = lambda kind, L=layer: cache[f"blocks.{L}.{kind}"]  # noqa: E731
        # hook_mlp_in is the residual ln2 reads: NeoX's parallel MLP reads the block input, every
        # other family the stream after attention (TransformerLens's hook_mlp_in)
        stream = "hook_resid_pre" if tiny_adapter.parallel_residual else "hook_resid_mid"
        assert torch.equal(get("hook_mlp_in"), get(stream))
        mlp_in = get("mlp.hook_in")
        assert torch.equal(mlp_in, ln2(get("hook_mlp_in")))
        mlp_own = get("mlp.hook_out")
        assert torch.equal(mlp_own, mlp(mlp_in))
        # what joins the residual: Gemma's post-MLP norm of the MLP's output, else that output
        post = post_norm_module(tiny_adapter, "mlp", layer)
        assert torch.equal(get("hook_mlp_out"), post(mlp_own))
        if tiny_adapter.spec.mlp_post_norm is not None:
            assert not torch.allclose(mlp_own, get("hook_mlp_out"))
        gained = norm_output(tiny_adapter, get("ln2.hook_normalized"), "ln2", layer)
        torch.testing.assert_close(gained, mlp_in, rtol=0, atol=1e-5)


def test_mlp_out_proj_reads_the_neurons_and_writes_mlp_out(tiny_adapter):
    ids = token_ids(tiny_adapter)
    names = [f"blocks.{layer}.mlp.hook_out" for layer in range(tiny_adapter.n_layers)]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(layer):
        def hook(_module, args, output):
            seen[layer] = (args[0], output)

        return hook

    handles = [
        block.get_submodule(tiny_adapter.spec.mlp_out_proj).register_forward_hook(record(layer))
        for layer, block in enumerate(tiny_adapter.blocks)
    ]
    try:
        _, cache = tiny_adapter.run_with_cache(ids, names)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == list(range(tiny_adapter.n_layers))
    for layer, (neurons, out) in seen.items():
        assert neurons.shape[-1] == tiny_adapter.d_mlp
        assert torch.equal(out, cache[f"blocks.{layer}.mlp.hook_out"])


def test_normalized_hooks_are_normalized(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    names = [n for n in tiny_adapter.hook_names() if n.endswith("hook_normalized")]
    assert len(names) == 2 * tiny_adapter.n_layers + 1
    for name in names:
        normalized = cache[name]
        if tiny_adapter.norm_kind == "layernorm":  # with its gain and bias: undo them
            point = tiny_adapter.hook_point(name)
            norm = "ln_final" if point.layer is None else point.kind.split(".")[0]
            params = tiny_adapter.norm(norm, point.layer)
            normalized = (normalized - params.bias) / params.weight
            torch.testing.assert_close(
                normalized.mean(-1), torch.zeros(normalized.shape[:-1]), atol=1e-4, rtol=0
            )
        torch.testing.assert_close(
            normalized.pow(2).mean(-1), torch.ones(normalized.shape[:-1]), atol=1e-3, rtol=0
        )


def test_ln1_normalized_times_gain_is_the_attention_input(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    for layer, block in enumerate(tiny_adapter.blocks):
        ln1 = block.get_submodule(tiny_adapter.spec.ln1)
        gained = norm_output(
            tiny_adapter, cache[f"blocks.{layer}.ln1.hook_normalized"], "ln1", layer
        )
        torch.testing.assert_close(
            gained, ln1(cache[f"blocks.{layer}.hook_resid_pre"]), rtol=0, atol=1e-5
        )


def test_pattern_is_causal_probability(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    n_pos = ids.shape[1]
    for layer in range(tiny_adapter.n_layers):
        forbidden = ~allowed_positions(tiny_adapter, layer, n_pos)
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (len(TEXTS), tiny_adapter.n_heads, n_pos, n_pos)
        torch.testing.assert_close(
            pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0
        )
        assert pattern[..., forbidden].abs().max() == 0
        assert pattern[..., ~forbidden].min() > 0


def test_z_times_W_O_is_attn_out(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    for layer in range(tiny_adapter.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        assert z.shape == (*ids.shape, tiny_adapter.n_heads, tiny_adapter.d_head)
        rebuilt = torch.einsum("bphd,hdm->bpm", z, tiny_adapter.W_O(layer)) + tiny_adapter.b_O(
            layer
        )
        rebuilt = post_norm_module(tiny_adapter, "attn", layer)(rebuilt)
        torch.testing.assert_close(
            rebuilt, cache[f"blocks.{layer}.hook_attn_out"], rtol=0, atol=1e-5
        )


def test_W_V_and_pattern_rebuild_z(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    for layer in range(tiny_adapter.n_layers):
        attn_in = norm_output(
            tiny_adapter, cache[f"blocks.{layer}.ln1.hook_normalized"], "ln1", layer
        )
        weights = tiny_adapter.attention_weights(layer)
        v = torch.einsum("bpm,hmd->bphd", attn_in, weights.W_V) + weights.b_V
        z = torch.einsum("bhqk,bkhd->bqhd", cache[f"blocks.{layer}.attn.hook_pattern"], v)
        torch.testing.assert_close(z, cache[f"blocks.{layer}.attn.hook_z"], rtol=0, atol=1e-5)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] dims of x [b, p, h, d]; cos/sin [p, r]."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat([-rot[..., r // 2 :], rot[..., : r // 2]], dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([rot * cos + half * sin, rest], dim=-1)


def test_W_Q_W_K_rebuild_pattern(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    n_pos = ids.shape[1]
    for layer in range(tiny_adapter.n_layers):
        allowed = allowed_positions(tiny_adapter, layer, n_pos)
        rotary = tiny_adapter.rotary_cos_sin(torch.arange(n_pos), layer)
        assert (rotary is None) == (tiny_adapter.family == "gpt2")
        attn_in = norm_output(
            tiny_adapter, cache[f"blocks.{layer}.ln1.hook_normalized"], "ln1", layer
        )
        w = tiny_adapter.attention_weights(layer)
        q = torch.einsum("bpm,hmd->bphd", attn_in, w.W_Q) + w.b_Q
        k = torch.einsum("bpm,hmd->bphd", attn_in, w.W_K) + w.b_K
        norms = tiny_adapter.qk_norms(layer)
        assert (norms is not None) == (tiny_adapter.family in ("qwen3", "gemma3"))
        if norms is not None:
            from sparsecircuits.models.architectures import normalize

            q, k = (
                apply_gain(normalize(q, norms[0]), norms[0]),
                apply_gain(normalize(k, norms[1]), norms[1]),
            )
        if rotary is not None:
            q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * tiny_adapter.attn_scale(layer)
        cap = tiny_adapter.attn_softcap(layer)
        assert (cap is not None) == (tiny_adapter.family == "gemma2")
        if cap is not None:
            scores = cap * torch.tanh(scores / cap)
        pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        torch.testing.assert_close(
            pattern, cache[f"blocks.{layer}.attn.hook_pattern"], rtol=0, atol=1e-5
        )


def test_embedding_and_unembedding_weights(tiny_adapter):
    ids = token_ids(tiny_adapter)
    logits, cache = tiny_adapter.run_with_cache(
        ids,
        ["hook_embed", "blocks.0.hook_resid_pre", "ln_final.hook_normalized"],
        stop_after_last=False,
    )
    assert torch.equal(cache["hook_embed"], tiny_adapter.W_E[ids])
    if tiny_adapter.W_pos is not None:
        rebuilt = cache["hook_embed"] + tiny_adapter.W_pos[: ids.shape[1]]
        assert torch.equal(rebuilt, cache["blocks.0.hook_resid_pre"])
    else:
        assert torch.equal(cache["hook_embed"], cache["blocks.0.hook_resid_pre"])
    final = norm_output(tiny_adapter, cache["ln_final.hook_normalized"], "ln_final")
    rebuilt = final @ tiny_adapter.W_U + tiny_adapter.b_U
    cap = tiny_adapter.logit_softcap
    assert (cap is not None) == (tiny_adapter.family == "gemma2")
    if cap is not None:
        rebuilt = cap * torch.tanh(rebuilt / cap)
    torch.testing.assert_close(rebuilt, logits, rtol=0, atol=1e-4)


def test_identity_hooks_leave_logits_unchanged(tiny_adapter):
    ids = token_ids(tiny_adapter)
    base = tiny_adapter.forward(ids)
    for name in tiny_adapter.hook_names():
        with tiny_adapter.hooks({name: lambda act: act}):
            assert torch.equal(tiny_adapter.forward(ids), base) or "pattern" in name, name
        with tiny_adapter.hooks({name: lambda act: act.clone()}):
            torch.testing.assert_close(tiny_adapter.forward(ids), base, rtol=0, atol=1e-5, msg=name)
        if "pattern" not in name:
            with tiny_adapter.splice(name, name, lambda act: act * 1.0):
                torch.testing.assert_close(
                    tiny_adapter.forward(ids), base, rtol=0, atol=1e-5, msg=name
                )
    assert torch.equal(tiny_adapter.forward(ids), base)


def test_zeroing_any_hook_changes_logits(tiny_adapter):
    ids = token_ids(tiny_adapter)
    base = tiny_adapter.forward(ids)
    for name in tiny_adapter.hook_names():
        with tiny_adapter.hooks({name: torch.zeros_like}):
            changed = (tiny_adapter.forward(ids) - base).abs().max()
        assert changed > 1e-3, name


def test_splice_zero_and_transcoder_identity(tiny_adapter):
    ids = token_ids(tiny_adapter)
    base = tiny_adapter.forward(ids)
    layer = tiny_adapter.n_layers - 1
    with tiny_adapter.splice(
        f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_resid_post", torch.zeros_like
    ):
        assert (tiny_adapter.forward(ids) - base).abs().max() > 1e-3
    mlp = tiny_adapter.blocks[layer].get_submodule(tiny_adapter.spec.mlp)
    post = post_norm_module(tiny_adapter, "mlp", layer)
    with tiny_adapter.splice(
        f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out", lambda x: post(mlp(x))
    ):
        assert torch.equal(tiny_adapter.forward(ids), base)
    with tiny_adapter.splice(f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out", mlp):
        assert torch.equal(tiny_adapter.forward(ids), base)
    with tiny_adapter.splice(
        f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out", lambda x: 2 * mlp(x)
    ):
        assert (tiny_adapter.forward(ids) - base).abs().max() > 1e-3


def test_splice_flattens_z(tiny_adapter):
    ids = token_ids(tiny_adapter)
    name = "blocks.0.attn.hook_z"
    widths = []

    def record(z):
        widths.append(z.shape)
        return z

    with tiny_adapter.splice(name, name, record):
        tiny_adapter.forward(ids)
    assert widths == [(*ids.shape, tiny_adapter.hook_dim(name))]


def test_replacement_changes_only_downstream(tiny_adapter):
    ids = token_ids(tiny_adapter)
    names = [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_attn_out",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_pre",
    ]
    _, base = tiny_adapter.run_with_cache(ids, names)
    with tiny_adapter.hooks({"blocks.0.hook_mlp_out": torch.zeros_like}):
        _, edited = tiny_adapter.run_with_cache(ids, names)
    for name in names[:3]:
        assert torch.equal(edited[name], base[name]), name
    torch.testing.assert_close(
        edited["blocks.0.hook_resid_post"], base["blocks.0.hook_resid_mid"], rtol=0, atol=1e-5
    )
    assert not torch.allclose(edited["blocks.1.hook_resid_pre"], base["blocks.1.hook_resid_pre"])


def test_replaced_resid_mid_reaches_mlp_and_resid_post(tiny_adapter):
    ids = token_ids(tiny_adapter)
    names = [
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_in",
        "blocks.0.hook_mlp_out",
        "blocks.0.hook_resid_post",
    ]
    offset = torch.linspace(
        -1, 1, tiny_adapter.d_model
    )  # not a scaling/shift, which norms would undo
    with tiny_adapter.hooks({"blocks.0.hook_resid_mid": lambda act: act + offset}):
        _, cache = tiny_adapter.run_with_cache(ids, names)
    _, base = tiny_adapter.run_with_cache(ids, names)
    rebuilt = base["blocks.0.hook_resid_mid"] + offset + cache["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], rebuilt, rtol=0, atol=1e-5)
    mlp_input_moved = not torch.allclose(
        cache["blocks.0.hook_mlp_in"], base["blocks.0.hook_mlp_in"]
    )
    assert (
        mlp_input_moved != tiny_adapter.parallel_residual
    )  # the parallel MLP never reads resid_mid


def test_replacing_the_pattern_redirects_attention(tiny_adapter):
    ids = token_ids(tiny_adapter)

    def attend_to_first(pattern):
        one_hot = torch.zeros_like(pattern)
        one_hot[..., 0] = 1
        return one_hot

    with tiny_adapter.hooks({"blocks.1.attn.hook_pattern": attend_to_first}):
        _, cache = tiny_adapter.run_with_cache(ids, ["blocks.1.attn.hook_z"])
    z = cache["blocks.1.attn.hook_z"]
    torch.testing.assert_close(z, z[:, :1].expand_as(z), rtol=0, atol=1e-6)
    _, base = tiny_adapter.run_with_cache(ids, ["blocks.1.attn.hook_z"])
    assert not torch.allclose(base["blocks.1.attn.hook_z"], z)


def test_stop_after_last_skips_later_layers(tiny_adapter):
    ids = token_ids(tiny_adapter)
    names = [
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_z",
        "blocks.0.hook_mlp_in",
        "blocks.0.hook_mlp_out",
    ]
    calls = []
    handles = [
        tiny_adapter.blocks[1].register_forward_pre_hook(lambda *_: calls.append("block1")),
        tiny_adapter.model.get_submodule(tiny_adapter.spec.unembed).register_forward_hook(
            lambda *_: calls.append("unembed")
        ),
    ]
    try:
        full_logits, full = tiny_adapter.run_with_cache(ids, names, stop_after_last=False)
        assert calls == ["block1", "unembed"] and full_logits is not None
        calls.clear()
        logits, early = tiny_adapter.run_with_cache(ids, list(reversed(names)))
        assert calls == [] and logits is None
        assert list(early) == list(reversed(names))
        for name in names:
            assert torch.equal(early[name], full[name]), name
        _, final = tiny_adapter.run_with_cache(ids, ["ln_final.hook_normalized"])
        assert calls == ["block1"]  # every block ran, the unembedding did not
    finally:
        for handle in handles:
            handle.remove()


def test_run_with_cache_without_hooks_returns_logits(tiny_adapter):
    ids = token_ids(tiny_adapter)
    logits, cache = tiny_adapter.run_with_cache(ids, [])
    assert cache == {} and torch.equal(logits, tiny_adapter.forward(ids))


def test_hook_dims_and_layers_match_the_cache(tiny_adapter):
    ids = token_ids(tiny_adapter)
    _, cache = every_hook_cache(tiny_adapter, ids)
    assert list(cache) == tiny_adapter.hook_names()
    for name, act in cache.items():
        if name.endswith("hook_pattern"):
            with pytest.raises(SparseCircuitsError, match="no fixed width"):
                tiny_adapter.hook_dim(name)
            continue
        flat = act.flatten(-2) if name.endswith("hook_z") else act
        assert flat.shape == (*ids.shape, tiny_adapter.hook_dim(name)), name
    assert tiny_adapter.hook_layer("hook_embed") == 0
    assert tiny_adapter.hook_layer("blocks.2.hook_mlp_out") == 2
    assert tiny_adapter.hook_layer("ln_final.hook_normalized") == tiny_adapter.n_layers


def test_hooks_are_removed_even_when_the_body_raises(tiny_adapter):
    ids = token_ids(tiny_adapter)
    base = tiny_adapter.forward(ids)
    before = hook_counts(tiny_adapter)
    every = {name: torch.zeros_like for name in tiny_adapter.hook_names()}
    with pytest.raises(ValueError, match="boom"), tiny_adapter.hooks(every):
        raise ValueError("boom")
    with (
        pytest.raises(ValueError, match="boom"),
        tiny_adapter.splice("blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out", torch.zeros_like),
    ):
        raise ValueError("boom")
    assert hook_counts(tiny_adapter) == before
    assert torch.equal(tiny_adapter.forward(ids), base)


def test_hooks_are_removed_after_early_stop(tiny_adapter):
    ids = token_ids(tiny_adapter)
    before = hook_counts(tiny_adapter)
    tiny_adapter.run_with_cache(ids, ["blocks.0.hook_resid_mid", "blocks.0.attn.hook_pattern"])
    assert hook_counts(tiny_adapter) == before


def test_parallel_and_sequential_neox_define_mlp_in_differently(tiny_model_dir, tmp_path):
    from sparsecircuits.models.tiny import build_tiny_model

    sequential = load_model(
        build_tiny_model("gpt_neox", tmp_path, parallel_residual=False), device="cpu"
    )
    parallel = load_model(tiny_model_dir("gpt_neox"), device="cpu")
    assert parallel.parallel_residual and not sequential.parallel_residual
    for adapter, stream in ((sequential, "hook_resid_mid"), (parallel, "hook_resid_pre")):
        ids = token_ids(adapter)
        _, cache = every_hook_cache(adapter, ids)
        ln2 = adapter.blocks[1].get_submodule(adapter.spec.ln2)
        assert torch.equal(cache["blocks.1.hook_mlp_in"], cache[f"blocks.1.{stream}"])
        assert torch.equal(cache["blocks.1.mlp.hook_in"], ln2(cache[f"blocks.1.{stream}"]))
        torch.testing.assert_close(
            cache["blocks.1.hook_resid_post"],
            cache["blocks.1.hook_resid_mid"] + cache["blocks.1.hook_mlp_out"],
            rtol=0,
            atol=1e-5,
        )


def test_resid_mid_sees_resid_pre_replaced_by_a_later_hook(tiny_adapter):
    ids = token_ids(tiny_adapter)
    offset = torch.linspace(-1, 1, tiny_adapter.d_model)
    seen = {}
    with (
        tiny_adapter.hooks({"blocks.1.hook_resid_mid": lambda act: seen.setdefault("mid", act)}),
        tiny_adapter.hooks({"blocks.1.hook_resid_pre": lambda act: act + offset}),
    ):
        _, cache = tiny_adapter.run_with_cache(
            ids, ["blocks.1.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid"]
        )
    rebuilt = cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"]
    assert torch.equal(seen["mid"], rebuilt)
    assert torch.equal(cache["blocks.1.hook_resid_mid"], rebuilt)


def test_hooks_in_one_call_run_in_forward_order(tiny_adapter):
    ids = token_ids(tiny_adapter)
    seen = {}
    with tiny_adapter.hooks(
        {
            "blocks.0.hook_resid_mid": lambda act: seen.setdefault("mid", act),
            "blocks.0.hook_attn_out": torch.zeros_like,
        }
    ):
        _, cache = tiny_adapter.run_with_cache(
            ids, ["blocks.0.hook_resid_pre"], stop_after_last=False
        )
    assert torch.equal(seen["mid"], cache["blocks.0.hook_resid_pre"])


def test_replacement_shape_is_checked_and_dtype_cast(tiny_adapter):
    ids = token_ids(tiny_adapter)
    with (
        pytest.raises(SparseCircuitsError, match="same shape"),
        tiny_adapter.hooks({"blocks.0.hook_mlp_out": lambda act: act[:, :1]}),
    ):
        tiny_adapter.forward(ids)
    base = tiny_adapter.forward(ids)
    with tiny_adapter.hooks({"blocks.0.hook_mlp_out": lambda act: act.double()}):
        torch.testing.assert_close(tiny_adapter.forward(ids), base, rtol=0, atol=1e-5)


def test_run_with_cache_accepts_one_name(tiny_adapter):
    ids = token_ids(tiny_adapter)
    logits, cache = tiny_adapter.run_with_cache(ids, "blocks.1.hook_resid_post")
    assert logits is None and list(cache) == ["blocks.1.hook_resid_post"]
