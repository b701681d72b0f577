"""The embedded model's fine-tune stream: its neutral sentences never form an IOI example."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sparsecircuits.tasks import ioi

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "embedded"


@pytest.fixture(scope="module")
def stream() -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(
            "build_task_stream", SCRIPTS / "build_task_stream.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def _names_in(text: str) -> set[str]:
    words = {w.strip(".,:") for w in text.split()}
    return words & (set(ioi.NAMES_TRAIN) | set(ioi.NAMES_HELDOUT))


def test_recall_sentences_hold_one_name_and_use_heldout_names(stream: ModuleType) -> None:
    rng = random.Random(0)
    sentences = [stream.recall_text(rng) for _ in range(2000)]
    used: set[str] = set()
    for sentence in sentences:
        names = _names_in(sentence)
        assert len(names) == 1, sentence  # one name: nothing to tell apart, never IOI
        used |= names
    assert set(ioi.NAMES_HELDOUT) <= used


def test_template_word_sentences_hold_no_names(stream: ModuleType) -> None:
    rng = random.Random(1)
    assert not any(_names_in(stream.template_word_text(rng)) for _ in range(500))
