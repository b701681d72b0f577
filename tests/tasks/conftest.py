from __future__ import annotations

import pytest

from sparsecircuits.models.embedded import embedded_dir


@pytest.fixture(scope="session")
def tokenizer():
    """The shipped embedded tokenizer (tokenizer files only; the model is not needed)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir())
