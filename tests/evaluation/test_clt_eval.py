"""Cross-layer transcoders in evaluation: one layer equals a transcoder, the multi-layer splice
equals hooks written by hand, and a CLT that writes nothing equals ablating every layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsecircuits.dictionaries import CrossLayerTranscoder, DictionaryConfig, make
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation import evaluate_dictionaries, spliced_losses
from sparsecircuits.evaluation.splice import splice
from testkit import copy_one_layer_clt

IDENTITY_KEYS = {"name", "kind", "hook_in", "hook_out", "n_layers", "layers"}


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _clt(adapter, n_layers: int, architecture: str = "topk", seed: int = 0) -> CrossLayerTranscoder:  # type: ignore[no-untyped-def]
    clt = make(
        DictionaryConfig(
            architecture=architecture,
            kind="clt",
            d_in=adapter.d_model,
            d_sae=64,
            k=4,
            n_layers=n_layers,
            hook_in="blocks.{layer}.hook_mlp_in",
            hook_out="blocks.{layer}.hook_mlp_out",
            model_name="tiny",
        )
    )
    assert isinstance(clt, CrossLayerTranscoder)
    _randomise(clt, seed)
    if architecture == "jumprelu":
        with torch.no_grad():
            for activation in clt.activations:
                activation.log_threshold.fill_(-1.5)
    return clt.eval()


@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu"])
def test_one_layer_clt_gives_exactly_the_transcoders_metrics(
    gpt2, batches, architecture: str
) -> None:  # type: ignore[no-untyped-def]
    clt = _clt(gpt2, 1, architecture)
    transcoder = make(
        DictionaryConfig(
            architecture=architecture,
            kind="transcoder",
            d_in=gpt2.d_model,
            d_sae=64,
            k=4,
            hook_in="blocks.0.hook_mlp_in",
            hook_out="blocks.0.hook_mlp_out",
            model_name="tiny",
        )
    ).eval()
    copy_one_layer_clt(clt, transcoder)
    records = evaluate_dictionaries(gpt2, {"clt": clt, "tc": transcoder}, batches)
    by_name = {r["name"]: r for r in records}
    clt_record, tc_record = by_name["clt"], by_name["tc"]
    assert clt_record["n_layers"] == 1 and len(clt_record["layers"]) == 1
    assert set(clt_record) - IDENTITY_KEYS - {"fvu_mean_over_layers"} == set(tc_record) - {
        "name",
        "kind",
        "hook_in",
        "hook_out",
    }
    for key, value in tc_record.items():
        if key in IDENTITY_KEYS:
            continue
        if isinstance(value, float):
            assert clt_record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            if key in clt_record["layers"][0]:
                assert clt_record["layers"][0][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
        else:
            assert clt_record[key] == value, key
    # the splice really changed the loss, so the equality above is not clean == clean
    assert abs(tc_record["ce_loss_spliced"] - tc_record["ce_loss_clean"]) > 1e-3


@torch.no_grad()
def _manual_ce(adapter, ids: torch.Tensor, hook_fns) -> float:  # type: ignore[no-untyped-def]
    with adapter.hooks(hook_fns):
        logits = adapter.forward(ids)
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return float(-logprobs.gather(-1, ids[:, 1:, None]).sum())


def test_two_layer_clt_splice_equals_hand_written_hooks(gpt2, batches) -> None:  # type: ignore[no-untyped-def]
    clt = _clt(gpt2, 2, seed=3)
    W0, W1 = clt.W_dec[0].detach(), clt.W_dec[1].detach()
    b_dec = clt.b_dec.detach()

    def spliced_hooks(inputs_from_clean_run: dict[str, torch.Tensor] | None):  # type: ignore[no-untyped-def]
        """Layer 0: ŷ0 = a0 W0[:,0] + b0; layer 1: ŷ1 = a0 W0[:,1] + a1 W1[:,0] + b1."""
        acts: dict[int, torch.Tensor] = {}

        def read(layer: int):  # type: ignore[no-untyped-def]
            def fn(act: torch.Tensor) -> None:
                if inputs_from_clean_run is not None:
                    act = inputs_from_clean_run[f"blocks.{layer}.hook_mlp_in"]
                acts[layer] = clt.encode_layer(act, layer)

            return fn

        def write0(act: torch.Tensor) -> torch.Tensor:
            return acts[0] @ W0[:, 0] + b_dec[0]

        def write1(act: torch.Tensor) -> torch.Tensor:
            return acts[0] @ W0[:, 1] + acts[1] @ W1[:, 0] + b_dec[1]

        return {
            "blocks.0.hook_mlp_in": read(0),
            "blocks.0.hook_mlp_out": write0,
            "blocks.1.hook_mlp_in": read(1),
            "blocks.1.hook_mlp_out": write1,
        }

    n_tokens = sum(ids.shape[0] * (ids.shape[1] - 1) for ids in batches)
    manual = sum(_manual_ce(gpt2, ids, spliced_hooks(None)) for ids in batches) / n_tokens
    zero = dict.fromkeys(("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"), torch.zeros_like)
    manual_zero = sum(_manual_ce(gpt2, ids, zero) for ids in batches) / n_tokens
    clean_inputs = [
        gpt2.run_with_cache(ids, ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"])[1]
        for ids in batches
    ]
    from_clean_inputs = (
        sum(
            _manual_ce(gpt2, ids, spliced_hooks(cache))
            for ids, cache in zip(batches, clean_inputs, strict=True)
        )
        / n_tokens
    )

    out = spliced_losses(gpt2, clt, batches)
    assert out["ce_loss_spliced"] == pytest.approx(manual, abs=1e-5)
    assert out["ce_loss_zero_ablated"] == pytest.approx(manual_zero, abs=1e-5)
    assert out["kl_div"] > 0
    # Layer 1 reads the spliced stream, not the clean one: the two differ measurably here.
    assert abs(from_clean_inputs - manual) > 1e-4
    # evaluate_dictionaries gives the same spliced loss with its shared baseline
    (record,) = evaluate_dictionaries(gpt2, {"clt": clt}, batches)
    assert record["ce_loss_spliced"] == pytest.approx(manual, abs=1e-5)
    # Layer 0's inputs are still clean in a spliced run, so its spliced output is
    # CrossLayerTranscoder.forward's on the clean activations: compare the stream after it.
    ids = batches[0]
    cache = gpt2.run_with_cache(ids, clt.hook_names())[1]
    x, _ = clt.inputs_from({h: a.reshape(-1, a.shape[-1]) for h, a in cache.items()})
    with torch.no_grad():
        forward_out = clt(x).out[:, 0]
    streams: list[torch.Tensor] = []

    def keep(act: torch.Tensor) -> None:
        streams.append(act)

    with torch.no_grad(), splice(gpt2, clt), gpt2.hooks({"blocks.1.hook_resid_pre": keep}):
        gpt2.forward(ids)
    replace_layer0 = {"blocks.0.hook_mlp_out": lambda act: forward_out.reshape(act.shape)}
    with torch.no_grad(), gpt2.hooks({**replace_layer0, "blocks.1.hook_resid_pre": keep}):
        gpt2.forward(ids)
    torch.testing.assert_close(streams[0], streams[1], rtol=1e-6, atol=1e-6)


def test_a_clt_that_writes_nothing_equals_ablating_every_layer(gpt2, batches) -> None:  # type: ignore[no-untyped-def]
    clt = _clt(gpt2, gpt2.n_layers)
    with torch.no_grad():
        for W_dec in clt.W_dec:
            W_dec.zero_()
        clt.b_dec.zero_()
    (record,) = evaluate_dictionaries(gpt2, {"clt": clt}, batches)
    assert record["ce_loss_spliced"] == pytest.approx(record["ce_loss_zero_ablated"], abs=1e-6)
    assert record["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-5)
    # b_dec = the mean output of each layer: the splice is the mean ablation of every layer
    hooks_out = clt.cfg.layer_hooks()[1]
    cache_means = {}
    for hook in hooks_out:
        acts = [gpt2.run_with_cache(ids, [hook])[1][hook][:, 1:] for ids in batches]
        cache_means[hook] = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts]).mean(0)
    with torch.no_grad():
        for layer, hook in enumerate(hooks_out):
            clt.b_dec[layer].copy_(cache_means[hook])
    (record,) = evaluate_dictionaries(gpt2, {"clt": clt}, batches)
    assert record["ce_loss_spliced"] == pytest.approx(record["ce_loss_mean_ablated"], abs=1e-5)
    assert record["ce_loss_zero_ablated"] != pytest.approx(record["ce_loss_clean"], abs=1e-3)


def test_clt_with_hooks_it_cannot_splice_is_a_clear_error(gpt2, batches) -> None:  # type: ignore[no-untyped-def]
    clt = make(
        DictionaryConfig(
            architecture="topk",
            kind="clt",
            d_in=gpt2.d_model,
            d_sae=16,
            k=2,
            n_layers=2,
            hook_in="blocks.{layer}.hook_mlp_out",
            hook_out="blocks.{layer}.hook_mlp_in",
        )
    )
    with pytest.raises(SparseCircuitsError, match="must come before"):
        evaluate_dictionaries(gpt2, {"clt": clt}, batches)
