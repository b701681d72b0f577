"""Tiny random models of every family with random transcoders, shared by the circuits tests."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.models import load_model
from sparsecircuits.models.tiny import FAMILIES, build_tiny_model

# (family, parallel_residual) pairs; NeoX is tested with and without its parallel residual.
VARIANTS = [(f, True) for f in FAMILIES] + [("gpt_neox", False)]
VARIANT_IDS = [
    f if f != "gpt_neox" else f"gpt_neox-{'par' if par else 'seq'}" for f, par in VARIANTS
]


def random_transcoders(adapter, seed: int, skip_layer: int | None = None) -> dict:
    """Transcoders for every layer but `skip_layer`: TopK on hook_mlp_in, a ReLU skip transcoder on
    ln2.hook_normalized, ReLU on hook_mlp_in; all biases random so bias handling is tested."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for layer in range(adapter.n_layers):
        if layer == skip_layer:
            continue
        kind = layer % 3
        cfg = DictionaryConfig(
            architecture="topk" if kind == 0 else "relu",
            kind="skip_transcoder" if kind == 1 else "transcoder",
            d_in=adapter.d_model,
            d_sae=48,
            hook_in=f"blocks.{layer}.{'ln2.hook_normalized' if kind == 1 else 'hook_mlp_in'}",
            hook_out=f"blocks.{layer}.hook_mlp_out",
            k=6,
            seed=seed + layer,
        )
        tc = make(cfg)
        with torch.no_grad():
            tc.W_dec.mul_(3.0)
            tc.b_enc.copy_(0.1 * torch.randn(tc.b_enc.shape, generator=generator))
            tc.b_in.copy_(0.1 * torch.randn(tc.b_in.shape, generator=generator))
            tc.b_dec.copy_(0.1 * torch.randn(tc.b_dec.shape, generator=generator))
            if tc.W_skip is not None:
                tc.W_skip.copy_(0.1 * torch.randn(tc.W_skip.shape, generator=generator))
        result[layer] = tc
    return result


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_model_dir):
    """Return {variant id: (ReplacementModel, input_ids [3, 11])}; built once per session."""
    models = {}
    for (family, parallel), vid in zip(VARIANTS, VARIANT_IDS, strict=False):
        if parallel:  # the shared session-wide tiny model (build_tiny_model's default)
            folder = tiny_model_dir(family)
        else:
            folder = build_tiny_model(
                family, tmp_path_factory.mktemp(vid), parallel_residual=parallel
            )
        adapter = load_model(folder, device="cpu")
        # Odd variants leave layer 1 with its real MLP, so frozen non-transcoder MLPs are tested too.
        skip = 1 if len(models) % 2 else None
        rm = ReplacementModel(
            adapter, random_transcoders(adapter, seed=len(models), skip_layer=skip)
        )
        input_ids = torch.randint(
            1, adapter.vocab_size, (3, 11), generator=torch.Generator().manual_seed(7)
        )
        models[vid] = (rm, input_ids)
    return models


@pytest.fixture(params=VARIANT_IDS)
def variant(request):
    """Each tiny-model variant id in turn."""
    return request.param


@pytest.fixture(scope="session")
def make_transcoders():
    """Return `random_transcoders` (conftest modules cannot be imported under importlib mode)."""
    return random_transcoders
