"""Shared pieces of the circuit tasks: the prompt batch dataclass and tokenizer helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files
from typing import Any

import torch

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.tokens import bos_token_id

SPLITS = ("train", "dev", "test")
# "heldout" names the dev split (the prompts the shipped embedded model was developed on).
SPLIT_ALIASES = {"heldout": "dev"}
# The prompt-drawing seed each split uses when none is given. The test split has its own, so no
# test prompt is a dev prompt drawn again; only the final report (`sparsecircuits tasks`, the
# embedded model's card) reads the test split.
DEFAULT_SEEDS = {"train": 0, "dev": 0, "test": 1729}


@dataclass
class TaskPrompts:
    """A batch of right-padded task prompts: `input_ids [n, pos]` and `last_pos [n]`, where the answer
    is predicted. Task fields (None elsewhere): greater-than `yy [n]`, `year_ids [100]`; IOI
    `io_ids`, `s_ids [n]`; docstring `correct_ids [n]`, `wrong_ids [n, k]`. A field whose
    metadata says `shared` belongs to the whole batch, not to one prompt (`take` keeps it)."""

    input_ids: torch.Tensor
    last_pos: torch.Tensor
    texts: list[str]
    answers: list[str]
    yy: torch.Tensor | None = None
    year_ids: torch.Tensor | None = field(default=None, metadata={"shared": True})
    io_ids: torch.Tensor | None = None
    s_ids: torch.Tensor | None = None
    correct_ids: torch.Tensor | None = None
    wrong_ids: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def take(self, index: torch.Tensor) -> TaskPrompts:
        """Return the prompts at `index [k]` (per-prompt fields indexed, `shared` ones kept),
        their padding cropped to the longest kept prompt."""
        n = len(self)
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("shared"):
                continue
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
                picked[f.name] = value[index]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in index.tolist()]
        ids = picked["input_ids"]
        width = int(picked["last_pos"].max()) + 1 if len(index) else ids.shape[1]
        picked["input_ids"] = ids[:, :width]
        return replace(self, **picked)


def word_pool(name: str) -> list[str]:
    """The word pool `tasks/words/{name}.txt` (one word per line, in order) as a list."""
    return (files("sparsecircuits.tasks") / "words" / f"{name}.txt").read_text().split()


def check_split(split: str) -> str:
    """Return the canonical name of `split` ("train", "dev" or "test"; "heldout" means "dev");
    raise a SparseCircuitsError for any other name."""
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in SPLITS:
        raise SparseCircuitsError(f"unknown split {split!r}; use one of {SPLITS}")
    return canonical


def split_seed(split: str, seed: int | None) -> int:
    """Return `seed`, or the split's documented default (`DEFAULT_SEEDS`) when it is None."""
    return DEFAULT_SEEDS[check_split(split)] if seed is None else seed


def pool_for(
    split: str, train: Sequence[str], dev: Sequence[str], test: Sequence[str]
) -> list[str]:
    """Return the word pool of `split` among the three given."""
    return list({"train": train, "dev": dev, "test": test}[check_split(split)])


def encode(tokenizer: Any, text: str) -> list[int]:
    """Return the token ids of `text` without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """Return the id if `text` is exactly one token for `tokenizer`, else None."""
    ids = encode(tokenizer, text)
    return ids[0] if len(ids) == 1 else None


def single_token_words(tokenizer: Any, words: Sequence[str], prefix: str = " ") -> list[str]:
    """Return the words of `words` that are one token when written as `prefix + word`."""
    return [w for w in words if single_token_id(tokenizer, prefix + w) is not None]


def require_pool(pool: Sequence[object], minimum: int, what: str) -> None:
    """Raise a SparseCircuitsError when fewer than `minimum` pool entries survive filtering."""
    if len(pool) < minimum:
        raise SparseCircuitsError(
            f"only {len(pool)} {what} are single tokens for this tokenizer (need {minimum}); "
            "use a tokenizer with a larger vocabulary"
        )


def pad_id(tokenizer: Any) -> int:
    """Return the id used to right-pad prompts (pad, else EOS, else 0)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def batch_token_lists(
    tokenizer: Any, token_lists: Sequence[Sequence[int]], prepend_bos: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists; return `(input_ids [n, pos], last_pos [n])`."""
    start = bos_token_id(tokenizer) if prepend_bos else None
    rows = [([start] if start is not None else []) + list(ids) for ids in token_lists]
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    last = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
    return out, last


def build_prompts(
    tokenizer: Any,
    texts: list[str],
    answers: list[str],
    prepend_bos: bool,
    meta: dict[str, Any],
    **fields: Any,
) -> TaskPrompts:
    """Return the `TaskPrompts` of `texts` (tokenized, right-padded); the task `fields` (ids or
    lists of ids, turned into long tensors) are set as given, and `meta` records `prepend_bos`
    (so negatives built from these prompts tokenize the same way)."""
    token_lists = [encode(tokenizer, text) for text in texts]
    input_ids, last_pos = batch_token_lists(tokenizer, token_lists, prepend_bos)
    tensors = {
        name: value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.long)
        for name, value in fields.items()
    }
    meta = {**meta, "prepend_bos": prepend_bos}
    return TaskPrompts(input_ids, last_pos, texts, answers, meta=meta, **tensors)


def logits_at_last(logits: torch.Tensor, last_pos: torch.Tensor) -> torch.Tensor:
    """Select `logits [n, pos, vocab]` at each prompt's `last_pos [n]`; return `[n, vocab]`."""
    idx = last_pos.to(logits.device).view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
    return logits.gather(1, idx).squeeze(1)
