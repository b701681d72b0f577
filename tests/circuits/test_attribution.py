"""Attribution == intervention with everything frozen, on every family; decompositions are complete."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits import attribution as A
from sparsecircuits.circuits.nodes import EmbedNode, ErrorNode, FeatureNode, HeadNode
from sparsecircuits.circuits.replacement import TRANSCODER_INPUTS, ReplacementModel
from sparsecircuits.circuits.verify import ablation_effects, max_relative_error
from sparsecircuits.models import load_model
from testkit import random_transcoders


def _targets(rm, state):
    last = max(rm.feature_layers)
    torch.manual_seed(0)
    return [
        A.feature_target(rm, state, last, 3, pos=[6, 9, 10]),
        A.logit_diff_target(rm, state, 5, 9, pos=-1),
        A.direction_target(rm, state, torch.randn(rm.d_model), space="resid", pos=[10, 8, 7]),
        A.metric_gradient_target(
            rm, state, lambda logits, rows: torch.log_softmax(logits, -1)[:, 11], "logprob", pos=-1
        ),
    ]


def _nodes(rm, state, target, row=0):
    """A few nodes of every kind that can reach the target's position."""
    b, t = int(target.batch[row]), int(target.pos[row])
    nodes = [
        EmbedNode(t),
        EmbedNode(2),
        ErrorNode(0, t),
        ErrorNode(1, t - 1),
        HeadNode(0, 1, dest=t, src=3),
        HeadNode(1, 2),
        HeadNode(rm.n_layers - 1, 0, dest=t),
    ]
    for layer in rm.feature_layers:
        for pos in (t, t - 2):
            active = state.feature_acts[layer][b, pos].nonzero().flatten()
            nodes += [FeatureNode(layer, pos, int(f)) for f in active[:2]]
    return nodes


