"""Dictionary behaviour: shapes, TopK sparsity, sparse == dense, L1 weighting, decoder norms, AuxK."""

from __future__ import annotations

import contextlib

import pytest
import torch

from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    Dictionary,
    DictionaryConfig,
    geometric_median,
    kernels,
    make,
)
from sparsecircuits.errors import SparseCircuitsError
from testkit import build_dictionary, randomize_parameters


@pytest.mark.parametrize("architecture", ["relu", "topk"])
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_shapes_and_loss_parts(architecture: str, kind: str, gen: torch.Generator) -> None:
    d_out = None if kind == "sae" else 9
    dictionary = build_dictionary(architecture, kind, d_out=d_out)
    assert isinstance(dictionary, Dictionary) and dictionary.cfg.kind == kind
    x = torch.randn(30, 12, generator=gen)
    target = None if kind == "sae" else torch.randn(30, 9, generator=gen)
    out_dim = 12 if kind == "sae" else 9
    assert dictionary.encode(x).shape == (30, 48)
    assert dictionary.encode(x.reshape(5, 6, 12)).shape == (5, 6, 48)
    assert dictionary.decode(dictionary.encode(x)).shape == (30, out_dim)
    fo = dictionary(x)
    assert fo.out.shape == (30, out_dim) and fo.feature_acts.shape == (30, 48)
    out, acts = fo
    assert out is fo.out and acts is fo.feature_acts
    assert dictionary.reconstruct(x.reshape(5, 6, 12)).shape == (5, 6, out_dim)
    loss, parts = dictionary.loss(x, target)
    assert loss.ndim == 0 and loss.requires_grad
    for key in ("loss", "mse", "fvu", "l0", "l1", "sparsity", "aux", "n_dead"):
        assert parts[key].ndim == 0 and not parts[key].requires_grad
    assert parts["fired_counts"].shape == (48,)
    assert int(parts["fired_counts"].sum()) == round(float(parts["l0"]) * 30)


def test_transcoder_needs_target_and_widths_are_checked(gen: torch.Generator) -> None:
    transcoder = build_dictionary("topk", "transcoder", d_out=9)
    x = torch.randn(4, 12, generator=gen)
    with pytest.raises(SparseCircuitsError, match="target"):
        transcoder.loss(x)
    with pytest.raises(SparseCircuitsError, match="d_in=12"):
        transcoder(torch.randn(4, 11))
    with pytest.raises(SparseCircuitsError, match="target has shape"):
        transcoder.loss(x, torch.randn(4, 12))


def test_config_errors() -> None:
    with pytest.raises(SparseCircuitsError, match="unknown dictionary architecture"):
        DictionaryConfig(architecture="nope", d_in=4, d_sae=8)
    with pytest.raises(SparseCircuitsError, match="d_out must equal"):
        DictionaryConfig(kind="sae", d_in=4, d_sae=8, d_out=5)
    with pytest.raises(SparseCircuitsError, match="k must be"):
        DictionaryConfig(d_in=4, d_sae=8, k=9)
    cfg = DictionaryConfig(d_in=10, d_sae=40, hook_in="h")
    assert (cfg.d_out, cfg.hook_out, cfg.aux_k, cfg.decoder_norm, cfg.recon_loss) == (
        10,
        "h",
        5,
        "unit",
        "fvu",
    )
    assert DictionaryConfig(architecture="relu", d_in=4, d_sae=8).decoder_norm == "free"


