"""Spliced CE losses: exact splices recover everything, and the cached baseline changes nothing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.evaluation import evaluate_dictionaries, spliced_losses
from sparsecircuits.evaluation.splice import baseline_losses, mean_activations


def _transcoder(adapter, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    cfg = DictionaryConfig(
        architecture="topk",
        kind="transcoder",
        d_in=adapter.d_model,
        d_sae=64,
        k=4,
        hook_in="blocks.1.ln2.hook_normalized",
        hook_out="blocks.1.hook_mlp_out",
        model_name="tiny",
    )
    tc = make(cfg).eval()
    with torch.no_grad():  # transcoders start with a zero decoder; give them distinct outputs
        for param in tc.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return tc


class _Exact(torch.nn.Module):
    """Stands in for a dictionary whose reconstruction is the true MLP output (cached per call)."""

    def __init__(self, adapter, batches, cfg):  # type: ignore[no-untyped-def]
        super().__init__()
        self.cfg = cfg
        self.outs = [
            adapter.run_with_cache(ids, [cfg.hook_out])[1][cfg.hook_out] for ids in batches
        ]
        self.i = 0
        self.layers, self.d_in = [0], cfg.d_in

    def layer_writes(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        out = self.outs[self.i % len(self.outs)]
        self.i += 1
        return out.reshape(x.shape[0], 1, -1)


@pytest.mark.parametrize(
    "family", ["gpt2", "llama3", "gemma2", "gemma3_text", "gemma2-mlp.hook_out"]
)
def test_an_exact_splice_recovers_all_the_loss(tiny_model_dir, batches, family):  # type: ignore[no-untyped-def]
    """Also on Gemma, writing what joins the residual or the MLP's own output (before its
    post-norm)."""
    from sparsecircuits.models import load_model

    name, _, hook_out = family.partition("-")
    adapter = load_model(tiny_model_dir(name), device="cpu")
    cfg = _transcoder(adapter).cfg
    if hook_out:
        cfg = replace(cfg, hook_out=f"blocks.1.{hook_out}")
    exact = _Exact(adapter, batches, cfg)
    out = spliced_losses(adapter, exact, batches)  # type: ignore[arg-type]
    assert out["ce_loss_spliced"] == pytest.approx(out["ce_loss_clean"], abs=1e-5)
    assert out["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert abs(out["kl_div"]) < 1e-5


def test_baseline_cache_and_memory_cap_give_the_same_numbers(gpt2, batches):  # type: ignore[no-untyped-def]
    tc = _transcoder(gpt2)
    hook = tc.cfg.hook_out
    means = mean_activations(gpt2, batches, [hook])
    cached = baseline_losses(gpt2, batches, [hook], means)
    capped = baseline_losses(gpt2, batches, [hook], means, max_cache_bytes=0)
    assert cached.clean_logprobs is not None and capped.clean_logprobs is None
    fresh = spliced_losses(gpt2, tc, batches)
    for baseline in (cached, capped):
        reused = spliced_losses(gpt2, tc, batches, baseline=baseline)
        for key, value in fresh.items():
            assert reused[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    # The ablations really ablate: zeroing an MLP output changes the loss.
    assert not math.isclose(fresh["ce_loss_zero_ablated"], fresh["ce_loss_clean"])


def test_evaluate_dictionaries_shares_baselines_between_dictionaries(gpt2, batches):  # type: ignore[no-untyped-def]
    dicts = {"a": _transcoder(gpt2, 0), "b": _transcoder(gpt2, 1)}
    records = {r["name"]: r for r in evaluate_dictionaries(gpt2, dicts, batches)}
    for name, tc in dicts.items():
        alone = spliced_losses(gpt2, tc, batches)
        assert records[name]["ce_loss_spliced"] == pytest.approx(alone["ce_loss_spliced"], rel=1e-6)
        assert records[name]["ce_loss_clean"] == pytest.approx(alone["ce_loss_clean"], rel=1e-6)
    assert records["a"]["ce_loss_spliced"] != records["b"]["ce_loss_spliced"]
