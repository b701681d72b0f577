"""The embedded model's build scripts: the fine-tune stream's neutral sentences never form an IOI
example; the name-embedding options of the training script treat both name pools alike."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sparsecircuits.tasks import ioi

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "embedded"


def load_script(name: str) -> ModuleType:
    """Import scripts/embedded/<name>.py as a module (its sibling imports resolve)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def stream() -> ModuleType:
    return load_script("build_task_stream")


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


def test_random_name_embeddings_are_fresh_alike_and_frozen() -> None:
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from sparsecircuits.models.embedded import embedded_dir

    train_model = load_script("train_model")
    tok = AutoTokenizer.from_pretrained(embedded_dir())
    config = train_model.model_config(len(tok))
    config.n_layer, config.n_embd, config.n_inner = 1, 64, 128
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    before = model.transformer.wte.weight.detach().clone()
    train_model.randomise_name_embeddings(model, tok, seed=0)
    after = model.transformer.wte.weight.detach()
    vocab = tok.get_vocab()
    train = [vocab["Ġ" + n] for n in ioi.NAMES_TRAIN if "Ġ" + n in vocab]
    held = [vocab["Ġ" + n] for n in ioi.NAMES_HELDOUT if "Ġ" + n in vocab]
    names = train + held
    others = torch.ones(len(vocab), dtype=torch.bool)
    others[names] = False
    assert not torch.equal(after[names], before[names])
    assert torch.equal(after[others], before[others])
    # both pools come from one distribution: their means differ by sampling noise only
    gap = (after[train].mean(0) - after[held].mean(0)).norm()
    assert gap < 0.5 * after[held].norm(dim=1).mean()
    ids = torch.tensor([[vocab["Ġ" + ioi.NAMES_TRAIN[0]], vocab["Ġ" + ioi.NAMES_HELDOUT[0]], 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.transformer.wte.weight.grad
    assert grad is not None
    assert grad[names].abs().max() == 0 and grad[others].abs().sum() > 0
