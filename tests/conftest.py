"""Shared fixtures: tiny random-init models of every supported family, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sparsecircuits.models.tiny import FAMILIES, build_tiny_model

# Tests run tiny tensors on a shared 2-core machine: one thread avoids OpenMP spin contention
# that makes a 2 ms forward take hundreds of ms.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Return `build(family) -> folder`: a tiny saved model of that family (built once, then reused)."""
    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return build


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_family(request: pytest.FixtureRequest) -> str:
    """Each supported family name in turn ("gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "mistral")."""
    return request.param


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model_dir: Callable[[str], Path], tiny_family: str):
    """A ModelAdapter (CPU, fp32) on the tiny model of each family in turn. Do not leave hooks on it."""
    from sparsecircuits.models import load_model

    return load_model(tiny_model_dir(tiny_family), device="cpu")
