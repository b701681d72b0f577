"""Shared fixtures for the evaluation tests: the tiny GPT-2 and a few token batches."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.models import load_model


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir):  # type: ignore[no-untyped-def]
    """A ModelAdapter on the tiny random-init GPT-2 (CPU, fp32)."""
    return load_model(tiny_model_dir("gpt2"), device="cpu")


@pytest.fixture
def batches(gpt2):  # type: ignore[no-untyped-def]
    """Two seeded batches of token ids `[3, 10]` drawn from `1..vocab-1`."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(1, gpt2.vocab_size, (3, 10), generator=gen) for _ in range(2)]
