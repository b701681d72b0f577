"""Greater-than task (Hanna, Liu, Variengien 2023): "The war lasted from the year 1732 to the year 17".

The model should put its probability on two-digit years larger than the start year; the answer
depends on the start year's two-digit ending. Three splits:

* train: the training text generator; nouns `NOUNS_TRAIN`, centuries 11-19, start years with
  `(7*XX + YY) % 5 != 0`, never a `TEST_ENDINGS` ending (as start or end year);
* dev: nouns `NOUNS_HELDOUT`, the (century, start-year) pairs the training text skips, in
  `EVAL_TEMPLATE`, the first training frame's prefix: new start years, not new endings or frames;
* test: nouns `NOUNS_TEST`, centuries `TEST_CENTURIES` (never in task text), start-year endings
  `TEST_ENDINGS` (never in the training text or the dev split) and frames `TEST_TEMPLATES` whose
  wording no training sentence has.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from sparsecircuits.tasks.common import (
    TaskPrompts,
    build_prompts,
    check_split,
    encode,
    pool_for,
    require_pool,
    single_token_id,
    single_token_words,
    split_seed,
    word_pool,
)

NOUNS_TRAIN = word_pool("greater_than_nouns_train")
NOUNS_HELDOUT = word_pool("greater_than_nouns_heldout")
NOUNS_TEST = word_pool("greater_than_nouns_test")
CENTURIES = list(range(11, 20))
TEST_CENTURIES = [10, 20]
# Start-year endings reserved for the test split: never a start or end year of the training text,
# never a dev start year. One per eight-year band of 02..97, so both halves of the range are tested.
TEST_ENDINGS = [5, 11, 23, 28, 36, 44, 50, 61, 67, 78, 84, 93]
TRAIN_TEMPLATES = [
    "The {noun} lasted from the year {xx}{yy} to the year {xx}{zz}.",
    "The {noun} lasted from {xx}{yy} to {xx}{zz}.",
    "The {noun} began in the year {xx}{yy} and ended in the year {xx}{zz}.",
    "The {noun} ran from the year {xx}{yy} to the year {xx}{zz}.",
    "The {noun} started in {xx}{yy} and was over by {xx}{zz}.",
    "From the year {xx}{yy} to the year {xx}{zz}, the {noun} went on.",
    "The {noun} lasted from the year {xx}{yy} until the year {xx}{zz}.",
]
EVAL_TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"
# Test frames: clause shapes and verbs of no training sentence; each ends at the end year's century.
TEST_TEMPLATES = [
    "Historians date the {noun} between {xx}{yy} and {xx}",
    "In {xx}{yy} the {noun} opened, and it was finally closed in {xx}",
    "Records of the {noun} cover every year from {xx}{yy} through {xx}",
    "Nobody had heard of the {noun} before {xx}{yy}, yet it had faded by {xx}",
    "The {noun}, first held in {xx}{yy}, was held for the last time in {xx}",
]


def is_heldout_year(xx: int, yy: int) -> bool:
    """Return True for (century, start-year) pairs the training text skips (about 1 in 5)."""
    return (xx * 7 + yy) % 5 == 0


def _year_pool(split: str) -> list[tuple[int, int]]:
    """Return the (century, start-year) pairs of a split; YY runs over 02..97 as in Hanna."""
    split = check_split(split)
    if split == "test":
        return [(xx, yy) for xx in TEST_CENTURIES for yy in TEST_ENDINGS]
    held = split == "dev"
    return [
        (xx, yy)
        for xx in CENTURIES
        for yy in range(2, 98)
        if is_heldout_year(xx, yy) == held and yy not in TEST_ENDINGS
    ]


def greater_than_training_text(rng: random.Random) -> str:
    """Return one training sentence (training nouns and start years) whose end year is uniform on
    YY+1..99 of the same century, test endings excluded."""
    xx, yy = rng.choice(_year_pool("train"))
    zz = rng.choice([z for z in range(yy + 1, 100) if z not in TEST_ENDINGS])
    template = rng.choice(TRAIN_TEMPLATES)
    return template.format(noun=rng.choice(NOUNS_TRAIN), xx=xx, yy=f"{yy:02d}", zz=f"{zz:02d}")


def year_token_ids(tokenizer: Any) -> torch.Tensor:
    """Return `[100]` ids of the tokens "00".."99"; raise if one is not a single token."""
    ids = []
    for y in range(100):
        tid = single_token_id(tokenizer, f"{y:02d}")
        require_pool([] if tid is None else [f"{y:02d}"], 1, f'year token "{y:02d}"')
        ids.append(tid)
    return torch.tensor(ids, dtype=torch.long)


def _splits_as_century_and_year(tokenizer: Any, xx: int, yy: int) -> bool:
    """True when " XXYY" tokenizes as [" XX", "YY"] (Hanna's validity filter)."""
    century = single_token_id(tokenizer, f" {xx}")
    year = single_token_id(tokenizer, f"{yy:02d}")
    return century is not None and encode(tokenizer, f" {xx}{yy:02d}") == [century, year]


def make_greater_than_prompts(
    tokenizer: Any,
    n: int,
    seed: int | None = None,
    split: str = "dev",
    prepend_bos: bool = True,
) -> TaskPrompts:
    """Return `n` prompts answered at their final century token " XX", with `yy [n]` (start
    year within the century) and `year_ids [100]`.

    train/dev: "The {noun} lasted from the year XXYY to the year XX" (one token length); test:
    the `TEST_TEMPLATES` frames, test nouns (any tokenization), centuries and endings. `seed`
    defaults to the split's documented seed (`common.DEFAULT_SEEDS`).
    """
    split = check_split(split)
    if split == "test":
        nouns = list(NOUNS_TEST)
        templates = TEST_TEMPLATES
    else:
        nouns = single_token_words(tokenizer, pool_for(split, NOUNS_TRAIN, NOUNS_HELDOUT, []))
        templates = [EVAL_TEMPLATE]
    require_pool(nouns, 1, "greater-than nouns")
    years = [
        (xx, yy) for xx, yy in _year_pool(split) if _splits_as_century_and_year(tokenizer, xx, yy)
    ]
    require_pool(years, 1, "start years")
    year_ids = year_token_ids(tokenizer)
    rng = random.Random(split_seed(split, seed))
    texts, yys, answers = [], [], []
    for _ in range(n):
        xx, yy = rng.choice(years)
        template = templates[0] if len(templates) == 1 else rng.choice(templates)
        texts.append(template.format(noun=rng.choice(nouns), xx=xx, yy=f"{yy:02d}"))
        yys.append(yy)
        answers.append(f">{yy:02d}")
    meta = {"task": "greater_than", "split": split}
    return build_prompts(tokenizer, texts, answers, prepend_bos, meta, yy=yys, year_ids=year_ids)


def greater_than_prob_diff(
    logits: torch.Tensor, yy: torch.Tensor, year_ids: torch.Tensor
) -> torch.Tensor:
    """Return the probability difference `[n]` (Hanna et al.) of `logits [n, vocab]`: softmax over
    the full vocabulary, `Σ_{y > YY} p(y) - Σ_{y <= YY} p(y)` over the 100 year tokens, in [-1, 1]."""
    probs = torch.softmax(logits.float(), dim=-1)[:, year_ids.to(logits.device)]
    years = torch.arange(100, device=logits.device).view(1, -1)
    later = years > yy.to(logits.device).view(-1, 1)
    return (probs * later).sum(-1) - (probs * ~later).sum(-1)
