"""Greater-than task (Hanna, Liu, Variengien 2023): "The war lasted from the year 1732 to the year 17".

The model should put its probability on two-digit years larger than the start year.
Held-out evaluation uses nouns and (century, start-year) pairs that the training text generator
never emits; the tokens themselves (" 17", "32") are shared, as they must be.
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
    require_pool,
    single_token_id,
    single_token_words,
)

NOUNS_TRAIN = [
    "war",
    "battle",
    "conflict",
    "campaign",
    "struggle",
    "dispute",
    "reign",
    "rule",
    "dynasty",
    "empire",
    "expedition",
    "journey",
    "voyage",
    "plague",
    "famine",
    "drought",
    "crisis",
    "revolution",
    "rebellion",
    "uprising",
    "movement",
    "reform",
    "program",
    "project",
    "study",
    "trial",
    "case",
    "treaty",
    "alliance",
    "union",
    "partnership",
    "contract",
    "agreement",
    "tour",
    "festival",
    "season",
    "era",
    "period",
    "age",
    "boom",
    "decline",
    "depression",
    "recession",
    "collapse",
    "occupation",
    "strike",
    "protest",
    "riot",
    "mission",
    "exile",
    "marriage",
    "career",
    "tenure",
    "office",
]
NOUNS_HELDOUT = [
    "siege",
    "crusade",
    "invasion",
    "pilgrimage",
    "schism",
    "truce",
    "ceasefire",
    "embargo",
    "blockade",
    "regime",
    "government",
    "administration",
    "presidency",
    "boycott",
    "feud",
    "migration",
]
CENTURIES = list(range(11, 20))
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


def is_heldout_year(xx: int, yy: int) -> bool:
    """Return True for (century, start-year) pairs reserved for evaluation (about 1 in 5)."""
    return (xx * 7 + yy) % 5 == 0


def _year_pool(split: str) -> list[tuple[int, int]]:
    """Return the (century, start-year) pairs of a split; YY runs over 02..97 as in Hanna."""
    held = split == "heldout"
    return [(xx, yy) for xx in CENTURIES for yy in range(2, 98) if is_heldout_year(xx, yy) == held]


def greater_than_training_text(rng: random.Random) -> str:
    """Return one training sentence (training nouns and start years) whose end year is uniform on
    YY+1..99 of the same century."""
    xx, yy = rng.choice(_year_pool("train"))
    zz = rng.randint(yy + 1, 99)
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
    tokenizer: Any, n: int, seed: int = 0, split: str = "heldout", prepend_bos: bool = True
) -> TaskPrompts:
    """Return `n` prompts "The {noun} lasted from the year XXYY to the year XX" answered at the
    final " XX", with `yy [n]` (start year within the century) and `year_ids [100]`."""
    check_split(split)
    nouns = single_token_words(tokenizer, NOUNS_HELDOUT if split == "heldout" else NOUNS_TRAIN)
    require_pool(nouns, 1, "greater-than nouns")
    years = [
        (xx, yy) for xx, yy in _year_pool(split) if _splits_as_century_and_year(tokenizer, xx, yy)
    ]
    require_pool(years, 1, "start years")
    year_ids = year_token_ids(tokenizer)
    rng = random.Random(seed)
    texts, yys, answers = [], [], []
    for _ in range(n):
        xx, yy = rng.choice(years)
        texts.append(EVAL_TEMPLATE.format(noun=rng.choice(nouns), xx=xx, yy=f"{yy:02d}"))
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
