"""Tiny random models of every family with random transcoders, shared by the circuits tests."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.models import load_model
from sparsecircuits.models.tiny import FAMILIES, build_tiny_model
from testkit import random_transcoders

# (family, parallel_residual) pairs; NeoX is tested with and without its parallel residual.
VARIANTS = [(f, True) for f in FAMILIES] + [("gpt_neox", False)]
VARIANT_IDS = [
    f if f != "gpt_neox" else f"gpt_neox-{'par' if par else 'seq'}" for f, par in VARIANTS
]
# Gemma-2 again with transcoders writing the MLP's own output, before its post-MLP norm.
VARIANTS.append(("gemma2", True))
VARIANT_IDS.append("gemma2-mlp.hook_out")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_model_dir):
    """Return {variant id: (ReplacementModel, input_ids [3, 11])}; built once per session."""
    models = {}
    for (family, parallel), vid in zip(VARIANTS, VARIANT_IDS, strict=False):
        hook_out = "mlp.hook_out" if vid.endswith("mlp.hook_out") else "hook_mlp_out"
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
            adapter,
            random_transcoders(adapter, seed=len(models), skip_layer=skip, hook_out=hook_out),
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
