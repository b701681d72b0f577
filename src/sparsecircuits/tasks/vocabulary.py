"""Neutral training sentences that use every task word, held-out ones included, never in a task
form (docs/internals.md)."""

from __future__ import annotations

import random

from sparsecircuits.tasks import docstring, greater_than, ioi

NAME_TEMPLATES = [
    "{A} lives near the {place}.",
    "{A} likes the {object}.",
    "{A} read a book about the {noun}.",
    "Yesterday {A} met {B} in town.",
    "{A} opened the door and {A} smiled.",
    "{A} wrote about the {noun} in a letter.",
    "{A} and {B} are old friends.",
    "Everyone remembers the {noun}.",
    "{A} called {B} after dinner.",
    "{A} is a teacher.",
    "{A} wrote a letter.",
    "My friend {A} works at the {place}.",
    "{A} was born in a small town.",
    "{A} asked {B} a question.",
    "The {object} belongs to {A}.",
    "{A} thanked {B}.",
    "{A} said hello. {A} was happy.",
    "Ask {A} about it.",
    "{A} and {B} played chess.",
]
CODE_TEMPLATES = [
    "{p} = {q}\n",
    "    if {p} is None:\n        {p} = {q}\n",
    "result = compute({p}, {q})\n",
    "    self.{p} = {p}\n",
    "for {p} in {q}:\n    print({p})\n",
    "return {p}\n",
    "def {p}_of({q}):\n    return {q}.{p}\n",
    "{p}s = [{q}]\n",
]


def vocabulary_text(rng: random.Random) -> str:
    """Return a neutral name sentence or code line; held-out names and parameter names half of the
    time (never in a task structure), so their embeddings are trained."""
    names_pool = ioi.NAMES_HELDOUT if rng.random() < 0.5 else ioi.NAMES_TRAIN
    a, b = rng.sample(names_pool, 2)
    params = docstring.PARAMS_HELDOUT if rng.random() < 0.5 else docstring.PARAMS_TRAIN
    p, q = rng.sample(params, 2)
    if rng.random() < 0.3:
        return rng.choice(CODE_TEMPLATES).format(p=p, q=q)
    return rng.choice(NAME_TEMPLATES).format(
        A=a,
        B=b,
        place=rng.choice(ioi.PLACES),
        object=rng.choice(ioi.OBJECTS),
        noun=rng.choice(greater_than.NOUNS_TRAIN + greater_than.NOUNS_HELDOUT),
    )
