"""Folders saved with hook-name format 1 load with today's names (TransformerLens's meaning);
SAELens folders keep TransformerLens's names as they are."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import load, save_dictionary
from sparsecircuits.dictionaries.io import CFG_FILENAME
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import hook_formats, load_model
from sparsecircuits.models.embedded import embedded_dir
from testkit import build_dictionary

DATA = Path(__file__).parent / "data"
SHIPPED = embedded_dir() / "transcoders"


@pytest.fixture
def format_1_layer1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped layer-1 transcoder with the cfg.json it was shipped with in hook format 1."""
    monkeypatch.setattr(hook_formats, "_reported", set())
    folder = tmp_path / "layer1"
    shutil.copytree(SHIPPED / "layer1", folder)
    shutil.copy(DATA / "embedded-layer1-hook-format-1" / CFG_FILENAME, folder / CFG_FILENAME)
    return folder


def test_format_1_folder_reads_its_mlp_input_as_mlp_hook_in_and_says_so_once(
    format_1_layer1: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = json.loads((format_1_layer1 / CFG_FILENAME).read_text())
    assert raw["sparsecircuits"]["config"]["hook_in"] == "blocks.1.hook_mlp_in"
    assert "hook_format" not in raw["sparsecircuits"]
    with caplog.at_level(logging.WARNING, logger="sparsecircuits"):
        translated = load(format_1_layer1)
        load(format_1_layer1)
    assert translated.cfg.hook_in == "blocks.1.mlp.hook_in"
    assert translated.cfg.hook_out == "blocks.1.hook_mlp_out"
    notes = [r.getMessage() for r in caplog.records if "hook-name format 1" in r.getMessage()]
    assert len(notes) == 1 and "blocks.1.hook_mlp_in" in notes[0], notes
    shipped = load(SHIPPED / "layer1")
    assert shipped.cfg.hook_in == "blocks.1.mlp.hook_in"
    for name, tensor in shipped.state_dict().items():
        assert torch.equal(tensor, translated.state_dict()[name]), name


def test_the_translated_hook_is_the_tensor_the_transcoder_was_trained_on(
    format_1_layer1: Path,
) -> None:
    """The shipped metrics (FVU 0.146 at layer 1) hold at the translated hook and fail badly at
    TransformerLens's hook_mlp_in (the residual before ln2), which is what the name means now."""
    transcoder = load(format_1_layer1)
    adapter = load_model("embedded", device="cpu")
    lines = (embedded_dir() / "heldout.jsonl").read_text().splitlines()[:8]
    texts = [json.loads(line)["text"][:400] for line in lines]
    ids = adapter.tokenize(texts)[:, :64]
    hooks = ["blocks.1.mlp.hook_in", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"]
    _, cache = adapter.run_with_cache(ids, hooks)
    target = cache["blocks.1.hook_mlp_out"].flatten(0, 1)

    def fvu(inputs: torch.Tensor) -> float:
        with torch.no_grad():
            recon = transcoder.reconstruct(inputs.flatten(0, 1))
        return float((recon - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum())

    assert fvu(cache[transcoder.cfg.hook_in]) < 0.3
    assert fvu(cache["blocks.1.hook_mlp_in"]) > 1.0


def test_format_1_normalized_hooks(tmp_path: Path, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """Format 1's `*.hook_normalized` (before the gain) is today's name on an RMSNorm model, has
    no name on a LayerNorm model, and cannot be resolved without a readable model folder."""

    def saved_as_format_1(model_name: str, folder: Path) -> Path:
        dictionary = build_dictionary("topk", "transcoder", d_out=12)
        dictionary.cfg.hook_in = "blocks.1.ln2.hook_normalized"
        dictionary.cfg.model_name = model_name
        save_dictionary(dictionary, folder)
        raw = json.loads((folder / CFG_FILENAME).read_text())
        del raw["sparsecircuits"]["hook_format"]
        (folder / CFG_FILENAME).write_text(json.dumps(raw))
        return folder

    llama = saved_as_format_1(str(tiny_model_dir("llama")), tmp_path / "llama")
    assert load(llama).cfg.hook_in == "blocks.1.ln2.hook_normalized"
    gpt2 = saved_as_format_1(str(tiny_model_dir("gpt2")), tmp_path / "gpt2")
    with pytest.raises(SparseCircuitsError, match="before its gain and bias.*retrain"):
        load(gpt2)
    with pytest.raises(SparseCircuitsError, match="before its gain and bias"):
        load(saved_as_format_1("embedded", tmp_path / "embedded"))
    unknown = saved_as_format_1("some-org/some-model", tmp_path / "unknown")
    with pytest.raises(SparseCircuitsError, match='"hook_format": 2'):
        load(unknown)
    raw = json.loads((unknown / CFG_FILENAME).read_text())
    raw["sparsecircuits"]["hook_format"] = 2
    (unknown / CFG_FILENAME).write_text(json.dumps(raw))
    assert load(unknown).cfg.hook_in == "blocks.1.ln2.hook_normalized"


def test_a_saelens_folder_keeps_transformer_lens_names(tmp_path: Path) -> None:
    """No "sparsecircuits" object: the hooks are TransformerLens's (hook_mlp_in = the residual)."""
    hooks = (
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_mlp_in",
        "blocks.0.ln2.hook_normalized",
        "blocks.0.mlp.hook_in",
        "blocks.0.hook_mlp_out",
    )
    for hook in hooks:
        folder = tmp_path / hook
        save_dictionary(build_dictionary("topk", "transcoder", d_out=12), folder)
        raw = json.loads((folder / CFG_FILENAME).read_text())
        del raw["sparsecircuits"]
        raw["metadata"]["hook_name"] = hook
        (folder / CFG_FILENAME).write_text(json.dumps(raw))
        (folder / "sparsecircuits_weights.safetensors").unlink(missing_ok=True)
        assert load(folder).cfg.hook_in == hook
