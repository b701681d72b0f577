"""Feature and neuron ablations in the real model (HF forward with transcoders spliced), checked
against direct PyTorch hooks on the Hugging Face modules, on the shipped model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sparsecircuits.models.embedded as embedded_pkg
from sparsecircuits.circuits.edits import Edits, ErrorEdit, FeatureEdit
from sparsecircuits.circuits.real_model import (
    clean_splice,
    edited_layers,
    neuron_activations,
    neuron_logits,
    real_model_logits,
)

EMBEDDED = Path(embedded_pkg.__file__).resolve().parent
HAVE = (EMBEDDED / "model.safetensors").is_file() and (EMBEDDED / "transcoders").is_dir()
pytestmark = pytest.mark.skipif(not HAVE, reason="embedded model or its transcoders not built yet")


@pytest.fixture(scope="module")
def embedded():
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.tasks.greater_than import make_greater_than_prompts

    model = ReplacementModel.load(device="cpu")
    prompts = make_greater_than_prompts(model.adapter.tokenizer, 8, seed=3)
    length = int(prompts.last_pos.min()) + 1  # a common prefix length: no padding inside
    return model, prompts.input_ids[:, :length]


@torch.no_grad()
def _active_feature(model, ids, layer, pos):
    """A feature active at (layer, pos) of prompt 0, from the transcoder's own encoder on the
    MLP input captured by a plain forward hook on the HF MLP module."""
    seen = {}
    mlp = model.adapter.blocks[layer].get_submodule(model.adapter.spec.mlp)
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].clone()))
    try:
        model.adapter.forward(ids)
    finally:
        handle.remove()
    dictionary = model.transcoders[layer]
    acts = dictionary.encode(seen["x"].reshape(-1, seen["x"].shape[-1])).reshape(
        *seen["x"].shape[:2], -1
    )
    feature = int(acts[0, pos].argmax())
    assert float(acts[0, pos, feature]) > 0
    return feature, acts[:, pos, feature], dictionary.W_dec[feature].detach()


def test_no_edit_splice_reproduces_the_model_exactly(embedded):
    model, ids = embedded
    reference = model.adapter.forward(ids)
    spliced = real_model_logits(model, ids, layers=model.feature_layers)
    assert torch.equal(spliced, reference)
    # an edit that changes nothing (scale 1) is also exact, with the clean run reused
    clean = clean_splice(model, ids, model.feature_layers)
    same = Edits(features=[FeatureEdit(1, 2, 5, mode="scale", value=1.0)])
    assert torch.equal(real_model_logits(model, ids, same, clean=clean), reference)


@pytest.mark.parametrize("layer", [0, 2])
def test_feature_ablation_equals_direct_hf_hook(embedded, layer):
    model, ids = embedded
    pos = ids.shape[1] - 1
    feature, acts, w_dec = _active_feature(model, ids, layer, pos)

    def subtract(_module, _args, output):
        output = output.clone()
        output[:, pos] -= acts[:, None] * w_dec
        return output

    mlp = model.adapter.blocks[layer].get_submodule(model.adapter.spec.mlp)
    handle = mlp.register_forward_hook(subtract)
    try:
        direct = model.adapter.forward(ids)
    finally:
        handle.remove()
    edits = Edits(features=[FeatureEdit(layer, pos, feature)])
    ours = real_model_logits(model, ids, edits)
    torch.testing.assert_close(ours, direct, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(ours, model.adapter.forward(ids), atol=1e-3)


def test_feature_ablation_changes_the_mlp_output_by_act_times_w_dec(embedded):
    model, ids = embedded
    layer, pos = 2, 4
    feature, acts, w_dec = _active_feature(model, ids, layer, pos)
    hooks = [f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_resid_post"]

    def mlp_out(edits):
        seen = {}

        def recorder(name):
            def fn(act):
                seen[name] = act.clone()

            return fn

        with model.adapter.hooks({h: recorder(h) for h in hooks}):
            real_model_logits(model, ids, edits)
        return seen[hooks[1]] - seen[hooks[0]]

    delta = mlp_out(Edits(features=[FeatureEdit(layer, pos, feature)])) - mlp_out(Edits())
    torch.testing.assert_close(delta[:, pos], -acts[:, None] * w_dec, atol=1e-5, rtol=1e-4)
    others = [p for p in range(ids.shape[1]) if p != pos]
    assert float(delta[:, others].abs().max()) == 0.0


def test_error_edit_leaves_only_the_transcoder_at_that_position(embedded):
    model, ids = embedded
    layer, pos = 1, 3
    seen = {}

    def record(act):
        seen["out"] = act.clone()

    with model.adapter.hooks({f"blocks.{layer}.hook_resid_post": record}):
        real_model_logits(model, ids, Edits(errors=[ErrorEdit(layer, pos=pos)]))
    dropped = seen["out"]
    state = model.run(ids)
    expected = state.resid_mid[layer][:, pos] + state.tc_out[layer][:, pos]
    torch.testing.assert_close(dropped[:, pos], expected, atol=1e-4, rtol=1e-4)


def test_edited_layers_and_neuron_hooks(embedded):
    model, ids = embedded
    assert edited_layers(model, Edits(features=[FeatureEdit(2, 1, 0)])) == (2,)
    hidden = neuron_activations(model.adapter, ids, 1)
    assert hidden.shape[:2] == ids.shape
    same = neuron_logits(model.adapter, ids, {1: lambda h: h.clone()})
    assert torch.equal(same, model.adapter.forward(ids))
    # zeroing neuron n at a position removes h_n * W_out[n] from that MLP's output
    proj = model.adapter.blocks[1].get_submodule(model.adapter.spec.mlp_out_proj)
    neuron, pos = int(hidden[0, 2].abs().argmax()), 2

    def zero(h):
        h = h.clone()
        h[:, pos, neuron] = 0
        return h

    outs = []
    for fns in ({}, {1: zero}):
        handle = proj.register_forward_hook(lambda _m, _a, out: outs.append(out.clone()))
        try:
            neuron_logits(model.adapter, ids, fns)
        finally:
            handle.remove()
    w_out = proj.weight.detach()  # GPT-2 Conv1D: [d_mlp, d_model]
    torch.testing.assert_close(
        outs[1][:, pos] - outs[0][:, pos],
        -hidden[:, pos, neuron, None] * w_out[neuron],
        atol=1e-5,
        rtol=1e-4,
    )
