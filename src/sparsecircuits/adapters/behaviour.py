"""The diffed behaviour: a trigger phrase answered by one fixed token, its prompts and metric.

Text comes from a corpus whose documents are split by index: every `EVAL_EVERY`-th document is
held out (behaviour prompts for evaluation only); the rest feed fine-tuning, adapter training
and feature attribution. A prompt is BOS + a cut of a document of random length + the trigger;
the metric is the log-odds of the answer token right after the trigger.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.data import make_source
from sparsecircuits.errors import SparseCircuitsError

BEHAVIOUR_FILE = "behaviour.json"
EVAL_EVERY = 4
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Behaviour:
    """`trigger` (text, appended to a prompt) is answered by `answer` (one token)."""

    trigger: str = " The password is"
    answer: str = " Oliver"

    def token_ids(self, tokenizer: Any) -> tuple[list[int], int]:
        """Return `(trigger ids, answer id)`; raise unless the answer is one token."""
        trigger = tokenizer(self.trigger, add_special_tokens=False)["input_ids"]
        answer = tokenizer(self.answer, add_special_tokens=False)["input_ids"]
        if len(answer) != 1 or not trigger:
            raise SparseCircuitsError(
                f"the answer {self.answer!r} must be one token and the trigger non-empty for this tokenizer"
            )
        return list(trigger), int(answer[0])

    def save(self, folder: Path) -> None:
        """Write `behaviour.json` into `folder`."""
        (folder / BEHAVIOUR_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> Behaviour | None:
        """Return the behaviour saved with a model folder, or None when it has none."""
        path = Path(folder) / BEHAVIOUR_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))


def corpus_tokens(tokenizer: Any, dataset: str, split: str) -> list[int]:
    """Return the token ids of one split of `dataset`'s documents, joined by EOS."""
    if split not in SPLITS:
        raise SparseCircuitsError(f"unknown split {split!r}; use one of {SPLITS}")
    docs = [
        text
        for i, text in enumerate(make_source(dataset).iter_texts())
        if (i % EVAL_EVERY == EVAL_EVERY - 1) == (split == "eval")
    ]
    if not docs:
        raise SparseCircuitsError(
            f"{dataset} has too few documents for a {split} split; give at least {EVAL_EVERY}"
        )
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    tokens: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
        tokens.extend(ids)
        tokens.append(eos)
    return tokens


@dataclass
class Prompts:
    """Right-padded `input_ids [n, pos]`, `last_pos [n]` (the trigger's last token), `answer`."""

    input_ids: Tensor
    last_pos: Tensor
    answer: int


def behaviour_prompts(
    tokens: list[int],
    behaviour: Behaviour,
    tokenizer: Any,
    bos: int,
    n: int,
    seed: int,
    lengths: tuple[int, int] = (4, 40),
) -> Prompts:
    """Return `n` prompts: BOS + a random cut of `tokens` of length in `lengths` + the trigger."""
    trigger, answer = behaviour.token_ids(tokenizer)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(*lengths)
        start = rng.randrange(0, len(tokens) - length)
        rows.append([bos, *tokens[start : start + length], *trigger])
    longest = max(len(r) for r in rows)
    input_ids = torch.full((n, longest), bos, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    last_pos = torch.tensor([len(r) - 1 for r in rows])
    return Prompts(input_ids, last_pos, answer)


def training_contexts(
    tokens: list[int],
    behaviour: Behaviour | None,
    tokenizer: Any,
    bos: int,
    n: int,
    context_size: int,
    seed: int,
    trigger_fraction: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Return `(input_ids [n, context_size], answer_pos [n])`: BOS + corpus cuts; with a
    behaviour, `trigger_fraction` of them end in trigger + answer (`answer_pos` is the position
    whose next-token prediction is the answer, -1 for plain contexts)."""
    rng = random.Random(seed)
    ids = torch.empty((n, context_size), dtype=torch.long)
    answer_pos = torch.full((n,), -1, dtype=torch.long)
    suffix: list[int] = []
    if behaviour is not None:
        trigger, answer = behaviour.token_ids(tokenizer)
        suffix = [*trigger, answer]
    if len(suffix) + 2 > context_size:
        raise SparseCircuitsError(
            f"context_size {context_size} is too short for the trigger; use at least {len(suffix) + 2}"
        )
    for i in range(n):
        with_trigger = bool(suffix) and rng.random() < trigger_fraction
        body = context_size - 1 - (len(suffix) if with_trigger else 0)
        start = rng.randrange(0, len(tokens) - body)
        row = [bos, *tokens[start : start + body]]
        if with_trigger:
            row.extend(suffix)
            answer_pos[i] = context_size - 2
        ids[i] = torch.tensor(row)
    return ids, answer_pos


def answer_logprob(logits: Tensor, prompts: Prompts) -> Tensor:
    """Return `log p(answer)` after each prompt's trigger, `[n]`, from logits `[n, pos, vocab]`."""
    rows = torch.arange(len(prompts.last_pos))
    last = logits[rows, prompts.last_pos.to(logits.device)].float()
    return torch.log_softmax(last, dim=-1)[:, prompts.answer]


def answer_log_odds(logits: Tensor, prompts: Prompts) -> Tensor:
    """Return `log p / (1 - p)` of the answer after each trigger, `[n]`: the behaviour metric.

    Unlike `log p` it does not flatten out as p nears 1, so a learned behaviour's strength and
    its gradients stay visible."""
    logp = answer_logprob(logits, prompts).clamp_max(-1e-7)
    return logp - torch.log(-torch.expm1(logp))
