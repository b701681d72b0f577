"""Phase-2 activation families and architectures: property tests against their definitions."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    DictionaryConfig,
    epsilon_lbo,
    load,
    make,
    save_dictionary,
)
from sparsecircuits.dictionaries.activations.mp import matching_pursuit
from sparsecircuits.dictionaries.activations.topafa import afa_choose_k
from sparsecircuits.errors import SparseCircuitsError
from testkit import copy_one_layer_clt, torch_threads

ALL_SAE_ARCHITECTURES = ["relu", "topk", "batchtopk", "jumprelu", "abstopk", "topafa", "mp"]


def identity_dictionary(architecture: str, m: int = 6, **kw):  # type: ignore[no-untyped-def]
    """An SAE whose pre-activations equal its input: W_enc = I, every bias zero."""
    cfg = DictionaryConfig(architecture=architecture, d_in=m, d_sae=m, hook_in="h", **kw)
    dictionary = make(cfg)
    with torch.no_grad():
        dictionary.W_enc.copy_(torch.eye(m))
        dictionary.W_dec.copy_(torch.eye(m))
    return dictionary


# ---------------------------------------------------------------- proximal maps (seed-methods §2.1)
GRID = torch.arange(-4000, 4001, dtype=torch.float64) / 1000  # step 1e-3, contains exactly 0


def brute_prox(u: torch.Tensor, penalty, k: int | None = None, nonneg: bool = True) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """argmin_z ½||z - u||² + Σ penalty(z_i) over the grid, optionally subject to ||z||_0 <= k."""
    grid = GRID[GRID >= 0] if nonneg else GRID
    cost = 0.5 * (grid[None, :] - u[:, None].double()) ** 2 + penalty(grid)[None, :]  # [m, grid]
    if k is None:
        return grid[cost.argmin(dim=1)]
    zero_cost = 0.5 * u.double() ** 2
    best_total, best = math.inf, None
    for size in range(k + 1):
        for support in itertools.combinations(range(len(u)), size):
            z = torch.zeros(len(u), dtype=torch.float64)
            total = zero_cost.sum()
            for i in support:
                j = cost[i].argmin()
                z[i] = grid[j]
                total = total - zero_cost[i] + cost[i, j]
            if total < best_total:
                best_total, best = float(total), z
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(4))
def test_activations_are_proximal_maps(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(6, generator=gen, dtype=torch.float64).float() * 1.5
    lam = 0.3
    relu = identity_dictionary("relu")
    with torch.no_grad():
        relu.b_enc.fill_(-lam)  # λ is absorbed into the encoder bias
    expected = brute_prox(u, lambda z: lam * z.abs())
    torch.testing.assert_close(relu.encode(u[None])[0].double(), expected, atol=2e-3, rtol=0)

    theta = math.sqrt(2 * lam)
    u_jump = torch.where((u.abs() - theta).abs() < 0.05, u * 1.2, u)  # keep clear of the tie at θ
    jump = identity_dictionary("jumprelu")
    with torch.no_grad():
        jump.activation.log_threshold.fill_(math.log(theta))
    expected = brute_prox(u_jump, lambda z: lam * (z != 0).double())
    torch.testing.assert_close(jump.encode(u_jump[None])[0].double(), expected, atol=2e-3, rtol=0)

    for architecture, nonneg in (("topk", True), ("abstopk", False)):
        dictionary = identity_dictionary(architecture, k=2)
        expected = brute_prox(u, lambda z: torch.zeros_like(z), k=2, nonneg=nonneg)
        torch.testing.assert_close(
            dictionary.encode(u[None])[0].double(), expected, atol=2e-3, rtol=0
        )


# ---------------------------------------------------------------- AbsTopK
def test_abstopk_keeps_k_signed_values(gen: torch.Generator) -> None:
    dictionary = identity_dictionary("abstopk", m=20, k=5)
    x = torch.randn(40, 20, generator=gen)
    acts = dictionary.encode(x)
    assert bool(((acts != 0).sum(dim=1) == 5).all())
    assert bool((acts < 0).any()) and bool((acts > 0).any())
    kept = acts != 0
    assert torch.equal(acts[kept], x[kept])  # sign and value kept
    smallest_kept = torch.where(kept, x.abs(), torch.inf).min(dim=1).values
    largest_dropped = torch.where(kept, -torch.inf, x.abs()).max(dim=1).values
    assert bool((smallest_kept >= largest_dropped).all())


def test_abstopk_signed_auxk(gen: torch.Generator) -> None:
    dictionary = identity_dictionary("abstopk", m=20, k=3, aux_k=4)
    x = -torch.rand(8, 20, generator=gen) - 0.5  # only negative pre-activations
    dead = torch.zeros(20, dtype=torch.bool)
    dead[10:] = True
    fo = dictionary(x, dead_mask=dead)
    assert fo.aux_values is not None and bool((fo.aux_values < 0).all())
    _, parts = dictionary.loss(x, dead_mask=dead)
    assert float(parts["aux"]) > 0


# ---------------------------------------------------------------- matching pursuit
def test_matching_pursuit_residuals(gen: torch.Generator) -> None:
    atoms = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    x = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    codes, residual, chosen, norms = matching_pursuit(x, atoms, 12)
    all_norms = torch.cat([x.norm(dim=1)[None], norms])
    assert bool((all_norms[1:] <= all_norms[:-1] + 1e-12).all())
    torch.testing.assert_close(residual, x - codes @ atoms)
    # re-run step by step: each new residual is orthogonal to the atom just chosen
    r = x.clone()
    for index in chosen:
        alpha = (r * atoms[index]).sum(dim=1, keepdim=True).clamp_min(0)
        r = r - alpha * atoms[index]
        assert float((r * atoms[index]).sum(dim=1).abs().max()) < 1e-12


def test_matching_pursuit_atom_gradient_repeats_bit_for_bit_on_two_threads(
    gen: torch.Generator,
) -> None:
    """Every step gathers one atom per row; the atoms' gradient (4,000 rows x 24 wide, more than
    torch's grain of 32,768) has the same bits on every run, which a `atoms[index]` gather, whose
    backward adds with atomics across threads, does not give."""
    atoms = torch.randn(64, 24, generator=gen)
    atoms = (atoms / atoms.norm(dim=1, keepdim=True)).requires_grad_()
    x = torch.randn(4000, 24, generator=gen)
    grads = []
    with torch_threads(2):
        for _ in range(5):
            atoms.grad = None
            codes, residual, _, _ = matching_pursuit(x, atoms, 4)
            (residual.pow(2).sum() + codes.sum()).backward()
            grads.append(atoms.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_mp_dictionary_train_and_inference_modes(gen: torch.Generator) -> None:
    cfg = DictionaryConfig(
        architecture="mp", d_in=8, d_sae=32, k=3, hook_in="h", mp_residual_threshold=1e-3
    )
    mp = make(cfg)
    assert mp.W_enc is None and not mp.b_in.requires_grad
    x = torch.randn(20, 8, generator=gen)
    mp.init_biases_from_data(x)
    assert float(mp.b_in.detach().abs().max()) == 0.0 and float(mp.b_dec.detach().abs().max()) > 0
    trained = mp(x)
    assert bool(((trained.feature_acts != 0).sum(dim=1) <= 3).all())
    mp.eval()
    adaptive = mp(x)
    err_train = (trained.out - x).norm(dim=1).detach()
    err_eval = (adaptive.out - x).norm(dim=1).detach()
    assert bool((err_eval <= err_train + 1e-5).all()) and float(err_eval.mean()) < float(
        err_train.mean()
    )
    mp.train()
    loss, _ = mp.loss(x)
    loss.backward()
    assert mp.W_dec.grad is not None and float(mp.W_dec.grad.abs().sum()) > 0


# ---------------------------------------------------------------- top-AFA
def test_topafa_chosen_k_minimises_criterion(gen: torch.Generator) -> None:
    contributions = torch.rand(50, 12, generator=gen) ** 3
    target = torch.rand(50, generator=gen) * 2
    k, indices, keep = afa_choose_k(contributions, target, 12)
    sorted_s = contributions.sort(dim=1, descending=True).values
    for row in range(50):
        criteria = [
            abs(math.sqrt(float(sorted_s[row, :j].sum())) - float(target[row]))
            for j in range(1, 13)
        ]
        best = min(criteria)
        assert abs(criteria[int(k[row]) - 1] - best) < 1e-6
        assert int(keep[row].sum()) == int(k[row])


def test_topafa_dictionary_uses_norm_matching_k(gen: torch.Generator) -> None:
    cfg = DictionaryConfig(architecture="topafa", d_in=10, d_sae=40, k=40, hook_in="h")
    dictionary = make(cfg)
    x = torch.randn(30, 10, generator=gen)
    fo = dictionary(x)
    acts = fo.feature_acts
    a = ((x - dictionary.b_in) @ dictionary.W_enc + dictionary.b_enc).relu()
    s = (a * dictionary.W_dec.norm(dim=1)) ** 2
    expected_k, _, _ = afa_choose_k(s, x.norm(dim=1), 40)
    assert torch.equal((acts != 0).sum(dim=1), expected_k)
    loss, parts = dictionary.loss(x)
    assert float(parts["sparsity"]) > 0 and loss.requires_grad
    with pytest.raises(SparseCircuitsError, match="SAEs only"):
        DictionaryConfig(architecture="topafa", kind="transcoder", d_in=4, d_sae=8, k=2)


def test_epsilon_lbo_matches_definition(gen: torch.Generator) -> None:
    dictionary = identity_dictionary("relu", m=6)
    x = torch.rand(10, 6, generator=gen) + 0.1  # positive: the identity SAE reproduces it exactly
    assert float(epsilon_lbo(dictionary, x).abs().max()) < 1e-6
    with torch.no_grad():
        dictionary.W_dec.mul_(2.0)
    f_tilde_sq = (2 * x).pow(2).sum(dim=1)
    expected = (x.pow(2).sum(dim=1) - f_tilde_sq).abs() / (5 * f_tilde_sq)
    torch.testing.assert_close(epsilon_lbo(dictionary, x), expected)


# ---------------------------------------------------------------- BatchTopK
def test_batchtopk_train_batch_k_then_threshold(gen: torch.Generator) -> None:
    cfg = DictionaryConfig(
        architecture="batchtopk", d_in=10, d_sae=40, k=3, hook_in="h", threshold_lr=0.5
    )
    dictionary = make(cfg)
    with torch.no_grad():
        dictionary.b_enc.fill_(5.0)  # all pre-activations positive
    x = torch.randn(16, 10, generator=gen)
    acts = dictionary.encode(x)
    per_token = (acts != 0).sum(dim=1)
    assert int(per_token.sum()) == 3 * 16 and int(per_token.max()) != int(per_token.min())
    assert float(dictionary.activation.threshold) == 0.0
    dictionary.loss(x)
    min_kept = float(acts.detach()[acts.detach() > 0].min())
    # The first observation starts the EMA (no weight left on the initial zero) ...
    assert float(dictionary.activation.threshold) == pytest.approx(min_kept)
    x2 = torch.randn(16, 10, generator=gen)
    acts2 = dictionary.encode(x2).detach()
    dictionary.loss(x2)
    min_kept2 = float(acts2[acts2 > 0].min())
    # ... later ones move it by threshold_lr.
    assert float(dictionary.activation.threshold) == pytest.approx(0.5 * min_kept + 0.5 * min_kept2)
    dictionary.eval()
    pre = (x - dictionary.b_in) @ dictionary.W_enc + dictionary.b_enc
    expected = pre.relu() * (pre > dictionary.activation.threshold.float())
    torch.testing.assert_close(dictionary.encode(x), expected)


# ---------------------------------------------------------------- JumpReLU STE
@pytest.mark.parametrize("architecture", ["relu", "jumprelu"])
def test_init_l0_sets_the_starting_l0_from_data_quantiles(architecture, gen):  # type: ignore[no-untyped-def]
    cfg = DictionaryConfig(architecture=architecture, d_in=16, d_sae=64, hook_in="h", init_l0=8.0)
    dictionary = make(cfg)
    x = torch.randn(2000, 16, generator=gen) * 3 + 1
    dictionary.init_biases_from_data(x)
    l0 = float((dictionary.encode(x) != 0).sum(1).float().mean())
    assert l0 == pytest.approx(8.0, rel=0.05)
    plain = make(replace(cfg, init_l0=0.0))
    plain.init_biases_from_data(x)
    assert float((plain.encode(x) != 0).sum(1).float().mean()) > 16
    with pytest.raises(SparseCircuitsError, match="init_l0"):
        replace(cfg, init_l0=-1.0)


def test_jumprelu_threshold_gradients_follow_rectangle_kernel() -> None:
    cfg = DictionaryConfig(
        architecture="jumprelu",
        d_in=3,
        d_sae=3,
        hook_in="h",
        jumprelu_bandwidth=0.1,
        jumprelu_init_threshold=0.5,
        l0_coefficient=1.0,
    )
    dictionary = identity_dictionary(
        "jumprelu", m=3, jumprelu_bandwidth=0.1, jumprelu_init_threshold=0.5
    )
    assert dictionary.cfg.jumprelu_bandwidth == cfg.jumprelu_bandwidth
    u = torch.tensor([[0.52, 0.9, 0.2]])  # latent 0 inside the kernel window, 1 and 2 outside
    fo = dictionary(u)
    assert torch.equal(fo.feature_acts, torch.tensor([[0.52, 0.9, 0.0]]))
    fo.feature_acts.sum().backward()
    grad = dictionary.activation.log_threshold.grad
    # d f/d θ = -(θ/ε) K((u-θ)/ε), times dθ/dlogθ = θ
    torch.testing.assert_close(grad, torch.tensor([-(0.5 / 0.1) * 0.5, 0.0, 0.0]))
    dictionary.zero_grad()
    _, parts = dictionary.loss(u)
    assert float(parts["sparsity"]) == pytest.approx(2.0)  # step L0 counts the two active latents


# ---------------------------------------------------------------- cross-layer transcoder
@pytest.mark.parametrize(
    ("architecture", "sparsity"),
    [("relu", "step"), ("jumprelu", "tanh"), ("jumprelu", "step"), ("topk", "step")],
)
def test_clt_with_one_layer_equals_a_transcoder(
    architecture: str, sparsity: str, gen: torch.Generator
) -> None:  # type: ignore[no-untyped-def]
    common = {
        "architecture": architecture,
        "d_in": 8,
        "d_sae": 24,
        "d_out": 6,
        "k": 3,
        "jumprelu_sparsity": sparsity,
        "l1_coefficient": 0.1,
        "l0_coefficient": 0.1,
    }
    clt = make(
        DictionaryConfig(
            kind="clt",
            n_layers=1,
            hook_in="blocks.{layer}.hook_mlp_in",
            hook_out="blocks.{layer}.hook_mlp_out",
            **common,
        )
    )
    transcoder = make(
        DictionaryConfig(
            kind="transcoder",
            hook_in="blocks.0.hook_mlp_in",
            hook_out="blocks.0.hook_mlp_out",
            **common,
        )
    )
    assert isinstance(clt, CrossLayerTranscoder)
    with torch.no_grad():
        for param in clt.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        if architecture == "jumprelu":
            for activation in clt.activations:
                activation.log_threshold.fill_(-1.5)
    copy_one_layer_clt(clt, transcoder)
    batch = {
        "blocks.0.hook_mlp_in": torch.randn(20, 8, generator=gen),
        "blocks.0.hook_mlp_out": torch.randn(20, 6, generator=gen),
    }
    x, target = clt.inputs_from(batch)
    tx, ttarget = transcoder.inputs_from(batch)
    clt_loss, clt_parts = clt.loss(x, target)
    tc_loss, tc_parts = transcoder.loss(tx, ttarget)
    torch.testing.assert_close(clt(x).out[:, 0], transcoder(tx).out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clt_loss, tc_loss, rtol=1e-5, atol=1e-5)
    for key in ("mse", "fvu", "l0", "l1", "sparsity"):
        torch.testing.assert_close(clt_parts[key], tc_parts[key], rtol=1e-5, atol=1e-5)
    clt_loss.backward()
    tc_loss.backward()
    torch.testing.assert_close(clt.W_enc.grad[0], transcoder.W_enc.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clt.W_dec[0].grad[:, 0], transcoder.W_dec.grad, rtol=1e-4, atol=1e-5)


def test_clt_is_causal_and_uses_concatenated_norms(gen: torch.Generator) -> None:
    cfg = DictionaryConfig(
        architecture="jumprelu",
        kind="clt",
        n_layers=3,
        d_in=5,
        d_sae=7,
        d_out=4,
        hook_in="blocks.{layer}.ln2.hook_normalized",
        hook_out="blocks.{layer}.hook_mlp_out",
    )
    clt = make(cfg)
    assert [tuple(w.shape) for w in clt.W_dec] == [(7, 3, 4), (7, 2, 4), (7, 1, 4)]
    assert clt.hook_names()[0] == "blocks.0.ln2.hook_normalized" and len(clt.hook_names()) == 6
    acts = torch.zeros(2, 3, 7)
    acts[:, 2] = torch.rand(2, 7, generator=gen)  # only layer-2 latents active
    out = clt.decode(acts)
    torch.testing.assert_close(
        out[:, :2], clt.b_dec[:2].expand(2, -1, -1)
    )  # cannot write backwards
    norms = clt.decoder_norms()
    torch.testing.assert_close(norms[0], clt.W_dec[0].flatten(1).norm(dim=1))
    x = torch.randn(10, 3, 5, generator=gen)
    target = torch.randn(10, 3, 4, generator=gen)
    loss, parts = clt.loss(x, target, dead_mask=torch.zeros(3, 7, dtype=torch.bool))
    assert parts["fired_counts"].shape == (3, 7)
    loss.backward()
    with pytest.raises(SparseCircuitsError, match="tokens, 3, 5"):
        clt.loss(torch.randn(10, 5), target)


def test_clt_unit_decoder_norm(gen: torch.Generator) -> None:
    cfg = DictionaryConfig(
        architecture="topk",
        kind="clt",
        n_layers=2,
        d_in=5,
        d_sae=7,
        k=2,
        hook_in="a{layer}",
        hook_out="b{layer}",
    )
    clt = make(cfg)
    torch.testing.assert_close(clt.decoder_norms(), torch.ones(2, 7))
    loss, _ = clt.loss(torch.randn(10, 2, 5, generator=gen), torch.randn(10, 2, 5, generator=gen))
    loss.backward()
    clt.before_optimizer_step()
    for W_dec in clt.W_dec:
        flat, grad = W_dec.detach().flatten(1), W_dec.grad.flatten(1)
        assert float((flat * grad).sum(dim=1).abs().max()) < 1e-6
    torch.optim.SGD(clt.parameters(), lr=0.5).step()
    clt.after_optimizer_step()
    torch.testing.assert_close(clt.decoder_norms().detach(), torch.ones(2, 7))


# ---------------------------------------------------------------- one trainer loop for every family
VARIANTS = [(a, "sae") for a in ALL_SAE_ARCHITECTURES] + [
    ("jumprelu", "transcoder"),
    ("batchtopk", "skip_transcoder"),
    ("abstopk", "transcoder"),
    ("jumprelu", "clt"),
    ("topk", "clt"),
    ("abstopk", "clt"),
]


def _variant(architecture: str, kind: str):  # type: ignore[no-untyped-def]
    extra = (
        {
            "n_layers": 2,
            "hook_in": "blocks.{layer}.hook_mlp_in",
            "hook_out": "blocks.{layer}.hook_mlp_out",
        }
        if kind == "clt"
        else (
            {"hook_in": "blocks.0.hook_mlp_in", "hook_out": "blocks.0.hook_mlp_out"}
            if kind != "sae"
            else {"hook_in": "blocks.0.hook_resid_post"}
        )
    )
    return make(
        DictionaryConfig(
            architecture=architecture,
            kind=kind,
            d_in=8,
            d_sae=32,
            k=3,
            l0_coefficient=1e-3,
            l1_coefficient=1e-3,
            **extra,
        )
    )


@pytest.mark.parametrize(("architecture", "kind"), VARIANTS)
def test_generic_training_loop_reduces_loss(architecture: str, kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 8, generator=gen)
    hooks = [
        "blocks.0.hook_resid_post",
        "blocks.0.hook_mlp_in",
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_in",
        "blocks.1.hook_mlp_out",
    ]
    dictionary = _variant(architecture, kind)
    batches = []
    for _ in range(2):
        codes = torch.rand(64, 4, generator=gen) * (torch.rand(64, 4, generator=gen) < 0.5)
        batches.append({hook: codes @ basis * (1 + i) + 0.5 for i, hook in enumerate(hooks)})
    x0, t0 = dictionary.inputs_from(batches[0])
    dictionary.init_biases_from_data(x0, t0)
    optimizer = torch.optim.Adam(dictionary.parameters(), lr=1e-2)
    shape = (2, 32) if kind == "clt" else (32,)
    losses = []
    for step_index in range(40):
        x, target = dictionary.inputs_from(batches[step_index % 2])
        loss, parts = dictionary.loss(x, target, dead_mask=torch.zeros(shape, dtype=torch.bool))
        optimizer.zero_grad()
        loss.backward()
        dictionary.before_optimizer_step()
        optimizer.step()
        dictionary.after_optimizer_step()
        losses.append(float(parts["loss"]))
        assert parts["fired_counts"].shape == shape
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) < sum(losses[:4])


@pytest.mark.parametrize(("architecture", "kind"), VARIANTS)
def test_variant_save_load_round_trip(architecture: str, kind: str, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    dictionary = _variant(architecture, kind)
    with torch.no_grad():
        for param in dictionary.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    if architecture == "batchtopk":
        dictionary.activation.threshold.fill_(0.123456789)
    save_dictionary(dictionary, tmp_path / "a")
    loaded = load(tmp_path / "a")
    assert type(loaded) is type(dictionary) and loaded.cfg == dictionary.cfg
    for (name, original), restored in zip(
        dictionary.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(original, restored), name
    x = torch.randn(6, 2, 8, generator=gen) if kind == "clt" else torch.randn(6, 8, generator=gen)
    dictionary.eval()
    loaded.eval()
    assert torch.equal(dictionary(x).out, loaded(x).out)
    save_dictionary(loaded, tmp_path / "b")
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
