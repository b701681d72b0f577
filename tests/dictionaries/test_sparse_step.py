"""Row-sparse ReLU / JumpReLU steps equal the dense step: outputs, loss parts and every gradient,
from L0 1 to d_sae/4 and in the dense early phase; the automatic switch and the trainer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, make, sparse_step
from sparsecircuits.dictionaries.activations.jumprelu import _rectangle
from sparsecircuits.training import TrainConfig, Trainer
from testkit import RepeatBatch, torch_threads

D_IN, D_SAE, D_OUT = 24, 256, 20


@pytest.fixture
def step_mode() -> Iterator[Any]:
    """Set the step mode for a test; "auto" again afterwards."""
    yield sparse_step.set_step_mode
    sparse_step.set_step_mode("auto")


def _data(n: int, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(7)
    mix = torch.randn(D_IN, D_IN, generator=gen) / D_IN**0.5
    x = torch.randn(n, D_IN, generator=gen) @ mix + 0.3
    if kind == "sae":
        return x, None
    return x, torch.tanh(x @ torch.randn(D_IN, D_OUT, generator=gen))


def _dictionary(arch: str, kind: str, init_l0: float, x: torch.Tensor, target: Any, **extra: Any):  # type: ignore[no-untyped-def]
    cfg = DictionaryConfig(
        architecture=arch,
        kind=kind,
        d_in=D_IN,
        d_sae=D_SAE,
        d_out=None if kind == "sae" else D_OUT,
        hook_in="in",
        hook_out=None if kind == "sae" else "out",
        init_l0=init_l0,
        seed=3,
        **extra,
    )
    dictionary = make(cfg)
    dictionary.init_biases_from_data(x, target)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():  # decoder norms away from 1 so the norm-weighted penalties matter
        dictionary.W_dec.mul_(0.5 + torch.rand(D_SAE, 1, generator=gen))
        if dictionary.W_skip is not None:
            dictionary.W_skip.copy_(0.1 * torch.randn(dictionary.W_skip.shape, generator=gen))
    return dictionary


def _step(dictionary, x, target, dead_mask=None):  # type: ignore[no-untyped-def]
    """`(out, loss, parts, grads)` of one loss + backward."""
    dictionary.zero_grad(set_to_none=True)
    out = dictionary.forward(x, dead_mask=dead_mask).out.detach()
    loss, parts = dictionary.loss(x, target, dead_mask=dead_mask)
    loss.backward()
    grads = {
        name: p.grad.clone() for name, p in dictionary.named_parameters() if p.grad is not None
    }
    return out, loss.detach(), parts, grads


def _assert_relative(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    error = float((actual - expected).abs().max() / scale)
    assert error <= 1e-5, f"{what}: relative error {error:.2e}"


def _compare(arch: str, kind: str, init_l0: float, n: int, step_mode, **extra: Any) -> float:  # type: ignore[no-untyped-def]
    """Run the dense and the sparse step on the same dictionary and batch; return the L0."""
    x, target = _data(n, kind)
    dictionary = _dictionary(arch, kind, init_l0, x, target, **extra)
    results = {}
    for mode in ("dense", "sparse"):
        step_mode(mode)
        results[mode] = _step(dictionary, x, target)
        assert dictionary.activation.step_mode == mode
    (out_d, loss_d, parts_d, grads_d), (out_s, loss_s, parts_s, grads_s) = (
        results["dense"],
        results["sparse"],
    )
    _assert_relative(out_s, out_d, "out")
    _assert_relative(loss_s, loss_d, "loss")
    assert float(parts_s["l0"]) == float(parts_d["l0"])
    assert torch.equal(parts_s["fired_counts"], parts_d["fired_counts"])
    for part in ("mse", "fvu", "l1", "sparsity"):
        _assert_relative(parts_s[part], parts_d[part], part)
    assert grads_s.keys() == grads_d.keys()
    for name, grad in grads_d.items():
        _assert_relative(grads_s[name], grad, f"grad {name}")
    return float(parts_d["l0"])


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
@pytest.mark.parametrize("init_l0", [1.0, 8.0, 64.0, 0.0])  # 0: plain init, half the latents on
def test_sparse_step_equals_dense_step(arch: str, kind: str, init_l0: float, step_mode) -> None:  # type: ignore[no-untyped-def]
    l0 = _compare(arch, kind, init_l0, 200, step_mode)
    if init_l0 == 0:
        assert l0 > D_SAE / 4  # the dense early phase
    else:
        assert 0.5 * init_l0 <= l0 <= 2 * init_l0


@pytest.mark.parametrize("sparsity", ["step", "tanh"])
def test_jumprelu_window_entries_carry_the_threshold_gradient(sparsity: str, step_mode) -> None:  # type: ignore[no-untyped-def]
    """Inactive entries inside the rectangle window get threshold gradient on the dense path;
    the sparse step keeps them (the comparison fails without them)."""
    x, target = _data(200, "transcoder")
    dictionary = _dictionary("jumprelu", "transcoder", 16.0, x, target, jumprelu_sparsity=sparsity)
    with torch.no_grad():
        pre = (x - dictionary.b_in) @ dictionary.W_enc + dictionary.b_enc
        z = (
            pre - dictionary.activation.threshold
        ) / dictionary.activation.params.jumprelu_bandwidth
        inactive_in_window = (_rectangle(z) > 0) & (pre <= dictionary.activation.threshold)
    assert int(inactive_in_window.sum()) > 10
    _compare("jumprelu", "transcoder", 16.0, 200, step_mode, jumprelu_sparsity=sparsity)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_sparse_step_over_several_encoder_chunks(
    arch: str, step_mode, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """1,500 rows: the probe's 256 rows, then chunks of 300 rows (the buffer cap lowered to 300
    rows' worth), the last one shorter."""
    monkeypatch.setattr(sparse_step, "_CHUNK_BYTES", 4 * D_SAE * 300)
    assert sparse_step.chunk_rows(1500 - sparse_step.PROBE_ROWS, D_SAE) == 300
    _compare(arch, "transcoder", 8.0, 1500, step_mode)


