"""Input-invariant connections equal the input-dependent one-hop terms divided by activations and scales."""

from __future__ import annotations

import torch

from sparsecircuits.circuits import attribution as A
from sparsecircuits.circuits import deembed as D


def test_connection_matrix_is_the_input_invariant_factor(tiny_models, variant):
    rm, ids = tiny_models[variant]
    if not {0, 2} <= set(rm.feature_layers):
        return
    state = rm.run(ids)
    b, t, j = 1, 9, 5
    target = A.feature_target(rm, state, 2, j, pos=t, batch=[b])
    vec = target.resid_vector(rm, state)
    dec = A.decompose(rm, state, vec)
    acts = state.feature_acts[0][b, t]
    active = acts.nonzero().flatten()
    # a transcoder reading the residual itself (hook_mlp_in) sees no norm scale
    scale2 = state.ln2_scale[2][b, t] if rm.tc_stage[2] != "residual" else 1.0
    # a transcoder writing before Gemma's post-MLP norm: its scale at the feature's position too
    post_mlp = state.ln2_post_scale[0]
    scale2 = scale2 if post_mlp is None else scale2 * post_mlp[b, t]
    direct = D.connection_matrix(rm, 0, 2, dst_features=[j])[:, 0]
    torch.testing.assert_close(
        dec.features[0][0, active] / acts[active] * scale2, direct[active], atol=1e-5, rtol=1e-4
    )
    scale2 = state.ln2_scale[2][b, t] if rm.tc_stage[2] != "residual" else 1.0
    # through head 1.h from source s: pattern × act × connection / (ln1 scale at s × ln2 scale at
    # t), and for Gemma also / the post-attention norm's scale at t
    h, s = 2, 6
    via = A.decompose(rm, state, A.pull_back_head(rm, state, vec, 1, h, s))
    acts_s = state.feature_acts[0][b, s]
    active_s = acts_s.nonzero().flatten()
    factor = state.patterns[1][b, h, t, s] / (scale2 * state.ln1_scale[1][b, s])
    post_scale = state.ln1_post_scale[1]
    if post_scale is not None:
        factor = factor / post_scale[b, t]
    if post_mlp is not None:
        factor = factor / post_mlp[b, s]
    through = D.connection_matrix(rm, 0, 2, head=(1, h), dst_features=[j])[:, 0]
    torch.testing.assert_close(
        via.features[0][0, active_s],
        acts_s[active_s] * through[active_s] * factor,
        atol=1e-6,
        rtol=1e-4,
    )


def test_deembedding_and_feature_logits(tiny_models, variant):
    rm, ids = tiny_models[variant]
    state = rm.run(ids)
    b, t = 0, 7
    layer0 = min(rm.feature_layers)
    vec = A.feature_target(rm, state, layer0, 4, pos=t, batch=[b]).resid_vector(rm, state)
    scores = D.deembedding(rm, layer0, 4, k=5)
    token = int(ids[b, t])
    scale = state.ln2_scale[layer0][b, t, 0] if rm.tc_stage[layer0] != "residual" else 1.0
    expected = (rm.W_E[token] * vec.vector[0]).sum() * scale
    torch.testing.assert_close(scores.scores[token], expected, atol=1e-5, rtol=1e-4)
    assert scores.top[0][1] == float(scores.scores.max())
    # feature logits: W_dec · (unembedding pulled back through the final norm), scale removed
    last = max(rm.feature_layers)
    logit_vec = A.logit_target(rm, state, 11, pos=t, batch=[b]).resid_vector(rm, state)
    f = int(state.feature_acts[last][b, t].argmax())
    expected = (rm.decoders(last)[0][1][f] * logit_vec.vector[0]).sum() * state.ln_final_scale[
        b, t, 0
    ]
    post_mlp = state.ln2_post_scale[last]
    if post_mlp is not None:  # written before Gemma's post-MLP norm: gain in, scale out
        w = rm.layer_weights(last).ln2_post
        assert w is not None and rm.tc_output[last] == "mlp.hook_out"
        expected = (rm.decoders(last)[0][1][f] * (1 + w.weight) * logit_vec.vector[0]).sum()
        expected = expected * state.ln_final_scale[b, t, 0]
    torch.testing.assert_close(
        D.feature_logits(rm, last, f).scores[11], expected, atol=1e-5, rtol=1e-4
    )
