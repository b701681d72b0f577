"""Fixtures for the data tests: a tiny word-level tokenizer and a fake model adapter whose
activations are exact functions of (token id, position), so every row can be checked."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

N_WORDS = 500
BOS, EOS, UNK = "<bos>", "<eos>", "<unk>"


def make_tokenizer(with_bos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over w0..w499: ids 0..2 are the specials, w{i} is id i + 3."""
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    vocab.update({f"w{i}": i + 3 for i in range(N_WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"unk_token": UNK, "eos_token": EOS}
    if with_bos:
        special["bos_token"] = BOS
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def words(start: int, n: int) -> str:
    """A document of n consecutive words, w{start} ..."""
    return " ".join(f"w{(start + i) % N_WORDS}" for i in range(n))


class FakeAdapter:
    """The ModelAdapter interface with closed-form activations.

    mlp_in  [t, t/2 + 1, t % 7, pos]       (d=4)
    mlp_out [2t + 1, t % 5, 10 pos]        (d=3)
    resid   [t, pos, 1, 2, 3]              (d=5)
    """

    DIMS = {
        "blocks.0.hook_mlp_in": 4,
        "blocks.0.hook_mlp_out": 3,
        "blocks.1.hook_resid_post": 5,
    }

    def __init__(self, tokenizer=None, max_context: int = 64) -> None:
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.device = torch.device("cpu")
        self.name = "fake-model"
        self.calls: list[dict] = []

    @property
    def bos_token_id(self) -> int | None:
        from sparsecircuits.models.tokens import bos_token_id

        return None if self.tokenizer is None else bos_token_id(self.tokenizer)

    def hook_dim(self, name: str) -> int:
        if name not in self.DIMS:
            raise KeyError(name)
        return self.DIMS[name]

    def run_with_cache(self, input_ids, hooks, stop_after_last=True):
        self.calls.append(
            {
                "shape": tuple(input_ids.shape),
                "grad_enabled": torch.is_grad_enabled(),
                "stop_after_last": stop_after_last,
            }
        )
        t = input_ids.double()
        pos = torch.arange(input_ids.shape[1], dtype=torch.float64).expand_as(t)
        one = torch.ones_like(t)
        everything = {
            "blocks.0.hook_mlp_in": torch.stack([t, t / 2 + 1, t % 7, pos], -1),
            "blocks.0.hook_mlp_out": torch.stack([2 * t + 1, t % 5, 10 * pos], -1),
            "blocks.1.hook_resid_post": torch.stack([t, pos, one, 2 * one, 3 * one], -1),
        }
        cache = {hook: everything[hook].float() for hook in hooks}
        return None, cache


def synthetic_contexts(n: int, context_size: int, bos: int = 1) -> list[torch.Tensor]:
    """Context i = [bos, 1000(i+1) + 1, ..., 1000(i+1) + context_size - 1]: token // 1000 - 1 is i."""
    contexts = []
    for i in range(n):
        body = torch.arange(1, context_size) + 1000 * (i + 1)
        contexts.append(torch.cat([torch.tensor([bos]), body]))
    return contexts


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def fake_adapter(tokenizer) -> FakeAdapter:
    return FakeAdapter(tokenizer)


@pytest.fixture
def helpers():
    """The module's helpers, for tests (importlib mode cannot import conftest directly)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_tokenizer=make_tokenizer,
        words=words,
        FakeAdapter=FakeAdapter,
        synthetic_contexts=synthetic_contexts,
        N_WORDS=N_WORDS,
    )