def test_chunk_rows_fill_the_buffer_cap() -> None:
    """A whole 4096-token batch at d_sae 4k, 2048 rows at 16k, 512 at 65k, never under 256."""
    rows = [sparse_step.chunk_rows(4096, d) for d in (4096, 16384, 65536, 2**20)]
    assert rows == [4096, 2048, 512, 256]
    assert sparse_step.chunk_rows(100, 4096) == 100


def test_input_gradient_matches_dense(step_mode) -> None:  # type: ignore[no-untyped-def]
    x, target = _data(100, "transcoder")
    dictionary = _dictionary("relu", "transcoder", 8.0, x, target)
    grads = {}
    for mode in ("dense", "sparse"):
        step_mode(mode)
        leaf = x.clone().requires_grad_(True)
        loss, _ = dictionary.loss(leaf, target)
        (grads[mode],) = torch.autograd.grad(loss, leaf)
    _assert_relative(grads["sparse"], grads["dense"], "grad x")


@pytest.mark.parametrize(
    ("scale", "bandwidth"),
    [
        (2.0, 0.05),
        (1.0, 1e-3),
        # the window's lower edge near zero, where floats crowd: the wide bracket
        (0.0, 0.05),
        # ε under a quarter of θ's float spacing: θ - 2ε rounds back to θ
        (1e4, 1e-6),
    ],
)
def test_jumprelu_cutoffs_keep_exactly_the_active_and_window_entries(
    scale: float, bandwidth: float
) -> None:
    gen = torch.Generator().manual_seed(0)
    threshold = torch.rand(64, generator=gen) * scale + 1e-3
    threshold[:4] = torch.tensor([bandwidth / 2, 0.0, -bandwidth, 2 * bandwidth])
    cutoff = sparse_step.jumprelu_cutoffs(threshold, bandwidth)
    # floats at and next to every boundary, plus random ones
    edges = torch.stack([threshold - bandwidth / 2, threshold, cutoff])
    near = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1)])
    values = torch.cat([near, threshold + bandwidth * (torch.rand(50, 64, generator=gen) - 0.5)])
    kept = (values > threshold) | (_rectangle((values - threshold) / bandwidth) > 0)
    assert torch.equal(values > cutoff, kept)


def test_auto_mode_switches_on_the_active_fraction(step_mode) -> None:  # type: ignore[no-untyped-def]
    step_mode("auto")
    x, _ = _data(300, "sae")
    early = _dictionary("relu", "sae", 0.0, x, None)
    early.loss(x)
    assert early.activation.step_mode == "dense"
    trained = _dictionary("relu", "sae", 4.0, x, None)
    trained.loss(x)
    assert trained.activation.step_mode == "sparse"
    with torch.no_grad():  # no train step: the plain dense forward, mode untouched
        trained.activation.step_mode = None
        trained.loss(x)
    assert trained.activation.step_mode is None


