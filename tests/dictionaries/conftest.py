"""Small builders shared by the dictionary tests."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.dictionaries import DictionaryConfig, make


def _build(
    architecture: str = "topk",
    kind: str = "sae",
    d_in: int = 12,
    d_sae: int = 48,
    d_out: int | None = None,
    **kw,
):  # type: ignore[no-untyped-def]
    hooks = (
        {"hook_in": "blocks.1.hook_mlp_in", "hook_out": "blocks.1.hook_mlp_out"}
        if kind != "sae"
        else {"hook_in": "blocks.1.hook_resid_post"}
    )
    cfg = DictionaryConfig(
        architecture=architecture,
        kind=kind,
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        k=kw.pop("k", 4),
        model_name="tiny",
        **hooks,
        **kw,
    )
    return make(cfg)


def _randomize(dictionary, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Give every trainable parameter (biases included) nonzero random values (frozen ones stay)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in dictionary.parameters():
            if not param.requires_grad:
                continue
            param.copy_(
                torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype) * 0.3
            )


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def build():  # type: ignore[no-untyped-def]
    """`build(architecture, kind, d_in=12, d_sae=48, d_out=None, **cfg)` -> a fresh dictionary."""
    return _build


@pytest.fixture
def randomize():  # type: ignore[no-untyped-def]
    """`randomize(dictionary, seed=0)`: every parameter set to random nonzero values."""
    return _randomize
