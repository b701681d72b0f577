"""load_model sources (local folder, embedded, hub id) and tiny model building."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import load_model, resolve_device, supported_model_types
from sparsecircuits.models.architectures import spec_for_model_type
from sparsecircuits.models.tiny import FAMILIES, build_tiny_model


def test_supported_model_types_cover_every_tiny_family():
    # "llama3" is a Llama (model type "llama") with Llama-3's scaled RoPE
    assert set(FAMILIES) - {"llama3"} <= set(supported_model_types())
    assert {"gemma2", "gemma3", "gemma3_text"} <= set(supported_model_types())
    with pytest.raises(
        SparseCircuitsError, match="not supported; use one of: gemma2, gemma3, gemma3_text, gpt2"
    ):
        spec_for_model_type("bert")


def test_local_folder_round_trip(tiny_model_dir):
    folder = tiny_model_dir("llama")
    adapter = load_model(folder, device="cpu")
    again = load_model(str(folder), device="cpu")
    ids = adapter.tokenize("the cat")
    assert torch.equal(adapter.forward(ids), again.forward(ids))
    assert adapter.name == str(folder) and adapter.family == "llama"


def test_missing_folders_raise(tmp_path):
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        load_model(tmp_path / "nope" / "model", device="cpu")
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        load_model("./no-such-model-dir", device="cpu")
    with pytest.raises(SparseCircuitsError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_unsupported_architecture_fails_before_loading_weights(tmp_path):
    from transformers import OPTConfig

    OPTConfig(
        num_hidden_layers=1, hidden_size=16, ffn_dim=32, num_attention_heads=2, vocab_size=300
    ).save_pretrained(tmp_path)
    with pytest.raises(SparseCircuitsError, match="'opt' is not supported; use one of"):
        load_model(tmp_path, device="cpu")


def test_hub_id_missing_from_the_offline_cache_says_how_to_fetch_it(tmp_path, monkeypatch):
    from hubkit import use_offline_cache

    use_offline_cache(tmp_path, monkeypatch)
    with pytest.raises(
        SparseCircuitsError,
        match=r"hf://someorg/some-model: missing from the Hugging Face cache .*: config.json.*hf download someorg/some-model",
    ):
        load_model("someorg/some-model", device="cpu")


def _fake_embedded_package(monkeypatch, folder):
    module = types.ModuleType("sparsecircuits.models.embedded")
    module.embedded_dir = lambda: folder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sparsecircuits.models.embedded", module)


def test_embedded_model_loads_from_embedded_dir(monkeypatch, tiny_model_dir, tmp_path):
    _fake_embedded_package(monkeypatch, tmp_path)
    with pytest.raises(SparseCircuitsError, match="lacks config.json, model.safetensors"):
        load_model("embedded", device="cpu")
    _fake_embedded_package(monkeypatch, tiny_model_dir("gpt2"))
    adapter = load_model(device="cpu")
    assert adapter.name == "embedded" and adapter.family == "gpt2"


def test_embedded_model_absent_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(
        sys.modules,
        "sparsecircuits.models.embedded",
        types.ModuleType("sparsecircuits.models.embedded"),
    )
    with pytest.raises(SparseCircuitsError, match="embedded model is not installed"):
        load_model("embedded", device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SparseCircuitsError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(SparseCircuitsError, match="CUDA is not available"):
            resolve_device("cuda")


def test_tiny_models_are_seeded_and_leave_the_rng_alone(tmp_path):
    state = torch.get_rng_state()
    first = load_file(build_tiny_model("qwen3", tmp_path / "a", seed=3) / "model.safetensors")
    again = load_file(build_tiny_model("qwen3", tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(build_tiny_model("qwen3", tmp_path / "c", seed=4) / "model.safetensors")
    assert torch.equal(torch.get_rng_state(), state)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_tiny_tokenizer_fits_the_model(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("gpt2"))
    assert len(tokenizer) <= 512
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    assert (
        tokenizer.decode(tokenizer.encode("In the year 1732, def f(x): ü"))
        == "In the year 1732, def f(x): ü"
    )


def test_tiny_builder_rejects_bad_arguments(tmp_path):
    with pytest.raises(SparseCircuitsError, match="unknown tiny model family"):
        build_tiny_model("bert", tmp_path)
    with pytest.raises(SparseCircuitsError, match="too small"):
        build_tiny_model("gpt2", tmp_path, vocab_size=100)
