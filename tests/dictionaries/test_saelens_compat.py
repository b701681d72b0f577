"""Folders we write load in SAELens (`SAE.load_from_disk`) and compute the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import load, save_dictionary
from testkit import build_dictionary, randomize_parameters

sae_lens = pytest.importorskip("sae_lens")

CASES = [
    ("relu", "sae", None, "standard"),
    ("topk", "sae", None, "topk"),
    ("relu", "transcoder", 9, "transcoder"),
    ("relu", "skip_transcoder", 9, "skip_transcoder"),
    ("topk", "transcoder", 12, "topk"),
]


@pytest.mark.parametrize(("architecture", "kind", "d_out", "saelens_name"), CASES)
def test_saelens_loads_our_folders(
    architecture, kind, d_out, saelens_name, tmp_path: Path, gen
) -> None:  # type: ignore[no-untyped-def]
    dictionary = build_dictionary(architecture, kind, d_out=d_out)
    randomize_parameters(dictionary)
    save_dictionary(dictionary, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert theirs.cfg.architecture() == saelens_name
    assert theirs.cfg.metadata.hook_name == dictionary.cfg.hook_in
    x = torch.randn(25, 12, generator=gen)
    with torch.no_grad():
        ours_out = dictionary(x).out
        ours_acts = dictionary.encode(x)
        theirs_acts = theirs.encode(x)
        theirs_out = theirs(x)
    torch.testing.assert_close(theirs_acts, ours_acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs_out, ours_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("saelens_cls", "cfg_cls", "extra"),
    [("StandardSAE", "StandardSAEConfig", {}), ("TopKSAE", "TopKSAEConfig", {"k": 3})],
)
@pytest.mark.parametrize("apply_b_dec_to_input", [False, True])
def test_we_load_saelens_saved_saes(
    saelens_cls, cfg_cls, extra, apply_b_dec_to_input, tmp_path: Path, gen
) -> None:  # type: ignore[no-untyped-def]
    cfg = getattr(sae_lens, cfg_cls)(
        d_in=8, d_sae=16, apply_b_dec_to_input=apply_b_dec_to_input, **extra
    )
    theirs = getattr(sae_lens, saelens_cls)(cfg)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    theirs.save_model(str(tmp_path))
    ours = load(tmp_path)
    x = torch.randn(10, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).out, theirs(x), rtol=1e-5, atol=1e-5)


VARIANT_CASES = [
    ("jumprelu", "sae", None, "jumprelu"),
    ("jumprelu", "transcoder", 9, "jumprelu_transcoder"),
    ("jumprelu", "skip_transcoder", 9, "jumprelu_skip_transcoder"),
    ("batchtopk", "sae", None, "jumprelu"),
    ("batchtopk", "transcoder", 9, "jumprelu_transcoder"),
    ("abstopk", "sae", None, "abstopk"),
    ("abstopk", "transcoder", 12, "abstopk"),
    ("mp", "sae", None, "matching_pursuit"),
]


@pytest.mark.parametrize(("architecture", "kind", "d_out", "saelens_name"), VARIANT_CASES)
def test_saelens_loads_variants(
    architecture, kind, d_out, saelens_name, tmp_path: Path, gen
) -> None:  # type: ignore[no-untyped-def]
    dictionary = build_dictionary(architecture, kind, d_out=d_out)
    randomize_parameters(dictionary)
    with torch.no_grad():
        if architecture == "jumprelu":
            dictionary.activation.log_threshold.fill_(-1.0)
        if architecture == "batchtopk":
            dictionary.activation.threshold.fill_(0.05)
        if architecture == "mp":
            dictionary.normalize_decoder()
    dictionary.eval()  # BatchTopK and MP save their inference rule
    save_dictionary(dictionary, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert theirs.cfg.architecture() == saelens_name
    x = torch.randn(25, 12, generator=gen)
    with torch.no_grad():
        ours_acts, ours_out = dictionary.encode(x), dictionary(x).out
        theirs_acts, theirs_out = theirs.encode(x), theirs(x)
    assert (ours_acts != 0).any()
    torch.testing.assert_close(theirs_acts, ours_acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs_out, ours_out, rtol=1e-5, atol=1e-5)
    # and a folder without our extra file (what SAELens wrote) loads back to the same outputs
    (tmp_path / "sparsecircuits_weights.safetensors").unlink()
    reloaded = load(tmp_path)
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).out, ours_out, rtol=1e-5, atol=1e-5)
