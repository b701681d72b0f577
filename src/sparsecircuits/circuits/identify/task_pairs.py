"""Positive and negative prompt pairs of one circuit task, with the task metric on the positives' labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.tasks import (
    docstring_logit_diff,
    greater_than_prob_diff,
    ioi_logit_diff,
    make_docstring_prompts,
    make_greater_than_prompts,
    make_ioi_prompts,
)
from sparsecircuits.tasks.common import TaskPrompts
from sparsecircuits.tasks.negatives import (
    docstring_negatives,
    greater_than_negatives,
    ioi_negatives,
    same_length_pairs,
)

TASKS = ("ioi", "greater-than", "docstring")
# What each task's metric measures (positives' labels, final position).
METRIC_NAMES = {
    "ioi": "logit(IO) - logit(S)",
    "greater-than": "probability difference (years after YY minus years up to YY)",
    "docstring": "logit(correct arg) - max logit(other args)",
}


@dataclass
class TaskPairs:
    """Paired prompts: `negatives[i]` is the impossible version of `positives[i]`, same length.

    `metric(logits [n, vocab], rows [n]) -> [n]` is the task metric at the final position with
    the labels of positive prompt `rows[i]` (so it also reads a patched or negative run).
    """

    task: str
    positives: TaskPrompts
    negatives: TaskPrompts
    metric: Callable[[Tensor, Tensor], Tensor]

    def __len__(self) -> int:
        return len(self.positives)


def _metric(task: str, prompts: TaskPrompts) -> Callable[[Tensor, Tensor], Tensor]:
    if task == "ioi":
        io, s = prompts.io_ids, prompts.s_ids
        assert io is not None and s is not None
        return lambda logits, rows: ioi_logit_diff(logits, io[rows.cpu()], s[rows.cpu()])
    if task == "greater-than":
        yy, year_ids = prompts.yy, prompts.year_ids
        assert yy is not None and year_ids is not None
        return lambda logits, rows: greater_than_prob_diff(logits, yy[rows.cpu()], year_ids)
    right, wrong = prompts.correct_ids, prompts.wrong_ids
    assert right is not None and wrong is not None
    return lambda logits, rows: docstring_logit_diff(logits, right[rows.cpu()], wrong[rows.cpu()])


def make_task_pairs(
    task: str, tokenizer: Any, n: int, seed: int = 0, split: str = "dev"
) -> TaskPairs:
    """Return up to `n` positive/negative pairs of `task` ("ioi", "greater-than", "docstring").

    Negatives follow O'Neill & Bui (three distinct names; start year "01"; `random_random`);
    pairs whose two prompts tokenize to different lengths are dropped.
    """
    if task == "ioi":
        pos = make_ioi_prompts(tokenizer, n, seed=seed, split=split)
        neg = ioi_negatives(tokenizer, pos, seed=seed)
    elif task == "greater-than":
        pos = make_greater_than_prompts(tokenizer, n, seed=seed, split=split)
        neg = greater_than_negatives(tokenizer, pos)
    elif task == "docstring":
        pos = make_docstring_prompts(tokenizer, n, seed=seed, split=split)
        neg = docstring_negatives(tokenizer, pos, seed=seed)
    else:
        raise SparseCircuitsError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    keep = same_length_pairs(pos, neg)
    if len(keep) < 2:
        raise SparseCircuitsError(
            f"fewer than 2 {task} prompt pairs tokenize to equal lengths with this tokenizer"
        )
    pos, neg = pos.take(keep), neg.take(keep)
    return TaskPairs(task, pos, neg, _metric(task, pos))


def pad_to(ids: Tensor, width: int) -> Tensor:
    """Return `ids [n, p]` right-padded to `[n, width]` by repeating its last column."""
    if ids.shape[1] >= width:
        return ids
    return torch.cat([ids, ids[:, -1:].expand(-1, width - ids.shape[1])], dim=1)


def pair_batch(pairs: TaskPairs, start: int, stop: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return `(rows [b], positive ids [b, p], negative ids [b, p], last_pos [b])` of pairs
    `start:stop`, both id tensors padded to one width."""
    pos_ids = pairs.positives.input_ids[start:stop]
    neg_ids = pairs.negatives.input_ids[start:stop]
    width = max(pos_ids.shape[1], neg_ids.shape[1])
    last = pairs.positives.last_pos[start:stop]
    return torch.arange(start, stop), pad_to(pos_ids, width), pad_to(neg_ids, width), last
