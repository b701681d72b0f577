"""The small GPT-2-architecture model shipped with sparsecircuits (see MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path


def embedded_dir() -> Path:
    """Return the folder holding the shipped model, tokenizer and held-out prose files."""
    return Path(__file__).resolve().parent
