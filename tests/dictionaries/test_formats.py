"""Formats without their library: writer round trips, detection errors, the hook table, the
transcoder paper's `.pt` (pickle refused unless plain data), Gemma Scope layouts built from their
documented keys, circuit-tracer's TopK semantics and `sparsecircuits convert`.

Checks against the libraries' own code are in `test_formats_libraries.py`.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hubkit import use_offline_cache
from sparsecircuits.cli import main as cli_main
from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    DictionaryConfig,
    PerLayerTranscoders,
    formats,
    load,
    load_transcoders,
    make,
)
from sparsecircuits.dictionaries.formats import hooks
from sparsecircuits.errors import SparseCircuitsError
from testkit import build_dictionary, randomize_parameters

D = 12


def _transcoder(architecture: str, kind: str = "transcoder", layer: int = 0, zero_b_in=True, **kw):  # type: ignore[no-untyped-def]
    coder = build_dictionary(architecture, kind, d_in=D, d_sae=24, d_out=D, **kw)
    coder.cfg.hook_in, coder.cfg.hook_out = (
        f"blocks.{layer}.mlp.hook_in",
        f"blocks.{layer}.mlp.hook_out",
    )
    randomize_parameters(coder, seed=layer)
    if zero_b_in:
        with torch.no_grad():
            coder.b_in.zero_()
    return coder


def _clt(architecture: str, n_layers: int = 3, zero_b_in=True) -> CrossLayerTranscoder:  # type: ignore[no-untyped-def]
    cfg = DictionaryConfig(
        k=4,
        architecture=architecture,
        kind="clt",
        n_layers=n_layers,
        d_in=D,
        d_sae=20,
        hook_in="blocks.{layer}.hook_resid_mid",
        hook_out="blocks.{layer}.hook_mlp_out",
        model_name="tiny",
    )
    clt = make(cfg)
    assert isinstance(clt, CrossLayerTranscoder)
    randomize_parameters(clt, seed=5)
    if zero_b_in:
        with torch.no_grad():
            clt.b_in.zero_()
    return clt


def _assert_same_state(a, b) -> None:  # type: ignore[no-untyped-def]
    """Bit-equal tensors, except JumpReLU thresholds: the formats store θ = exp(log θ) and the
    reader takes the log again, which may move the last bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        if name.endswith("log_threshold"):
            torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(sa[name], sb[name]), name


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    ("architecture", "kind", "extra"),
    [
        ("relu", "transcoder", {}),
        ("jumprelu", "transcoder", {}),
        ("relu", "skip_transcoder", {}),
        ("topk", "transcoder", {"topk_relu": False}),
    ],
)
def test_circuit_tracer_set_round_trip_is_exact(architecture, kind, extra, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    transcoders = PerLayerTranscoders(
        {layer: _transcoder(architecture, kind, layer, **extra) for layer in range(2)}
    )
    formats.write(transcoders, "circuit-tracer", tmp_path / "ct")
    assert formats.detect(tmp_path / "ct") == "circuit-tracer"
    loaded = load_transcoders(tmp_path / "ct")
    assert isinstance(loaded, PerLayerTranscoders) and loaded.layers == [0, 1]
    for layer in range(2):
        _assert_same_state(loaded[layer], transcoders[layer])
        assert loaded[layer].cfg.as_dict() == transcoders[layer].cfg.as_dict()


@pytest.mark.parametrize("architecture", ["relu", "jumprelu"])
def test_circuit_tracer_clt_round_trip_is_exact(architecture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clt = _clt(architecture)
    formats.write(clt, "circuit-tracer", tmp_path / "clt")
    loaded = load_transcoders(tmp_path / "clt")
    assert isinstance(loaded, CrossLayerTranscoder)
    _assert_same_state(loaded, clt)
    assert loaded.cfg.as_dict() == clt.cfg.as_dict()
    assert load(tmp_path / "clt").cfg.n_layers == 3


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparsify_round_trip_is_exact(kind, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    coder = build_dictionary("topk", kind, d_in=D, d_sae=24, d_out=None if kind == "sae" else D)
    randomize_parameters(coder)
    with torch.no_grad():  # the parametrisation sparsify holds exactly
        if kind == "sae":
            coder.b_in.copy_(coder.b_dec)
        else:
            coder.b_in.zero_()
    formats.write(coder, "sparsify", tmp_path / "run")
    loaded = load(tmp_path / "run")
    _assert_same_state(loaded, coder)
    assert loaded.cfg.as_dict() == coder.cfg.as_dict()


def test_writers_fold_the_input_bias(tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    """With a nonzero input bias the formats cannot hold, outputs still agree (max |diff| <= 1e-6)."""
    x = torch.randn(40, D, generator=gen)
    cases = [
        ("circuit-tracer", _transcoder("relu", zero_b_in=False)),
        ("circuit-tracer", _clt("jumprelu", zero_b_in=False)),
        ("sparsify", _transcoder("topk", zero_b_in=False)),
    ]
    sae = build_dictionary("topk", "sae", d_in=D, d_sae=24)
    randomize_parameters(sae)
    cases.append(("sparsify", sae))
    for i, (fmt, coder) in enumerate(cases):
        formats.write(coder, fmt, tmp_path / str(i))
        loaded = load(tmp_path / str(i))
        xin = x[:, None].expand(-1, 3, -1) if isinstance(coder, CrossLayerTranscoder) else x
        with torch.no_grad():
            assert (loaded(xin).out - coder(xin).out).abs().max() <= 1e-6
            assert (loaded.encode(xin) - coder.encode(xin)).abs().max() <= 1e-6


def test_writers_refuse_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(SparseCircuitsError, match="sparsify holds TopK coders only"):
        formats.write(_transcoder("relu"), "sparsify", tmp_path / "a")
    with pytest.raises(
        SparseCircuitsError, match="every layer from 0|one transcoder per layer from 0"
    ):
        formats.write(
            PerLayerTranscoders({1: _transcoder("relu", layer=1)}), "circuit-tracer", tmp_path / "b"
        )
    with pytest.raises(SparseCircuitsError, match="circuit-tracer has no 'topk' cross-layer"):
        formats.write(_clt("topk"), "circuit-tracer", tmp_path / "c")
    with pytest.warns(UserWarning, match="applies no ReLU"):
        formats.write(_transcoder("topk"), "circuit-tracer", tmp_path / "d")


# ----------------------------------------------------------------------------- detection, hooks
def test_unknown_layout_names_what_was_found_and_what_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    for call in (load, load_transcoders):
        with pytest.raises(
            SparseCircuitsError,
            match=r"found: notes\.txt.*accepted: .*SAELens.*sparsify.*circuit-tracer.*Gemma Scope",
        ):
            call(tmp_path)
    formats.write(_transcoder("topk"), "sparsify", tmp_path / "sp")
    assert load(tmp_path / "sp" / "layers.0.mlp" / "sae.safetensors").cfg.kind == "transcoder"
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(SparseCircuitsError, match="holds no dictionary format"):
        load(tmp_path / "weights.bin")


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ("hook_resid_mid", "blocks.3.hook_resid_mid"),
        ("hook_mlp_in", "blocks.3.hook_mlp_in"),
        ("ln2.hook_normalized", "blocks.3.ln2.hook_normalized"),
        ("mlp.hook_in", "blocks.3.mlp.hook_in"),
        ("mlp.hook_out", "blocks.3.mlp.hook_out"),
        ("hook_mlp_out", "blocks.3.hook_mlp_out"),
    ],
)
def test_circuit_tracer_hook_names_round_trip(theirs, ours) -> None:  # type: ignore[no-untyped-def]
    assert hooks.to_ours("circuit_tracer", theirs, 3) == ours
    assert hooks.from_ours("circuit_tracer", ours) == theirs


def test_sparsify_and_huggingface_hook_names() -> None:
    assert hooks.to_ours("sparsify", "layers.7.mlp:in") == "blocks.7.mlp.hook_in"
    assert hooks.to_ours("sparsify", "h.7.mlp:out") == "blocks.7.mlp.hook_out"
    assert hooks.to_ours("sparsify", "layers.7:out") == "blocks.7.hook_resid_post"
    assert hooks.from_ours("sparsify", "blocks.7.mlp.hook_in") == "layers.7.mlp:in"
    assert (
        hooks.to_ours("huggingface", "model.layers.5.pre_feedforward_layernorm.output")
        == "blocks.5.mlp.hook_in"
    )
    assert hooks.to_ours("sparsify", "layers.7.unknown:in") is None


# ----------------------------------------------------------------------------- circuit-tracer TopK
def test_topk_without_relu_keeps_negative_values(gen) -> None:  # type: ignore[no-untyped-def]
    """circuit-tracer's TopK (`activation_functions.TopK`: `x * 1[i in topk(x)]`, §1.2): a row
    whose k-th largest pre-activation is negative keeps it; our default TopK zeroes it."""
    signed = build_dictionary("topk", "transcoder", d_in=D, d_sae=24, d_out=D, k=4, topk_relu=False)
    plain = build_dictionary("topk", "transcoder", d_in=D, d_sae=24, d_out=D, k=4)
    plain.load_state_dict(signed.state_dict())
    with torch.no_grad():
        signed.b_enc.fill_(-5.0)  # nearly every pre-activation negative
        plain.b_enc.fill_(-5.0)
    x = torch.randn(8, D, generator=gen) * 0.1
    with torch.no_grad():
        pre = x @ signed.W_enc + signed.b_enc
        top = pre.topk(4, dim=-1)
        expected = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
        assert (top.values[:, -1] < 0).all()
        torch.testing.assert_close(signed.encode(x), expected, rtol=0, atol=0)
        assert (plain.encode(x) >= 0).all()
    with pytest.raises(SparseCircuitsError, match="topk_relu=false"):
        build_dictionary("batchtopk", "sae", topk_relu=False)


# ----------------------------------------------------------------------------- Gemma Scope
def _gemma_scope_arrays(d_in: int, d_sae: int, gen: torch.Generator) -> dict[str, np.ndarray]:
    """A params.npz's arrays (§1.4; SAELens `gemma_2_transcoder_huggingface_loader`): W_enc
    [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold, float32."""
    arrays = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) * 0.4,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) * 0.4,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.2,
        "b_dec": torch.randn(d_in, generator=gen) * 0.2,
        "threshold": torch.rand(d_sae, generator=gen) * 0.3,
    }
    return {k: v.numpy() for k, v in arrays.items()}