def test_pre_activation_loss_on_dead_latents_keeps_the_step_dense(step_mode) -> None:  # type: ignore[no-untyped-def]
    step_mode("sparse")
    x, _ = _data(100, "sae")
    dictionary = _dictionary("jumprelu", "sae", 4.0, x, None, pre_act_loss_coefficient=1e-3)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dictionary.loss(x, dead_mask=dead)
    assert dictionary.activation.step_mode == "sparse"  # nothing dead: the term is zero
    dead[::3] = True
    dictionary.loss(x, dead_mask=dead)
    assert dictionary.activation.step_mode == "dense"


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_trainer_sparse_run_equals_dense_run(arch: str, step_mode) -> None:  # type: ignore[no-untyped-def]
    """Four trainer steps (Adam, clipping, dead-latent counter) give the same weights and
    counters in both modes; the metrics say which mode ran."""
    x, target = _data(200, "transcoder")
    runs = {}
    for mode in ("dense", "sparse"):
        step_mode(mode)
        dictionary = _dictionary(arch, "transcoder", 8.0, x, target)
        cfg = TrainConfig(
            total_tokens=800, batch_tokens=200, lr=1e-3, quiet=True, dead_tokens=200, log_every=1
        )
        trainer = Trainer(RepeatBatch({"in": x, "out": target}), {"d": dictionary}, cfg)
        trainer.biases_initialised = True
        result = trainer.train()
        assert result.metrics["d"]["sparse_step"] == float(mode == "sparse")
        runs[mode] = (dictionary.state_dict(), trainer.tokens_since_fired["d"])
    (weights_d, counter_d), (weights_s, counter_s) = runs["dense"], runs["sparse"]
    assert torch.equal(counter_s, counter_d)
    for name, value in weights_d.items():
        torch.testing.assert_close(weights_s[name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_encode_with_autograd_gives_the_dense_feature_acts(arch: str, step_mode) -> None:  # type: ignore[no-untyped-def]
    """`Dictionary.encode` under autograd (e.g. attribution through features) runs the sparse
    path too: the same dense `[n, d_sae]` activations and input gradient."""
    x, target = _data(120, "transcoder")
    dictionary = _dictionary(arch, "transcoder", 8.0, x, target)
    weights = torch.randn(D_SAE, generator=torch.Generator().manual_seed(5))
    results = {}
    for mode in ("dense", "sparse"):
        step_mode(mode)
        leaf = x.clone().requires_grad_(True)
        acts = dictionary.encode(leaf)
        (grad,) = torch.autograd.grad((acts * weights).sum(), leaf)
        results[mode] = (acts.detach(), grad)
        assert dictionary.activation.step_mode == mode
    torch.testing.assert_close(results["sparse"][0], results["dense"][0], rtol=0, atol=0)
    _assert_relative(results["sparse"][1], results["dense"][1], "grad x")


@pytest.mark.parametrize("width", [203, 197, 256])
def test_extract_keeps_exactly_the_entries_above_the_cutoff(width: int) -> None:
    """The kept entries (widths off a multiple of 8 too, one after another so a reused mark
    buffer is exercised) are those of `dot + bias > cutoff` or NaN, by row, latents increasing."""
    gen = torch.Generator().manual_seed(width)
    dot = torch.randn(37, width, generator=gen)
    dot[3, width - 1] = float("nan")
    dot[5, 0] = float("nan")
    bias = 0.1 * torch.randn(width, generator=gen)
    cutoff = 1.0 + 0.5 * torch.rand(width, generator=gen)
    cutoff[width - 1] = -10.0  # the last column is always kept: the padding must not leak
    counts, cols, values = sparse_step._extract(dot, bias, cutoff)
    pre = dot + bias
    keep = (pre > cutoff) | pre.isnan()
    rows, expected_cols = keep.nonzero(as_tuple=True)
    assert torch.equal(counts, keep.sum(1))
    assert torch.equal(cols, expected_cols)
    # bit-equal, NaN included
    assert torch.allclose(values, pre[rows, expected_cols], equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("jumprelu", {}), ("jumprelu", {"jumprelu_sparsity": "tanh"}), ("relu", {})],
)
def test_sparse_step_gradients_are_the_same_bits_on_every_run(
    arch: str, extra: Any, step_mode
) -> None:  # type: ignore[no-untyped-def]
    """The kept entries read per-latent values (thresholds, decoder norms) through a gather whose
    backward adds in index order: indexing `values[cols]` would add them with atomics across
    threads, and the gradients' last bits would change from run to run. 3,000 rows keep more
    entries than torch's grain (32,768), where its threaded accumulation starts."""
    step_mode("sparse")
    x, target = _data(3000, "sae")
    dictionary = _dictionary(arch, "sae", 16.0, x, target, **extra)
    with torch_threads(2):
        first, *others = [_step(dictionary, x, target)[3] for _ in range(6)]
    assert dictionary.activation.step_mode == "sparse"
    for grads in others:
        for name, grad in first.items():
            assert torch.equal(grads[name], grad), f"grad {name} differs between runs"
