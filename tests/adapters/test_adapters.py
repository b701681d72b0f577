"""Transcoder adapters on a tiny GPT-2: no-op start, gradients, the bridging loss against a
hand computation on the plain HF modules, save/load, and the CLI end to end."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecircuits.adapters import (
    LossWeights,
    attached,
    bridging_loss,
    build_backbone,
    make_adapters,
)
from sparsecircuits.adapters.behaviour import Behaviour
from sparsecircuits.cli import main
from sparsecircuits.dictionaries import PerLayerTranscoders, load_transcoders, save_dictionary
from sparsecircuits.models import ModelAdapter, load_model
from sparsecircuits.models.tiny import build_tiny_model, tokenizer_corpus


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Callable[[str], Path]):  # type: ignore[no-untyped-def]
    """(base, reference): the tiny GPT-2 and one with other weights everywhere."""
    base = load_model(tiny_model_dir("gpt2"), device="cpu")
    ref_dir = build_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-ref"), seed=5)
    return base, load_model(ref_dir, device="cpu")


def _randomised(adapters: PerLayerTranscoders, seed: int) -> PerLayerTranscoders:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapters.layers:
            d = adapters[layer]
            d.W_dec.copy_(0.3 * torch.randn(d.W_dec.shape, generator=generator))
            d.b_enc.copy_(0.1 * torch.randn(d.b_enc.shape, generator=generator))
            d.b_dec.copy_(0.05 * torch.randn(d.b_dec.shape, generator=generator))
    return adapters


def _ids(model: ModelAdapter) -> Tensor:
    return model.tokenize(["The cat saw the house in the year 1732", "Mary gave a letter to John"])


def test_fresh_adapters_are_an_exact_no_op(pair) -> None:  # type: ignore[no-untyped-def]
    base, _ = pair
    adapters = make_adapters(base, d_sae=16, seed=0)
    ids = _ids(base)
    with torch.no_grad():
        plain = base(ids)
        with attached(base, adapters) as run:
            adapted = base(ids)
    assert torch.equal(plain, adapted)
    assert all(a.shape == (*ids.shape, 16) for a in run.acts.values())
    assert sorted(run.acts) == list(range(base.n_layers))


def test_target_backbone_is_reference_with_base_mlps(pair) -> None:  # type: ignore[no-untyped-def]
    base, reference = pair
    backbone = build_backbone(base, reference, "target")
    for layer in range(base.n_layers):
        mlp_path = base.spec.mlp
        for (name, p), q, r in zip(
            backbone.blocks[layer].named_parameters(),
            base.blocks[layer].parameters(),
            reference.blocks[layer].parameters(),
            strict=True,
        ):
            expected = q if name.startswith(mlp_path + ".") else r
            assert torch.equal(p, expected), name
    assert build_backbone(base, reference, "base") is base


def test_only_adapter_parameters_get_gradients(pair) -> None:  # type: ignore[no-untyped-def]
    base, reference = pair
    backbone = build_backbone(base, reference, "target")
    adapters = _randomised(make_adapters(backbone, d_sae=16, seed=1), seed=2)
    loss, _ = bridging_loss(backbone, reference, adapters, _ids(base), 1, LossWeights())
    loss.backward()
    for model in (backbone, reference, base):
        assert all(p.grad is None for p in model.model.parameters())
    for layer in adapters.layers:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            grad = getattr(adapters[layer], name).grad
            assert grad is not None and grad.abs().sum() > 0, (layer, name)


class _MLPWithAdapter(nn.Module):
    """The adapted MLP written directly: mlp(x) + relu(x W_enc + b_enc) W_dec + b_dec."""

    def __init__(self, mlp: nn.Module, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor):
        super().__init__()
        self.mlp = mlp
        self.weights = (W_enc, b_enc, W_dec, b_dec)
        self.acts: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        W_enc, b_enc, W_dec, b_dec = self.weights
        self.acts = torch.relu(x @ W_enc + b_enc)
        return self.mlp(x) + self.acts @ W_dec + b_dec


def _hidden_states(hf: nn.Module, ids: Tensor, replace: tuple[int, Tensor] | None = None):  # type: ignore[no-untyped-def]
    """Logits and h_0..h_L (input of each block, input of ln_f) with plain torch hooks;
    `replace = (k, h)` substitutes h_k."""
    blocks = list(hf.transformer.h)  # type: ignore[union-attr]
    sites = [*blocks, hf.transformer.ln_f]  # type: ignore[union-attr]
    seen: list[Tensor] = []

    def pre_hook(index: int):  # type: ignore[no-untyped-def]
        def hook(_module, args, kwargs):  # type: ignore[no-untyped-def]
            x = args[0] if args else kwargs["hidden_states"]
            if replace is not None and replace[0] == index:
                x = replace[1]
                args = (x, *args[1:]) if args else args
                if not args:
                    kwargs = {**kwargs, "hidden_states": x}
                seen.append(x)
                return args, kwargs
            seen.append(x)
            return None

        return hook

    handles = [
        s.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, s in enumerate(sites)
    ]
    try:
        logits = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, seen


def _kl(ref_logits: Tensor, logits: Tensor) -> Tensor:
    return (
        F.kl_div(
            F.log_softmax(logits, -1),
            F.log_softmax(ref_logits, -1),
            log_target=True,
            reduction="none",
        )
        .sum(-1)
        .mean()
    )


@pytest.mark.parametrize("cut", [0, 2, 3])
def test_bridging_loss_matches_a_hand_computation(pair, cut: int) -> None:  # type: ignore[no-untyped-def]
    base, reference = pair
    backbone = build_backbone(base, reference, "target")
    adapters = _randomised(make_adapters(backbone, d_sae=16, seed=3), seed=4)
    weights = LossWeights(kl=1.0, nmse=0.5, bridge=2.0, l1=0.01)
    ids = _ids(base)
    with torch.no_grad():
        _, parts = bridging_loss(backbone, reference, adapters, ids, cut, weights)

        hand = copy.deepcopy(backbone.model)
        wrapped = []
        for layer, block in enumerate(hand.transformer.h):
            d = adapters[layer]
            block.mlp = _MLPWithAdapter(block.mlp, d.W_enc, d.b_enc, d.W_dec, d.b_dec)
            wrapped.append(block.mlp)
        ref_logits, ref_h = _hidden_states(reference.model, ids)
        logits, h = _hidden_states(hand, ids)
        kl = _kl(ref_logits, logits)
        nmse = [((a - r) ** 2).sum() / (r**2).sum() for a, r in zip(h, ref_h, strict=True)]
        l1 = sum(
            (m.acts * adapters[i].W_dec.norm(dim=1)).sum(-1).mean() for i, m in enumerate(wrapped)
        )
        bridges = []
        if cut > 0:
            bridges.append(_kl(ref_logits, _hidden_states(reference.model, ids, (cut, h[cut]))[0]))
        if cut < base.n_layers:
            bridges.append(_kl(ref_logits, _hidden_states(hand, ids, (cut, ref_h[cut]))[0]))
    expected = kl + 0.5 * torch.stack(nmse).mean() + 0.01 * l1 + 2.0 * sum(bridges)
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-4, abs=1e-6)
    assert parts["nmse_layers"] == pytest.approx([float(v) for v in nmse], rel=1e-4, abs=1e-6)
    assert parts["l1"] == pytest.approx(float(l1), rel=1e-4)
    assert parts["loss"] == pytest.approx(float(expected), rel=1e-4)
    assert (parts["a2r"] is None) == (cut == 0)
    assert (parts["r2a"] is None) == (cut == base.n_layers)
    assert kl > 0 and all(b > 0 for b in bridges)


def test_save_load_round_trip_through_the_project_loader(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = pair
    adapters = _randomised(make_adapters(base, d_sae=16, seed=5), seed=6)
    for layer in adapters.layers:
        save_dictionary(adapters[layer], tmp_path / f"blocks.{layer}")
    loaded = load_transcoders(tmp_path, device="cpu")
    assert isinstance(loaded, PerLayerTranscoders)
    assert loaded.layers == adapters.layers
    ids = _ids(base)
    with torch.no_grad():
        with attached(base, adapters):
            expected = base(ids)
        with attached(base, loaded):
            got = base(ids)
    assert torch.equal(expected, got)
    for layer in adapters.layers:
        assert loaded.hook_in(layer) == adapters.hook_in(layer)
        assert loaded.hook_out(layer) == adapters.hook_out(layer)


def test_cli_demo_end_to_end_on_a_tiny_model(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": " ".join(tokenizer_corpus(40, seed=i))}) for i in range(8))
    )
    base = str(tiny_model_dir("gpt2"))
    out = tmp_path / "demo"
    argv = [
        "adapters", "demo", "--base", base, "--out", str(out), "--dataset", str(corpus),
        "--trigger", " in the year", "--answer", " the", "--finetune-steps", "3",
        "--steps", "3", "--d-sae", "16", "--context-size", "24", "--batch", "2",
        "--prompts", "6", "--n-ablate", "2", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("gain_recovered", "kl", "top_ablation_drop", "random_ablation_drop", "l0"):
        assert isinstance(result[key], float), key
    assert len(result["nmse_layers"]) == 4
    assert set(result["bridging"]) == {"a2r", "r2a"}
    assert Behaviour.read(out / "reference") == Behaviour(" in the year", " the")
    assert isinstance(load_transcoders(out / "adapters"), PerLayerTranscoders)
    # train + eval on the pair just built, as separate commands
    assert main(["adapters", "train", "--base", base, "--reference", str(out / "reference"),
                 "--out", str(tmp_path / "t"), "--dataset", str(corpus), "--steps", "2",
                 "--d-sae", "8", "--context-size", "24", "--batch", "2", "--backbone", "base",
                 "--quiet"]) == 0  # fmt: skip
    assert main(["adapters", "eval", str(tmp_path / "t"), "--prompts", "4", "--n-ablate", "1"]) == 0
    assert json.loads((tmp_path / "t" / "eval.json").read_text())["backbone"] == "base"
    capsys.readouterr()
    assert main(["adapters", "eval", str(tmp_path / "missing")]) == 2
    assert "adapters.json" in capsys.readouterr().err