def _gemma_scope_reference(
    a: dict[str, np.ndarray], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's JumpReLU (§1.2, as SAELens runs it): `relu(u)·1[u > θ]`, no input bias."""
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    u = x @ t["W_enc"] + t["b_enc"]
    acts = torch.relu(u) * (u > t["threshold"])
    return acts, acts @ t["W_dec"] + t["b_dec"]


def test_gemma_scope_npz_sites_and_outputs(tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    arrays = _gemma_scope_arrays(D, 32, gen)
    arrays["threshold"][:3] = 0.0  # a zero threshold loads (as the smallest normal float)
    x = torch.randn(30, D, generator=gen)
    tc = tmp_path / "gemma-scope-2b-pt-transcoders/layer_4/width_16k/average_l0_88/params.npz"
    res = tmp_path / "gemma-scope-9b-it-res/layer_7/width_16k/average_l0_20/params.npz"
    for path in (tc, res):
        path.parent.mkdir(parents=True)
        np.savez(path, **{k.lower() if path is res else k: v for k, v in arrays.items()})
    transcoder, sae = load(tc), load(res.parent)
    assert (transcoder.cfg.kind, transcoder.cfg.hook_in, transcoder.cfg.hook_out) == (
        "transcoder",
        "blocks.4.ln2.hook_normalized",
        "blocks.4.hook_mlp_out",
    )
    assert transcoder.cfg.model_name == "google/gemma-2-2b"
    assert (sae.cfg.kind, sae.cfg.hook_in, sae.cfg.model_name) == (
        "sae",
        "blocks.7.hook_resid_post",
        "google/gemma-2-9b-it",
    )
    acts, out = _gemma_scope_reference(arrays, x)
    with torch.no_grad():
        for coder in (transcoder, sae):
            assert (coder.encode(x) - acts).abs().max() <= 1e-6
            assert (coder(x).out - out).abs().max() <= 1e-6
    assert load_transcoders(tc).layers == [4]
    arrays["threshold"][0] = -0.1
    np.savez(tc, **arrays)
    with pytest.raises(SparseCircuitsError, match="negative"):
        load(tc)
    lonely = tmp_path / "elsewhere" / "params.npz"
    lonely.parent.mkdir()
    np.savez(lonely, **arrays)
    with pytest.raises(SparseCircuitsError, match="cannot tell the site"):
        load(lonely)


def test_gemma_scope_2_affine_transcoder(tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    """§1.5: `w_enc`, `w_dec`, `b_enc`, `b_dec`, `threshold`, `affine_skip_connection [d_in, d_out]`
    applied as `x @ A` (SAELens `gemma_3_sae_huggingface_loader`, circuit-tracer
    `load_gemma_scope_2_transcoder`); hooks from config.json's HF hook points."""
    arrays = {k.lower(): torch.from_numpy(v) for k, v in _gemma_scope_arrays(D, 32, gen).items()}
    arrays["affine_skip_connection"] = torch.randn(D, D, generator=gen) * 0.3
    folder = tmp_path / "gemma-scope-2-1b-pt/transcoder_all/layer_6_width_16k_l0_small_affine"
    folder.mkdir(parents=True)
    save_file(arrays, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "jump_relu",
                "model_name": "gemma-v3-1b-pt",
                "affine_connection": True,
                "hf_hook_point_in": "model.layers.6.pre_feedforward_layernorm.output",
                "hf_hook_point_out": "model.layers.6.post_feedforward_layernorm.output",
            }
        )
    )
    coder = load(folder)
    assert (coder.cfg.kind, coder.cfg.hook_in, coder.cfg.hook_out) == (
        "skip_transcoder",
        "blocks.6.mlp.hook_in",
        "blocks.6.hook_mlp_out",
    )
    x = torch.randn(30, D, generator=gen)
    u = x @ arrays["w_enc"] + arrays["b_enc"]
    acts = torch.relu(u) * (u > arrays["threshold"])
    out = acts @ arrays["w_dec"] + arrays["b_dec"] + x @ arrays["affine_skip_connection"]
    with torch.no_grad():
        assert (coder.encode(x) - acts).abs().max() <= 1e-6
        assert (coder(x).out - out).abs().max() <= 1e-6


# ----------------------------------------------------------------------------- the paper's .pt
def _paper_checkpoint(path: Path, gen: torch.Generator, transcoder: bool = True) -> dict:  # type: ignore[type-arg]
    """A `.pt` as `sae_training/sparse_autoencoder.py` `save_model` writes it (§1.10;
    jacobdunefsky/transcoder_circuits): `torch.save({"cfg": LanguageModelSAERunnerConfig,
    "state_dict": ...})`. The config class is a stand-in registered under its real module path,
    so the pickle references `sae_training.config.LanguageModelSAERunnerConfig` as the real
    files do."""
    module = types.ModuleType("sae_training.config")

    class LanguageModelSAERunnerConfig:
        pass

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    module.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig  # type: ignore[attr-defined]
    cfg = LanguageModelSAERunnerConfig()
    cfg.__dict__.update(
        model_name="gpt2-small",
        hook_point="blocks.5.ln2.hook_normalized",
        hook_point_layer=5,
        out_hook_point="blocks.5.hook_mlp_out",
        d_in=D,
        d_out=D,
        d_sae=32,
        is_transcoder=transcoder,
        dtype=torch.float32,
        device="cpu",
        l1_coefficient=1.4e-4,
    )
    state = {
        "W_enc": torch.randn(D, 32, generator=gen) * 0.4,
        "b_enc": torch.randn(32, generator=gen) * 0.2,
        "W_dec": torch.randn(32, D, generator=gen) * 0.4,
        "b_dec": torch.randn(D, generator=gen) * 0.2,
    }
    if transcoder:
        state["b_dec_out"] = torch.randn(D, generator=gen) * 0.2
    sys.modules["sae_training"] = types.ModuleType("sae_training")
    sys.modules["sae_training.config"] = module
    try:
        torch.save({"cfg": cfg, "state_dict": state}, path)
    finally:
        del sys.modules["sae_training.config"], sys.modules["sae_training"]
    return state


@pytest.mark.parametrize("transcoder", [True, False])
def test_transcoder_paper_pt_loads_without_pickle(transcoder, tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.5.ln2.hook_normalized_24576.pt"
    state = _paper_checkpoint(path, gen, transcoder)
    coder = load(path)
    assert coder.cfg.kind == ("transcoder" if transcoder else "sae")
    assert coder.cfg.hook_in == "blocks.5.ln2.hook_normalized"
    if transcoder:
        assert coder.cfg.hook_out == "blocks.5.hook_mlp_out"
    x = torch.randn(30, D, generator=gen)
    # the paper's forward: relu((x - b_dec) W_enc + b_enc) W_dec + (b_dec_out or b_dec)
    acts = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    out = acts @ state["W_dec"] + state["b_dec_out" if transcoder else "b_dec"]
    with torch.no_grad():
        assert (coder.encode(x) - acts).abs().max() <= 1e-6
        assert (coder(x).out - out).abs().max() <= 1e-6


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.target}",))


def test_pickle_payload_in_pt_cannot_run(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": _Payload(target), "state_dict": {}}, path)
    with pytest.raises(SparseCircuitsError, match="refused to unpickle"):
        load(path)
    assert not target.exists()


# ----------------------------------------------------------------------------- sparsify, CLI
def test_sparsify_run_loads_as_a_transcoder_set(tmp_path: Path) -> None:
    coders = PerLayerTranscoders({layer: _transcoder("topk", layer=layer) for layer in (0, 2)})
    formats.write(coders, "sparsify", tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "layers.0.mlp",
        "layers.2.mlp",
    ]
    loaded = load_transcoders(tmp_path / "run")
    assert isinstance(loaded, PerLayerTranscoders) and loaded.layers == [0, 2]
    with pytest.raises(SparseCircuitsError, match="holds 2 sparsify coders"):
        load(tmp_path / "run")


def test_sparsify_early_transcoder_keeps_its_input_convention(tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    """A transcoder saved before sparsify f02711e ("fix decoder bias on transcoders", PR #49;
    `git show f02711e^:sparsify/sae.py` `pre_acts`: `encoder(x - b_dec)` for every coder): its
    cfg.json has no `transcode`/`activation` (SaeConfig at 5d7e863) and the run's config.json
    (TrainConfig) has `transcode: true`."""
    run = tmp_path / "run"
    coder = _transcoder("topk")
    formats.write(coder, "sparsify", run)
    cfg_path = run / "layers.0.mlp" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("transcode", "activation", "sparsecircuits"):
        cfg.pop(key)
    cfg_path.write_text(json.dumps(cfg))
    (run / "config.json").write_text(json.dumps({"sae": cfg, "transcode": True}))
    early = load(run / "layers.0.mlp")
    assert early.cfg.kind == "transcoder"
    from safetensors.torch import load_file

    t = load_file(str(run / "layers.0.mlp" / "sae.safetensors"))
    x = torch.randn(30, D, generator=gen)
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    top = pre.topk(coder.cfg.k, dim=-1)
    acts = torch.zeros_like(pre).scatter_(1, top.indices, top.values)
    with torch.no_grad():
        assert (early.encode(x) - acts).abs().max() <= 1e-6
        assert (early(x).out - (acts @ t["W_dec"] + t["b_dec"])).abs().max() <= 1e-6


def test_convert_command(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "saelens"
    formats.write(
        PerLayerTranscoders({0: _transcoder("topk"), 1: _transcoder("topk", layer=1)}),
        "saelens",
        src,
    )
    assert cli_main(["convert", str(src), str(tmp_path / "sp"), "--to", "sparsify"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (
        cli_main(["convert", str(tmp_path / "sp"), str(tmp_path / "ct"), "--to", "circuit-tracer"])
        == 0
    )
    assert load_transcoders(tmp_path / "ct").layers == [0, 1]
    assert cli_main(["convert", str(src), str(tmp_path / "ct"), "--to", "saelens"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_unreadable_library_files_are_refused(tmp_path: Path) -> None:
    coder = _transcoder("topk")
    formats.write(coder, "sparsify", tmp_path / "sp")
    cfg_path = tmp_path / "sp" / "layers.0.mlp" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["activation"] = "groupmax"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(SparseCircuitsError, match="groupmax"):
        load(tmp_path / "sp")
    formats.write(PerLayerTranscoders({0: _transcoder("relu")}), "circuit-tracer", tmp_path / "ct")
    layer = tmp_path / "ct" / "layer_0.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(str(layer))
    tensors["threshold"] = torch.ones(
        24
    )  # circuit-tracer reads a threshold only as activation_function.threshold
    save_file(tensors, str(layer))
    with pytest.raises(SparseCircuitsError, match="unknown \\['threshold'\\]"):
        load_transcoders(tmp_path / "ct")


def test_topk_without_relu_trains(gen) -> None:  # type: ignore[no-untyped-def]
    coder = build_dictionary("topk", "transcoder", d_in=D, d_sae=24, d_out=D, k=4, topk_relu=False)
    x, target = torch.randn(16, D, generator=gen), torch.randn(16, D, generator=gen)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[:6] = True
    loss, parts = coder.loss(x, target, dead_mask=dead)
    loss.backward()
    assert coder.W_enc.grad is not None and coder.W_enc.grad.abs().sum() > 0
    assert parts["aux"] > 0


def test_circuit_tracer_config_listing_gemma_scope_files(tmp_path: Path, gen, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The shape of circuit-tracer's Gemma-2 set config (`mwhanna/gemma-scope-transcoders`,
    §1.4/§1.6): `transcoders:` lists one `params.npz` per layer, hooks in `config.yaml`."""
    paths = []
    for layer in range(2):
        path = (
            tmp_path
            / f"gemma-scope-2b-pt-transcoders/layer_{layer}/width_16k/average_l0_5/params.npz"
        )
        path.parent.mkdir(parents=True)
        np.savez(path, **_gemma_scope_arrays(D, 32, gen))
        paths.append(str(path.relative_to(tmp_path)))
    (tmp_path / "config.yaml").write_text(
        "model_kind: transcoder_set\nmodel_name: google/gemma-2-2b\n"
        "feature_input_hook: ln2.hook_normalized\nfeature_output_hook: hook_mlp_out\n"
        "transcoders:\n" + "".join(f"  - {p}\n" for p in paths)
    )
    loaded = load_transcoders(tmp_path)
    assert isinstance(loaded, PerLayerTranscoders) and loaded.layers == [0, 1]
    assert (loaded.hook_in(1), loaded.hook_out(1)) == (
        "blocks.1.ln2.hook_normalized",
        "blocks.1.hook_mlp_out",
    )
    (tmp_path / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: x\nfeature_output_hook: y\n"
        "transcoders:\n  - hf://google/gemma-scope-2b-pt-transcoders/layer_0/params.npz\n"
    )
    # an hf:// entry is fetched through the hub cache; offline and uncached, that names the file
    use_offline_cache(tmp_path, monkeypatch)
    with pytest.raises(SparseCircuitsError, match="missing from the Hugging Face cache"):
        load_transcoders(tmp_path)