def test_topk_keeps_exactly_k_nonzeros(gen: torch.Generator) -> None:
    dictionary = build_dictionary("topk", k=5)
    with torch.no_grad():
        dictionary.b_enc.fill_(10.0)  # every pre-activation positive, so exactly k survive the ReLU
    acts = dictionary.encode(torch.randn(50, 12, generator=gen))
    assert bool(((acts != 0).sum(dim=1) == 5).all())


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparse_path_equals_dense_path(kind: str, gen: torch.Generator) -> None:
    x = torch.randn(40, 12, generator=gen)
    target = torch.randn(40, 12, generator=gen) if kind != "sae" else None
    dead_mask = torch.arange(48) % 4 == 0
    results = []
    for sparse in (True, False):
        dictionary = build_dictionary("topk", kind, d_out=12 if kind != "sae" else None)
        randomize_parameters(dictionary)
        with contextlib.nullcontext() if sparse else kernels.dense_reference():
            loss, parts = dictionary.loss(x, target, dead_mask=dead_mask)
            loss.backward()
        results.append((dictionary, loss, parts))
    (sparse_dict, sparse_loss, sparse_parts), (dense_dict, dense_loss, dense_parts) = results
    assert float(sparse_parts["aux"]) > 0
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(sparse_parts["fired_counts"], dense_parts["fired_counts"])
    for (name, sparse_param), dense_param in zip(
        sparse_dict.named_parameters(), dense_dict.parameters(), strict=True
    ):
        assert sparse_param.grad is not None, name
        scale = dense_param.grad.abs().max().clamp_min(1e-12)
        assert float((sparse_param.grad - dense_param.grad).abs().max() / scale) <= 1e-5, name


def test_relu_l1_is_weighted_by_decoder_norms(gen: torch.Generator) -> None:
    dictionary = build_dictionary("relu", l1_coefficient=0.5)
    randomize_parameters(dictionary)
    x = torch.randn(20, 12, generator=gen)
    _, parts = dictionary.loss(x)
    acts = dictionary.encode(x)
    expected = (acts * dictionary.W_dec.norm(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(parts["l1"], expected.detach())
    torch.testing.assert_close(parts["sparsity"], 0.5 * expected.detach())
    with torch.no_grad():  # doubling a row's norm doubles its share of the penalty
        dictionary.W_dec.mul_(2.0)
    _, doubled = dictionary.loss(x)
    torch.testing.assert_close(doubled["l1"], 2 * parts["l1"])
    mse = ((dictionary(x).out - x) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(doubled["loss"], (mse + doubled["sparsity"]).detach())


def test_decoder_normalisation_and_parallel_grad_removal(gen: torch.Generator) -> None:
    dictionary = build_dictionary("topk")
    torch.testing.assert_close(dictionary.W_dec.norm(dim=1), torch.ones(48))
    randomize_parameters(dictionary)
    x = torch.randn(30, 12, generator=gen)
    loss, _ = dictionary.loss(x)
    loss.backward()
    before = dictionary.W_dec.grad.clone()
    dictionary.before_optimizer_step()
    unit = dictionary.W_dec / dictionary.W_dec.norm(dim=1, keepdim=True)
    assert (
        float((before * unit.detach()).sum(dim=1).abs().max()) > 1e-4
    )  # there was something to remove
    assert float((dictionary.W_dec.grad * unit.detach()).sum(dim=1).abs().max()) < 1e-6
    torch.optim.SGD(dictionary.parameters(), lr=0.1).step()
    dictionary.after_optimizer_step()
    torch.testing.assert_close(dictionary.W_dec.norm(dim=1), torch.ones(48))


def test_relu_decoder_norms_stay_free(gen: torch.Generator) -> None:
    dictionary = build_dictionary("relu")
    randomize_parameters(dictionary)
    norms = dictionary.W_dec.norm(dim=1).clone()
    dictionary.after_optimizer_step()
    assert torch.equal(dictionary.W_dec.norm(dim=1), norms)


def test_auxk_zero_without_dead_and_positive_with_dead(gen: torch.Generator) -> None:
    dictionary = build_dictionary("topk")
    randomize_parameters(dictionary)
    x = torch.randn(30, 12, generator=gen)
    _, none_given = dictionary.loss(x)
    _, none_dead = dictionary.loss(x, dead_mask=torch.zeros(48, dtype=torch.bool))
    assert float(none_given["aux"]) == 0.0 and float(none_dead["aux"]) == 0.0
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:20] = True
    with torch.no_grad():
        dictionary.b_enc[:20] += 5.0  # make sure dead latents have positive pre-activations
    loss, with_dead = dictionary.loss(x, dead_mask=dead)
    assert float(with_dead["aux"]) > 0 and int(with_dead["n_dead"]) == 20
    loss.backward()
    assert float(dictionary.W_enc.grad[:, :20].abs().sum()) > 0  # AuxK trains dead encoders too


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "abstopk"])
def test_auxk_coefficient_zero_skips_the_aux_selection(
    architecture: str, gen: torch.Generator
) -> None:
    """With `aux_k_coefficient` 0 no AuxK latents are selected (the loss would weight them by
    zero), and the gradients are those of the same loss without a dead mask."""
    x = torch.randn(30, 12, generator=gen)
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:20] = True
    grads = []
    for coefficient, mask in ((0.0, dead), (0.0, None), (1 / 32, dead)):
        torch.manual_seed(0)
        dictionary = build_dictionary(architecture, aux_k_coefficient=coefficient)
        randomize_parameters(dictionary)
        assert (dictionary.forward(x, dead_mask=mask).aux_values is None) == (coefficient == 0)
        loss, parts = dictionary.loss(x, dead_mask=mask)
        loss.backward()
        grads.append([p.grad.clone() for p in dictionary.parameters() if p.grad is not None])
        assert (float(parts["aux"]) == 0.0) == (coefficient == 0)
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))


