"""Docstring task (Heimersheim & Janiak 2023): predict the next parameter name in a docstring
(prompt shape in docs/internals.md).

Three splits: train (`PARAMS_TRAIN`, plus any lowercase identifier of three or more letters in
the embedded model's task stream) and dev (`PARAMS_HELDOUT`) share one function shape, a method
`def verb_word(self, a, b, ...)` with a one-line summary. The test split uses `PARAMS_TEST`,
two-letter and capital-letter names no training text gives a parameter, in another shape
(`annotated_function_lines`): a module-level function with annotations and defaults, a two-line
summary and `:type:` lines.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from sparsecircuits.tasks.common import (
    TaskPrompts,
    build_prompts,
    check_split,
    pool_for,
    require_pool,
    single_token_id,
    single_token_words,
    split_seed,
    word_pool,
)

PARAMS_TRAIN = word_pool("docstring_params_train")
PARAMS_HELDOUT = word_pool("docstring_params_heldout")
# Test parameter names: short names of numeric and functional code (`op`, `kw`, `X`, `W`) that no
# training generator uses (its extra identifiers have three or more lowercase letters).
PARAMS_TEST = [
    "op", "ch", "kw", "io", "ax", "eq", "ob", "sp", "sh", "sn", "pl", "po",
    "X", "Y", "W", "H", "N", "K", "Q", "V", "L", "T",
]  # fmt: skip
_ANNOTATIONS = ["", ": int", ": str", ": float", ": list"]
_DEFAULTS = ["=None", ": int = 0", ": float = 1.0", ": bool = False"]
_RETURNS = ["None", "int", "str", "bool", "list", "dict"]
DESC_WORDS = word_pool("docstring_desc_words")
METHOD_VERBS = word_pool("docstring_method_verbs")


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
    works for any name), never `PARAMS_HELDOUT` or `PARAMS_TEST`."""
    n_args = rng.randint(3, 7)
    pool: Sequence[str] = PARAMS_TRAIN
    if extra_params and rng.random() < extra_share:
        held = set(PARAMS_HELDOUT) | set(PARAMS_TEST)
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


def method_lines(rng: random.Random, args: Sequence[str], documented: Sequence[str]) -> list[str]:
    """Return the lines of a train/dev-shape method of `args` up to its `documented` `:param`
    lines: `def verb_word(self, a, b, ...):`, a one-line summary, a blank line."""
    lines = [f"def {_method_name(rng)}(self, {', '.join(args)}):", f'    """{_desc(rng, 3)}', ""]
    return lines + [f"    :param {a}: {_arg_desc(rng)}" for a in documented]


def annotated_function_lines(
    rng: random.Random, args: Sequence[str], documented: Sequence[str]
) -> list[str]:
    """Return the lines of a test-shape function of `args` up to its `documented` `:param`
    lines: `def verb_word(a: int, b=None, ...) -> T:`, a two-line summary, and a `:type:` line
    after each `:param` line."""
    n_plain = rng.randint(1, len(args))  # a run of arguments with defaults ends the signature
    signature = ", ".join(
        a + rng.choice(_ANNOTATIONS if i < n_plain else _DEFAULTS) for i, a in enumerate(args)
    )
    lines = [
        f"def {_method_name(rng)}({signature}) -> {rng.choice(_RETURNS)}:",
        f'    """{_desc(rng, 4)}',
        f"    {_desc(rng, 3)}",
        "",
    ]
    for a in documented:
        lines += [f"    :param {a}: {_arg_desc(rng)}", f"    :type {a}: {rng.choice(_RETURNS)}"]
    return lines


def docstring_params(tokenizer: Any, split: str) -> list[str]:
    """Return the parameter names of `split` that are one token (with a leading space)."""
    return single_token_words(tokenizer, pool_for(split, PARAMS_TRAIN, PARAMS_HELDOUT, PARAMS_TEST))


def make_docstring_prompts(
    tokenizer: Any,
    n: int,
    seed: int | None = None,
    split: str = "dev",
    prepend_bos: bool = True,
    n_def_prefix_args: int = 2,
    n_matching_args: int = 3,
    n_def_suffix_args: int = 1,
) -> TaskPrompts:
    """Return `n` docstring prompts ending in "    :param" (`last_pos [n]`): `correct_ids [n]`, the
    next argument, and `wrong_ids [n, k]`, the signature's other arguments. train/dev prompts are
    methods; test prompts have the `annotated_function_lines` shape. `seed` defaults to the
    split's documented seed (`common.DEFAULT_SEEDS`)."""
    split = check_split(split)
    params = docstring_params(tokenizer, split)
    n_args = n_def_prefix_args + n_matching_args + n_def_suffix_args
    require_pool(params, n_args, "docstring parameter names")
    rng = random.Random(split_seed(split, seed))
    texts, answers, correct, wrong = [], [], [], []
    for _ in range(n):
        args = rng.sample(params, n_args)
        matching = args[n_def_prefix_args : n_def_prefix_args + n_matching_args]
        shape = annotated_function_lines if split == "test" else method_lines
        lines = shape(rng, args, matching[:-1])
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
