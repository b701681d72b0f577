"""Loading checks the parameters' values: NaN/inf refused with the tensor named; SAELens JumpReLU
thresholds below zero load as zero (what SAELens computes), never as log(negative) = NaN."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.dictionaries import load, save_dictionary
from sparsecircuits.dictionaries.io import CFG_FILENAME, EXTRA_WEIGHTS_FILENAME, WEIGHTS_FILENAME
from sparsecircuits.errors import SparseCircuitsError
from testkit import build_dictionary, randomize_parameters


def saelens_only(folder: Path) -> None:
    """Strip our own additions so `folder` reads as a SAELens-written one."""
    (folder / EXTRA_WEIGHTS_FILENAME).unlink(missing_ok=True)
    raw = json.loads((folder / CFG_FILENAME).read_text())
    raw.pop("sparsecircuits", None)
    (folder / CFG_FILENAME).write_text(json.dumps(raw))


def edit_weights(folder: Path, **changes: torch.Tensor) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / WEIGHTS_FILENAME))
    weights.update(changes)
    save_file(weights, str(folder / WEIGHTS_FILENAME))
    return weights


def test_negative_saelens_thresholds_load_as_zero_and_match_saelens_arithmetic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dictionary = build_dictionary("jumprelu", kind="transcoder", d_in=12, d_sae=24)
    randomize_parameters(dictionary, seed=3)
    folder = save_dictionary(dictionary, tmp_path / "jr")
    saelens_only(folder)
    threshold = load_file(str(folder / WEIGHTS_FILENAME))["threshold"]
    threshold[::3] = -torch.rand(threshold[::3].shape) - 0.1
    weights = edit_weights(folder, threshold=threshold.contiguous())
    with caplog.at_level(logging.WARNING, logger="sparsecircuits"):
        loaded = load(folder)
    assert "negative" in caplog.text and "8 JumpReLU" in caplog.text
    assert not torch.isnan(loaded.activation.log_threshold).any()
    # SAELens' JumpReLU transcoder, written out from its definition: ReLU(pre) * (pre > threshold)
    x = torch.randn(64, 12)
    pre = x @ weights["W_enc"] + weights["b_enc"]
    want = (pre.relu() * (pre > weights["threshold"])) @ weights["W_dec"] + weights["b_dec"]
    torch.testing.assert_close(loaded.reconstruct(x), want, rtol=1e-5, atol=1e-5)
    assert (loaded.encode(x)[:, ::3] > 0).any()  # the latents with negative thresholds fire


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("tensor", ["W_enc", "b_dec", "threshold"])
def test_non_finite_parameters_are_refused_naming_the_tensor(
    tmp_path: Path, bad: float, tensor: str
) -> None:
    folder = save_dictionary(build_dictionary("jumprelu", kind="transcoder"), tmp_path / "d")
    saelens_only(folder)
    value = load_file(str(folder / WEIGHTS_FILENAME))[tensor].clone()
    value.view(-1)[0] = bad
    edit_weights(folder, **{tensor: value})
    with pytest.raises(SparseCircuitsError, match=rf"{tensor} holds 1 NaN or infinite"):
        load(folder)


def test_our_own_folders_are_checked_too(tmp_path: Path) -> None:
    dictionary = build_dictionary("topk", kind="sae")
    randomize_parameters(dictionary)
    folder = save_dictionary(dictionary, tmp_path / "ours")
    extra = load_file(str(folder / EXTRA_WEIGHTS_FILENAME))
    extra["b_in"] = torch.full_like(extra["b_in"], float("nan"))
    save_file(extra, str(folder / EXTRA_WEIGHTS_FILENAME))
    with pytest.raises(SparseCircuitsError, match="b_in holds 12 NaN"):
        load(folder)
