"""Save/load: bit-exact round trip, byte-identical re-save, folded input bias, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.dictionaries import load, load_transcoders, save_dictionary
from sparsecircuits.dictionaries.io import CFG_FILENAME, EXTRA_WEIGHTS_FILENAME, WEIGHTS_FILENAME
from sparsecircuits.errors import SparseCircuitsError
from testkit import build_dictionary, randomize_parameters

CASES = [
    ("relu", "sae"),
    ("topk", "sae"),
    ("relu", "transcoder"),
    ("topk", "transcoder"),
    ("relu", "skip_transcoder"),
    ("topk", "skip_transcoder"),
]


@pytest.mark.parametrize(("architecture", "kind"), CASES)
def test_round_trip_is_bit_exact(architecture: str, kind: str, tmp_path: Path, gen) -> None:  # type: ignore[no-untyped-def]
    dictionary = build_dictionary(
        architecture,
        kind,
        d_out=None if kind == "sae" else 9,
        training={"lr": 1e-3, "context_size": 64},
    )
    randomize_parameters(dictionary)
    save_dictionary(dictionary, tmp_path / "a")
    loaded = load(tmp_path / "a")
    assert type(loaded) is type(dictionary) and loaded.cfg == dictionary.cfg
    original, restored = dictionary.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    x = torch.randn(25, 12, generator=gen)
    assert torch.equal(dictionary(x).out, loaded(x).out)
    save_dictionary(loaded, tmp_path / "b")
    for filename in (CFG_FILENAME, WEIGHTS_FILENAME, EXTRA_WEIGHTS_FILENAME):
        assert (tmp_path / "a" / filename).read_bytes() == (tmp_path / "b" / filename).read_bytes()


def test_cfg_json_has_saelens_keys(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    save_dictionary(
        build_dictionary("topk", "transcoder", d_out=12, training={"context_size": 64}), tmp_path
    )
    raw = json.loads((tmp_path / CFG_FILENAME).read_text())
    assert raw["architecture"] == "topk" and raw["k"] == 4 and raw["d_out"] == 12
    assert raw["apply_b_dec_to_input"] is False and raw["normalize_activations"] == "none"
    assert raw["metadata"]["hook_name"] == "blocks.1.mlp.hook_in"
    assert raw["sparsecircuits"]["hook_format"] == 2
    assert raw["metadata"]["hook_name_out"] == "blocks.1.mlp.hook_out"
    assert raw["metadata"]["context_size"] == 64 and raw["metadata"]["sae_lens_version"] >= "6"
    assert raw["sparsecircuits"]["config"]["training"] == {"context_size": 64}
    assert raw["sparsecircuits"]["saelens_loadable"] is True
    weights = load_file(str(tmp_path / WEIGHTS_FILENAME))
    assert sorted(weights) == ["W_dec", "W_enc", "b_dec", "b_enc"]


def test_extensions_are_named_and_flagged(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    save_dictionary(build_dictionary("topk", "transcoder", d_out=9), tmp_path / "t")
    save_dictionary(build_dictionary("topk", "skip_transcoder", d_out=12), tmp_path / "s")
    for folder, name in (("t", "topk_transcoder"), ("s", "topk_skip_transcoder")):
        raw = json.loads((tmp_path / folder / CFG_FILENAME).read_text())
        assert raw["architecture"] == name and raw["sparsecircuits"]["saelens_loadable"] is False
        assert load(tmp_path / folder).cfg.architecture == "topk"


@pytest.mark.parametrize(("architecture", "kind"), CASES)
def test_folded_input_bias_gives_same_outputs(
    architecture: str, kind: str, tmp_path: Path, gen
) -> None:  # type: ignore[no-untyped-def]
    dictionary = build_dictionary(architecture, kind, d_out=None if kind == "sae" else 9)
    randomize_parameters(dictionary)
    save_dictionary(dictionary, tmp_path)
    (tmp_path / EXTRA_WEIGHTS_FILENAME).unlink()  # what SAELens sees: b_in folded into b_enc
    folded = load(tmp_path)
    assert float(folded.b_in.detach().abs().max()) == 0.0
    x = torch.randn(25, 12, generator=gen)
    torch.testing.assert_close(folded(x).out, dictionary(x).out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded.encode(x), dictionary.encode(x), rtol=1e-5, atol=1e-5)


def test_bad_folders_raise_clear_errors(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SparseCircuitsError, match="no dictionary folder"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseCircuitsError, match="no cfg.json"):
        load(tmp_path / "empty")
    save_dictionary(build_dictionary("topk"), tmp_path / "good")
    cfg_path = tmp_path / "good" / CFG_FILENAME
    good_cfg = cfg_path.read_text()
    cfg_path.write_text("{not json")
    with pytest.raises(SparseCircuitsError, match="not valid JSON"):
        load(tmp_path / "good")
    raw = json.loads(good_cfg)
    raw["sparsecircuits"]["config"]["architecture"] = "mystery"
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SparseCircuitsError, match="unknown dictionary architecture"):
        load(tmp_path / "good")
    del raw["sparsecircuits"]
    raw["architecture"] = "mystery"
    cfg_path.write_text(json.dumps(raw))
    with pytest.raises(SparseCircuitsError, match="unsupported architecture"):
        load(tmp_path / "good")
    cfg_path.write_text(good_cfg)
    (tmp_path / "good" / WEIGHTS_FILENAME).write_bytes(b"garbage")
    with pytest.raises(SparseCircuitsError, match="corrupt"):
        load(tmp_path / "good")
    save_dictionary(build_dictionary("topk"), tmp_path / "good")
    weights = load_file(str(tmp_path / "good" / WEIGHTS_FILENAME))
    weights["W_dec"] = weights["W_dec"][:5].contiguous()
    save_file(weights, str(tmp_path / "good" / WEIGHTS_FILENAME))
    with pytest.raises(SparseCircuitsError, match="W_dec has shape"):
        load(tmp_path / "good")


def test_load_transcoders_by_layer(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for layer in (2, 0):
        transcoder = build_dictionary("topk", "transcoder", d_out=12)
        transcoder.cfg.hook_in, transcoder.cfg.hook_out = (
            f"blocks.{layer}.hook_mlp_in",
            f"blocks.{layer}.hook_mlp_out",
        )
        save_dictionary(transcoder, tmp_path / f"layer_{layer}")
    loaded = load_transcoders(tmp_path)
    assert list(loaded) == [0, 2] and loaded[2].cfg.hook_out == "blocks.2.hook_mlp_out"
    save_dictionary(build_dictionary("topk"), tmp_path / "sae")
    with pytest.raises(SparseCircuitsError, match="not a per-layer transcoder"):
        load_transcoders(tmp_path)
    with pytest.raises(SparseCircuitsError, match="no transcoder folder"):
        load_transcoders(tmp_path / "nothing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(SparseCircuitsError, match="no saved dictionaries"):
        load_transcoders(tmp_path / "bare")


def test_load_transcoders_embedded_loads_the_shipped_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sparsecircuits.dictionaries.io as io_module

    loaded = load_transcoders("embedded")
    assert list(loaded) == [0, 1, 2, 3]
    assert all(loaded[layer].cfg.hook_out.startswith(f"blocks.{layer}.") for layer in loaded)
    monkeypatch.setattr(io_module, "embedded_dir", lambda: tmp_path)
    with pytest.raises(SparseCircuitsError, match="no transcoder folder"):
        load_transcoders("embedded")


def test_unserialisable_training_config_is_rejected_before_writing(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dictionary = build_dictionary("topk", training={"bad": object()})
    with pytest.raises(SparseCircuitsError, match="JSON"):
        save_dictionary(dictionary, tmp_path / "x")
    assert not (tmp_path / "x").exists()


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_a_clt_saved_in_the_published_layout_loads_and_computes_the_same(architecture: str) -> None:
    """`data/clt-*` were written by the release before the activation families were shared with
    CLTs (stacked `log_threshold [L, d_sae]`, one `W_dec.{ℓ}` per source layer); their
    `*.expected.safetensors` hold that release's outputs on fixed inputs."""
    from sparsecircuits.dictionaries import CrossLayerTranscoder

    clt = load(DATA / f"clt-{architecture}")
    expected = load_file(str(DATA / f"clt-{architecture}.expected.safetensors"))
    assert isinstance(clt, CrossLayerTranscoder) and clt.layers == [0, 1]
    fo = clt.eval()(expected["x"])
    torch.testing.assert_close(fo.feature_acts, expected["feature_acts"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fo.out, expected["out"], rtol=1e-5, atol=1e-6)
    assert load_transcoders(DATA / f"clt-{architecture}") is not None


def test_the_shipped_transcoders_load_as_a_transcoder_set() -> None:
    from sparsecircuits.dictionaries import PerLayerTranscoders, TranscoderSet

    transcoders = load_transcoders("embedded")
    assert isinstance(transcoders, PerLayerTranscoders) and isinstance(transcoders, TranscoderSet)
    assert transcoders.layers == [0, 1, 2, 3]
    for layer in transcoders.layers:
        assert transcoders.hook_in(layer) == f"blocks.{layer}.mlp.hook_in"
        assert transcoders.hook_out(layer) == f"blocks.{layer}.mlp.hook_out"
        [(target, block)] = transcoders.decoders(layer)
        assert target == layer and block is transcoders[layer].W_dec