def test_linear_form_and_one_hop_decomposition_reproduce_the_target(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    for target in _targets(rm, state):
        value = target.evaluate(state)
        vec = target.resid_vector(rm, state)
        torch.testing.assert_close(vec.value(state), value, atol=1e-5, rtol=1e-5)
        dec = A.decompose(rm, state, vec)
        torch.testing.assert_close(dec.resid_total + dec.constant, value, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["frozen", "linear"])
def test_attribution_equals_ablation_when_frozen(tiny_models, variant, mode):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    for target in _targets(rm, state):
        attr = A.attribute(rm, state, target, mode=mode)
        for row in (0, 2):
            nodes = _nodes(rm, state, target, row)
            predicted = torch.tensor([attr.node_value(n, row) for n in nodes])
            effects = ablation_effects(
                rm, state, target, nodes, row=row, freeze=True, features=mode
            )
            assert effects.abs().max() > 1e-4  # the check is not vacuous
            assert max_relative_error(predicted, effects) < 1e-4, (
                target.label,
                list(zip(nodes, predicted, effects, strict=False)),
            )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("hook_in", TRANSCODER_INPUTS)
def test_every_transcoder_input_hook_is_read_and_attributed_exactly(
    tiny_model_dir, family, hook_in
):
    """Each input name reads what the adapter's hook of that name carries (TransformerLens's
    meaning; LayerNorm and RMSNorm differ for ln2.hook_normalized), and attribution through the
    pre-MLP norm at that point equals the frozen ablation."""
    adapter = load_model(tiny_model_dir(family), device="cpu")
    rm = ReplacementModel(adapter, random_transcoders(adapter, seed=3, hook_in=hook_in))
    ids = torch.randint(1, adapter.vocab_size, (3, 11), generator=torch.Generator().manual_seed(7))
    state = rm.run(ids)
    names = [rm.transcoders.hook_in(layer) for layer in rm.feature_layers]
    _, cache = adapter.run_with_cache(ids, names)
    for layer, name in zip(rm.feature_layers, names, strict=True):
        torch.testing.assert_close(state.tc_in[layer], cache[name], atol=2e-5, rtol=1e-4)
    target = A.feature_target(rm, state, max(rm.feature_layers), 3, pos=[6, 9, 10])
    attr = A.attribute(rm, state, target, mode="frozen")
    nodes = _nodes(rm, state, target)
    predicted = torch.tensor([attr.node_value(n, 0) for n in nodes])
    effects = ablation_effects(rm, state, target, nodes, row=0, freeze=True, features="frozen")
    assert effects.abs().max() > 1e-4
    assert max_relative_error(predicted, effects) < 1e-4


def test_attributions_are_complete(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    for target in _targets(rm, state):
        frozen = A.attribute(rm, state, target, mode="frozen", patterns=False)
        total = frozen.embed.sum(-1) + frozen.bias + sum(e.sum(-1) for e in frozen.errors.values())
        total = total + sum(f.sum((-1, -2)) for f in frozen.features.values())
        torch.testing.assert_close(total, frozen.value, atol=5e-5, rtol=1e-5)
        linear = A.attribute(rm, state, target, mode="linear", patterns=False)
        total = linear.embed.sum(-1) + linear.bias + sum(e.sum(-1) for e in linear.errors.values())
        torch.testing.assert_close(total, linear.value, atol=5e-5, rtol=1e-5)


def test_pull_backs_carry_the_one_hop_contributions(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    target = A.logit_diff_target(rm, state, 5, 9, pos=[10, 9, 10])
    vec = target.resid_vector(rm, state)
    dec = A.decompose(rm, state, vec)
    for layer in range(rm.n_layers):
        for head, src in ((0, 0), (1, 4), (3, 9)):
            pulled = A.pull_back_head(rm, state, vec, layer, head, src)
            torch.testing.assert_close(
                pulled.value(state), dec.heads[layer][:, head, src], atol=1e-6, rtol=1e-5
            )
    for layer in rm.feature_layers:
        feats = state.feature_acts[layer][vec.batch, vec.pos].argmax(-1)
        pulled = A.pull_back_feature(rm, state, vec, layer, feats)
        expected = dec.features[layer].gather(1, feats[:, None]).squeeze(1)
        torch.testing.assert_close(pulled.value(state), expected, atol=1e-6, rtol=1e-5)


def test_batched_rows_equal_single_rows(tiny_models):
    rm, ids = tiny_models["gpt_neox-seq"]
    state = rm.run(ids)
    many = A.attribute(rm, state, A.logit_target(rm, state, 7, pos=[10, 4, 9], batch=[0, 0, 2]))
    for row, (b, p) in enumerate(((0, 10), (0, 4), (2, 9))):
        one = A.attribute(rm, state, A.logit_target(rm, state, 7, pos=p, batch=[b]))
        torch.testing.assert_close(many.features[0][row], one.features[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(many.patterns[1][row], one.patterns[1][0], atol=1e-6, rtol=1e-5)


def test_chunked_attribution_equals_one_pass(tiny_models):
    rm, ids = tiny_models["qwen2"]
    state = rm.run(ids)
    target = A.logit_target(rm, state, 7, pos=-1)
    whole = A.attribute(rm, state, target, mode="linear")
    chunked = A.attribute(rm, state, target, mode="linear", batch_size=2)
    for layer in whole.features:
        torch.testing.assert_close(chunked.features[layer], whole.features[layer])
    torch.testing.assert_close(chunked.patterns[2], whole.patterns[2])
    torch.testing.assert_close(chunked.bias, whole.bias)


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_metric_target_is_the_first_order_metric(tiny_models, family):
    """The target is linear in the logits before Gemma's final soft-cap: its gradient goes
    through the cap."""
    rm, ids = tiny_models[family]
    state = rm.run(ids)
    cap = getattr(rm.adapter.model.config, "final_logit_softcapping", None)
    assert (cap is not None) == (family == "gemma2")

    def metric(logits, rows):
        return torch.softmax(logits, -1)[:, 3] - torch.softmax(logits, -1)[:, 4]

    target = A.metric_gradient_target(rm, state, metric, "p3-p4", pos=-1)
    linear = state.final_normed[:, -1] @ rm.adapter.W_U
    with torch.enable_grad():
        x = linear.clone().requires_grad_(True)
        capped = x if cap is None else cap * torch.tanh(x / cap)
        (g,) = torch.autograd.grad(metric(capped, None).sum(), x)
    torch.testing.assert_close(target.evaluate(state), (g * linear).sum(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(target.meta["metric_value"], metric(state.logits[:, -1], None))


def test_top_lists_are_sorted(tiny_models):
    rm, ids = tiny_models["gpt2"]
    state = rm.run(ids)
    attr = A.attribute(rm, state, A.logit_target(rm, state, 7))
    top = attr.top_features(5, row=1)
    assert len(top) == 5 and all(abs(a[1]) >= abs(b[1]) for a, b in zip(top, top[1:], strict=False))
    assert abs(attr.node_value(top[0][0], 1) - top[0][1]) < 1e-6
    heads = attr.top_heads(3)
    assert len(heads) == 3
    dec = A.decompose(rm, state, A.logit_target(rm, state, 7).resid_vector(rm, state))
    items = dec.top(4, row=0, kinds=["feature", "head"])
    assert all(c.kind in ("feature", "head") for c in items)