def test_init_biases_from_data(gen: torch.Generator) -> None:
    transcoder = build_dictionary("topk", "transcoder", d_out=9)
    x = torch.randn(200, 12, generator=gen) + 3.0
    y = torch.randn(200, 9, generator=gen) - 2.0
    transcoder.init_biases_from_data(x, y)
    torch.testing.assert_close(transcoder.b_in.detach(), x.mean(0))
    torch.testing.assert_close(transcoder.b_dec.detach(), y.mean(0))
    transcoder.init_biases_from_data(x, y, geometric_median=True)
    torch.testing.assert_close(transcoder.b_in.detach(), geometric_median(x))


def test_geometric_median_resists_outliers(gen: torch.Generator) -> None:
    points = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    points[:5] += 1000.0
    median = geometric_median(points, n_iter=200)
    assert float(median.norm()) < 0.5 < float(points.mean(0).norm())
    # Weiszfeld's fixed point: the unit vectors from the median to the points sum to ~zero
    directions = (points - median) / (points - median).norm(dim=1, keepdim=True)
    assert float(directions.sum(0).norm()) < 1e-3 * len(points)


def test_init_is_seeded_and_sae_encoder_is_decoder_transpose() -> None:
    a, b = build_dictionary("topk", seed=3), build_dictionary("topk", seed=3)
    assert torch.equal(a.W_dec, b.W_dec)
    assert not torch.equal(a.W_dec, build_dictionary("topk", seed=4).W_dec)
    assert torch.equal(a.W_enc, a.W_dec.T)
    relu = build_dictionary("relu")
    torch.testing.assert_close(relu.W_dec.norm(dim=1), torch.full((48,), 0.1))


def test_make_dictionary_and_dtype() -> None:
    cfg = DictionaryConfig(
        architecture="relu", kind="transcoder", d_in=4, d_sae=8, d_out=6, dtype="float64"
    )
    transcoder = make(cfg)
    assert isinstance(transcoder, Dictionary) and transcoder.W_dec.dtype == torch.float64
    assert transcoder.W_skip is None and build_dictionary(
        "relu", "skip_transcoder"
    ).W_skip.shape == (12, 12)
    clt_cfg = DictionaryConfig(
        architecture="relu",
        kind="clt",
        d_in=4,
        d_sae=8,
        n_layers=2,
        hook_in="blocks.{layer}.a",
        hook_out="blocks.{layer}.b",
    )
    assert isinstance(make(clt_cfg), CrossLayerTranscoder)
