"""Docstring task (Heimersheim & Janiak 2023): predict the next parameter name in a docstring
(prompt shape in docs/internals.md)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from sparsecircuits.tasks.common import (
    TaskPrompts,
    build_prompts,
    check_split,
    require_pool,
    single_token_id,
    single_token_words,
    word_list,
)

PARAMS_TRAIN = word_list("docstring_params_train")
PARAMS_HELDOUT = word_list("docstring_params_heldout")
DESC_WORDS = word_list("docstring_desc_words")
METHOD_VERBS = word_list("docstring_method_verbs")


def _method_name(rng: random.Random) -> str:
    return f"{rng.choice(METHOD_VERBS)}_{rng.choice(DESC_WORDS)}"


def _desc(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(DESC_WORDS) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


def _arg_desc(rng: random.Random) -> str:
    return f"{rng.choice(DESC_WORDS)} {rng.choice(DESC_WORDS)}"


def docstring_training_text(
    rng: random.Random, extra_params: Sequence[str] = (), extra_share: float = 0.0
) -> str:
    """Return one Python method whose reST docstring documents a contiguous run of its arguments;
    its names are `PARAMS_TRAIN`, or with probability `extra_share` also `extra_params` (so copying
    works for any name), never `PARAMS_HELDOUT`."""
    n_args = rng.randint(3, 7)
    pool: Sequence[str] = PARAMS_TRAIN
    if extra_params and rng.random() < extra_share:
        held = set(PARAMS_HELDOUT)
        pool = list(PARAMS_TRAIN) + [p for p in extra_params if p not in held]
    args = rng.sample(pool, n_args)
    first = rng.randint(0, n_args - 2)
    last = rng.randint(first + 2, n_args)
    lines = [
        f"def {_method_name(rng)}(self, {', '.join(args)}):",
        f'    """{_desc(rng, rng.randint(2, 5))}',
        "",
    ]
    lines += [f"    :param {a}: {_arg_desc(rng)}" for a in args[first:last]]
    lines += ['    """', f"    return {rng.choice(args)}"]
    return "\n".join(lines) + "\n"


def make_docstring_prompts(
    tokenizer: Any,
    n: int,
    seed: int = 0,
    split: str = "heldout",
    prepend_bos: bool = True,
    n_def_prefix_args: int = 2,
    n_matching_args: int = 3,
    n_def_suffix_args: int = 1,
) -> TaskPrompts:
    """Return `n` docstring prompts ending in "    :param" (`last_pos [n]`): `correct_ids [n]`, the
    next argument, and `wrong_ids [n, k]`, the signature's other arguments."""
    check_split(split)
    params = single_token_words(tokenizer, PARAMS_HELDOUT if split == "heldout" else PARAMS_TRAIN)
    n_args = n_def_prefix_args + n_matching_args + n_def_suffix_args
    require_pool(params, n_args, "docstring parameter names")
    rng = random.Random(seed)
    texts, answers, correct, wrong = [], [], [], []
    for _ in range(n):
        args = rng.sample(params, n_args)
        matching = args[n_def_prefix_args : n_def_prefix_args + n_matching_args]
        lines = [
            f"def {_method_name(rng)}(self, {', '.join(args)}):",
            f'    """{_desc(rng, 3)}',
            "",
        ]
        lines += [f"    :param {a}: {_arg_desc(rng)}" for a in matching[:-1]]
        lines.append("    :param")
        answer = matching[-1]
        texts.append("\n".join(lines))
        answers.append(" " + answer)
        correct.append(single_token_id(tokenizer, " " + answer))
        wrong.append([single_token_id(tokenizer, " " + a) for a in args if a != answer])
    meta = {"task": "docstring", "split": split}
    return build_prompts(
        tokenizer, texts, answers, prepend_bos, meta, correct_ids=correct, wrong_ids=wrong
    )


def docstring_logit_diff(
    logits: torch.Tensor, correct_ids: torch.Tensor, wrong_ids: torch.Tensor
) -> torch.Tensor:
    """Return `logit(correct) - max logit(wrong args)` per prompt, `[n]`."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    right = logits[rows, correct_ids.to(logits.device)]
    return right - logits.gather(1, wrong_ids.to(logits.device)).max(-1).values


def docstring_accuracy(logits: torch.Tensor, correct_ids: torch.Tensor) -> torch.Tensor:
    """Return 1.0 where the argmax over the full vocabulary is the correct id, else 0.0; `[n]`."""
    return (logits.argmax(-1) == correct_ids.to(logits.device)).float()
