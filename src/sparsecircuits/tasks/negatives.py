"""Negative prompts for the circuit tasks: minimally different prompts where the task is impossible.

O'Neill & Bui (2024) contrast each task's positive prompts with negatives:

* IOI: the same sentence with three distinct names ("ABC"): the IO slot gets a third name and
  the first S mention becomes the original IO, so no name repeats and no answer is unique;
* greater-than: the start year's last two digits become "01";
* docstring: the `random_random` corruption: the signature's arguments and the documented
  parameter names are both redrawn at random, so no documented name matches the signature.

Each function maps positive prompts to paired negatives, prompt i to prompt i, and keeps the
positives' answer fields (so a task metric can be read on the negatives with the positives'
labels). Only single-token words are swapped, so a pair usually has the same token length;
`same_length_pairs` returns the pairs where it does.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

import torch

from sparsecircuits.tasks.common import TaskPrompts, batch_token_lists, encode, require_pool
from sparsecircuits.tasks.docstring import docstring_params
from sparsecircuits.tasks.ioi import ioi_names


def _retokenized(tokenizer: Any, prompts: TaskPrompts, texts: list[str], task: str) -> TaskPrompts:
    """Return `prompts` with `texts` and their tokens (same answers and labels)."""
    prepend_bos = bool(prompts.meta.get("prepend_bos", True))
    token_lists = [encode(tokenizer, t) for t in texts]
    input_ids, last_pos = batch_token_lists(tokenizer, token_lists, prepend_bos)
    return replace(
        prompts,
        input_ids=input_ids,
        last_pos=last_pos,
        texts=texts,
        meta={**prompts.meta, "negative": task},
    )


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])")


def ioi_abc_text(text: str, io: str, s: str, third: str) -> str:
    """Return the three-name version of one IOI prompt (answer already dropped).

    Every IO mention becomes `third`, then the first S mention becomes `io`: "When Mary and
    John went..., John gave a drink to" -> "When Alice and Mary went..., John gave a drink to".
    """
    first_s = _word(s).search(text)
    if first_s is None:
        raise ValueError(f"subject {s!r} not in {text!r}")
    head, tail = text[: first_s.start()], text[first_s.end() :]
    swap = _word(io)
    return swap.sub(third, head) + io + swap.sub(third, tail)


def ioi_negatives(tokenizer: Any, prompts: TaskPrompts, seed: int = 0) -> TaskPrompts:
    """Return the three-distinct-names negatives of IOI `prompts` (`make_ioi_prompts` output).

    The third name is drawn (seeded) from the same split's single-token names.
    """
    assert prompts.io_ids is not None and prompts.s_ids is not None
    names = ioi_names(tokenizer, prompts.meta.get("split", "dev"))
    require_pool(names, 3, "IOI names")
    rng = random.Random(seed)
    texts = []
    for i, text in enumerate(prompts.texts):
        io = prompts.answers[i].strip()
        s = tokenizer.decode([int(prompts.s_ids[i])]).strip()
        third = rng.choice([n for n in names if n not in (io, s)])
        texts.append(ioi_abc_text(text, io, s, third))
    return _retokenized(tokenizer, prompts, texts, "ioi_abc")


_START_YEAR = re.compile(r"(year \d\d)(\d\d)( to )")


def greater_than_negatives(tokenizer: Any, prompts: TaskPrompts) -> TaskPrompts:
    """Return the "01" negatives of greater-than `prompts`: the start year XXYY becomes XX01."""
    texts = []
    for text in prompts.texts:
        if not _START_YEAR.search(text):
            raise ValueError(f"no start year in {text!r}")
        texts.append(_START_YEAR.sub(r"\g<1>01\g<3>", text, count=1))
    return _retokenized(tokenizer, prompts, texts, "greater_than_01")


_SIGNATURE = re.compile(r"\(self, ([^)]*)\):")
_PARAM = re.compile(r":param (\w+):")


def docstring_negatives(tokenizer: Any, prompts: TaskPrompts, seed: int = 0) -> TaskPrompts:
    """Return the `random_random` negatives of docstring `prompts`.

    The signature's arguments and the documented `:param` names are redrawn (seeded) from the
    split's single-token parameter names, the documented ones disjoint from the signature.
    """
    pool = docstring_params(tokenizer, prompts.meta.get("split", "dev"))
    rng = random.Random(seed)
    texts = []
    for text in prompts.texts:
        sig = _SIGNATURE.search(text)
        if sig is None:
            raise ValueError(f"no signature in {text!r}")
        n_args = len(sig.group(1).split(", "))
        n_doc = len(_PARAM.findall(text))
        require_pool(pool, n_args + n_doc, "docstring parameter names")
        drawn = rng.sample(pool, n_args + n_doc)
        args, docs = drawn[:n_args], drawn[n_args:]
        text = text[: sig.start(1)] + ", ".join(args) + text[sig.end(1) :]
        pieces = _PARAM.split(text)  # text, name, text, name, ..., text
        pieces[1::2] = docs
        texts.append("".join(p if i % 2 == 0 else f":param {p}:" for i, p in enumerate(pieces)))
    return _retokenized(tokenizer, prompts, texts, "docstring_random_random")


def same_length_pairs(positives: TaskPrompts, negatives: TaskPrompts) -> torch.Tensor:
    """Return the indices `[k]` of pairs whose positive and negative have the same token length."""
    return torch.nonzero(positives.last_pos == negatives.last_pos).flatten()
