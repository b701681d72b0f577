from __future__ import annotations

import pytest
import torch

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.tasks import (
    docstring_accuracy,
    docstring_logit_diff,
    greater_than_prob_diff,
    ioi_logit_diff,
    make_ioi_prompts,
)
from sparsecircuits.tasks.common import batch_token_lists, logits_at_last

VOCAB = 150
YEAR_IDS = torch.arange(20, 120)  # token 20 + y is the year "y"


def _one_hot(index: int, big: float = 1e4) -> torch.Tensor:
    logits = torch.zeros(VOCAB)
    logits[index] = big
    return logits


def test_prob_diff_one_hot_after_and_before():
    logits = torch.stack([_one_hot(20 + 56), _one_hot(20 + 32), _one_hot(20 + 31)])
    pd = greater_than_prob_diff(logits, torch.tensor([32, 32, 32]), YEAR_IDS)
    assert torch.allclose(pd, torch.tensor([1.0, -1.0, -1.0]), atol=1e-5)


def test_prob_diff_uses_full_vocab_softmax():
    logits = torch.full((1, VOCAB), -1e4)
    logits[0, YEAR_IDS] = 0.0  # uniform over the years
    pd = greater_than_prob_diff(logits, torch.tensor([32]), YEAR_IDS)
    assert pd.item() == pytest.approx((67 - 33) / 100, abs=1e-5)
    # mass outside the year tokens counts in the softmax but in neither sum
    logits2 = torch.zeros(1, VOCAB)
    pd2 = greater_than_prob_diff(logits2, torch.tensor([32]), YEAR_IDS)
    assert pd2.item() == pytest.approx((67 - 33) / VOCAB, abs=1e-5)


def test_ioi_logit_diff_known_values():
    logits = torch.zeros(2, VOCAB)
    logits[0, 5], logits[0, 6] = 3.0, 1.0
    logits[1, 5], logits[1, 6] = -1.0, 0.5
    ld = ioi_logit_diff(logits, torch.tensor([5, 5]), torch.tensor([6, 6]))
    assert torch.allclose(ld, torch.tensor([2.0, -1.5]))


def test_docstring_metrics_known_values():
    logits = torch.zeros(2, VOCAB)
    logits[0, 7], logits[0, 8], logits[0, 9] = 4.0, 1.0, 2.5
    logits[1, 7], logits[1, 8], logits[1, 100] = 1.0, 2.0, 9.0
    correct = torch.tensor([7, 7])
    wrong = torch.tensor([[8, 9], [8, 9]])
    assert torch.allclose(docstring_logit_diff(logits, correct, wrong), torch.tensor([1.5, -1.0]))
    assert docstring_accuracy(logits, correct).tolist() == [1.0, 0.0]


class _Tok:
    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = None


def test_batching_pads_and_selects_last_position():
    ids, last = batch_token_lists(_Tok(), [[5, 6, 7], [8]], prepend_bos=True)
    assert ids.tolist() == [[1, 5, 6, 7], [1, 8, 2, 2]]
    assert last.tolist() == [3, 1]
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    assert logits_at_last(logits, last).tolist() == [logits[0, 3].tolist(), logits[1, 1].tolist()]


def test_bad_split_raises(tokenizer):
    with pytest.raises(SparseCircuitsError):
        make_ioi_prompts(tokenizer, 4, split="validation")
