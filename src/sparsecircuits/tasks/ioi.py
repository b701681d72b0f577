"""Indirect object identification (Wang et al. 2022).

"When Mary and John went to the store, John gave a drink to" -> " Mary". The answer (IO) is
the name that is not repeated; S is the repeated subject. ABBA and BABA orders are both used.
Three splits, each with its own names, templates, places and objects:

* train: `NAMES_TRAIN`, `TEMPLATES_TRAIN` and the compositional grammar (`compositional_template`),
  all of the shape "{B} and {A} <activity>, {B} <gives> a {OBJECT} to {A}";
* dev: `NAMES_HELDOUT` and `TEMPLATES_HELDOUT`, two- or three-word edits of that shape;
* test: `NAMES_TEST`, names no task text contains, and `TEMPLATES_TEST`, whose first mentions are
  not "{B} and {A}" and whose verbs (`TEST_TEMPLATE_VERBS`) no training sentence uses.
"""

from __future__ import annotations

import random
import re
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

NAMES_TRAIN = word_pool("ioi_names_train")
NAMES_HELDOUT = word_pool("ioi_names_heldout")
# Names of no task text and no neutral training sentence that the embedded tokenizer still keeps
# as single tokens (the metric compares the IO and S tokens); the only such real names it has.
NAMES_TEST = ["Andre", "Don", "Jan", "Norm"]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
# Held-out prompts use places and objects that no IOI training sentence contains.
PLACES_HELDOUT = ["library", "park", "museum", "beach", "bakery", "market"]
OBJECTS_HELDOUT = ["book", "letter", "cake", "hat", "ticket", "camera", "flower", "pencil"]

# BABA order: {B} {A} ... {B} ... {A}; ABBA swaps the first two name slots.
TEMPLATES_TRAIN = [
    "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to {A}",
    "When {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to {A}",
    "After {B} and {A} arrived at the {PLACE}, {B} handed a {OBJECT} to {A}",
    "While {B} and {A} were at the {PLACE}, {B} passed a {OBJECT} to {A}",
    "Then, {B} and {A} had a long day at the {PLACE}. {B} gave a {OBJECT} to {A}",
    "Yesterday {B} and {A} walked to the {PLACE}, and {B} brought a {OBJECT} to {A}",
    "{B} and {A} met at the {PLACE}. Later, {B} sent a {OBJECT} to {A}",
    "Friends {B} and {A} went to the {PLACE}. {B} showed a {OBJECT} to {A}",
    "At the {PLACE}, {B} and {A} talked for hours. Then {B} gave a {OBJECT} to {A}",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give it to {A}",
]
TEMPLATES_HELDOUT = [
    "The {PLACE} was busy when {B} and {A} arrived. {B} offered a {OBJECT} to {A}",
    "After the lunch, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to {A}",
    "Then, {B} and {A} were working at the {PLACE}. {B} decided to give a {OBJECT} to {A}",
]
# Test templates: the two names first meet in other clause shapes than "{B} and {A}", and the
# final act is a verb of no training template. `{B}` is mentioned first; ABBA swaps the first two
# mentions (`ioi_sentence`).
TEMPLATES_TEST = [
    "{B} kept waiting for {A} outside the {PLACE}, so {B} wrote a short note to {A}",
    "It was {B} who found {A} near the {PLACE}; afterwards {B} explained the whole story to {A}",
    "{B} phoned {A} about the {OBJECT}. The next morning, {B} delivered it to {A}",
    "Since {B} owed {A} a favour, {B} promised a {OBJECT} to {A}",
    "{B} smiled at {A} across the {PLACE} before {B} sang a song to {A}",
    "The {OBJECT} that {B} bought for {A} at the {PLACE} was heavy, so {B} carried it over to {A}",
    "Whenever {B} visits {A} at the {PLACE}, {B} reads the news aloud to {A}",
    "Although {B} disagreed with {A} about the {OBJECT}, {B} apologised to {A}",
]
TEST_TEMPLATE_VERBS = [
    "waiting", "wrote", "found", "explained", "phoned", "delivered", "owed", "promised",
    "smiled", "sang", "bought", "carried", "visits", "reads", "disagreed", "apologised",
]  # fmt: skip
PLACES_TEST = ["kitchen", "cinema", "airport", "farm", "lake", "stadium", "zoo", "forest"]
OBJECTS_TEST = ["map", "coin", "cup", "lamp", "scarf", "guitar", "wallet", "candle", "umbrella"]

# Words of the held-out templates that the compositional training grammar never uses, so a
# held-out template is new in its wording as well as in its whole.
HELDOUT_TEMPLATE_WORDS = ["busy", "offered", "lunch", "working", "decided to give a"]

# The compositional grammar behind most training sentences: thousands of templates, so the
# model has to learn the rule (the name that is not repeated) rather than a template.
_SUBORDINATE = ["When", "After", "While", "Once", "As soon as", "Because", "Since", "Before"]
_SENTENCE_LEADS = [
    "Then,", "Yesterday", "Later,", "Earlier,", "Today", "This morning,", "On Sunday,",
    "Last week,", "In the evening,", "", "Friends", "Afterwards,", "One day,", "Next,",
]  # fmt: skip
_ACTIVITIES = [
    "went to the {PLACE}", "arrived at the {PLACE}", "were at the {PLACE}",
    "walked to the {PLACE}", "met at the {PLACE}", "stayed at the {PLACE}",
    "had dinner at the {PLACE}", "came back from the {PLACE}", "looked around the {PLACE}",
    "waited at the {PLACE}", "left the {PLACE}", "visited the {PLACE}", "drove to the {PLACE}",
    "sat in the {PLACE}", "spent the day at the {PLACE}", "were talking at the {PLACE}",
    "got to the {PLACE}", "ran to the {PLACE}", "were cleaning the {PLACE}",
    "had a long day at the {PLACE}",
]  # fmt: skip
_PLACE_FIRST = [
    "At the {PLACE}, {B} and {A} {CHAT}.",
    "The {PLACE} was {ADJ} when {B} and {A} {ARRIVE}.",
    "Inside the {PLACE}, {B} and {A} {CHAT}.",
    "It was {ADJ} at the {PLACE}, so {B} and {A} {CHAT}.",
]
_CHAT = ["talked for hours", "sat down", "waited", "laughed", "had a chat", "looked around"]
_ADJ = ["quiet", "crowded", "empty", "warm", "cold", "noisy", "dark", "full"]
_ARRIVE = ["came in", "walked in", "showed up", "got there", "sat down", "left"]
_MIDS = ["", "", "", "Later, ", "Then ", "After a while, ", "Soon, ", "In the end, "]
# The grammar's giving verbs.
GIVES = (
    "gave", "handed", "passed", "brought", "sent", "showed", "threw", "lent", "sold", "mailed",
    "returned", "tossed", "wanted to give", "tried to hand", "forgot to give",
    "was happy to give", "went on to give", "chose to give",
)  # fmt: skip


def compositional_template(rng: random.Random) -> str:
    """Return a random BABA-form IOI template from the training grammar (never a held-out one),
    its giving verb drawn from `GIVES`.

    The result has `{B} and {A}` as its first " and ", then `{B}` once more, and ends "to {A}".
    """
    give = f"{{B}} {rng.choice(GIVES)} {rng.choice(['a', 'the'])} {{OBJECT}} to {{A}}"
    form = rng.random()
    if form < 0.35:
        act = rng.choice(_ACTIVITIES)
        return f"{rng.choice(_SUBORDINATE)} {{B}} and {{A}} {act}, {give}"
    if form < 0.75:
        lead = rng.choice(_SENTENCE_LEADS)
        act = rng.choice(_ACTIVITIES)
        mid = rng.choice(_MIDS)
        return f"{lead} {{B}} and {{A}} {act}. {mid}{give}".lstrip()
    opening = rng.choice(_PLACE_FIRST).format(
        PLACE="{PLACE}",
        A="{A}",
        B="{B}",
        CHAT=rng.choice(_CHAT),
        ADJ=rng.choice(_ADJ),
        ARRIVE=rng.choice(_ARRIVE),
    )
    return f"{opening} {rng.choice(_MIDS)}{give}"


_NAME_SLOT = re.compile(r"\{[AB]\}")


def ioi_sentence(template: str, io: str, s: str, place: str, obj: str, order: str) -> str:
    """Return the full IOI sentence (ending with the IO name) for a BABA-form template (first
    name slot {B}, second {A}); for ABBA the first two name slots are swapped."""
    if order not in ("ABBA", "BABA"):
        raise ValueError(order)
    names = iter([s, io] if order == "BABA" else [io, s])

    def name(slot: re.Match[str]) -> str:
        return next(names, s if slot.group() == "{B}" else io)

    text = _NAME_SLOT.sub(name, template)
    return text.replace("{PLACE}", place).replace("{OBJECT}", obj)


def ioi_training_text(
    rng: random.Random,
    compositional: float = 0.0,
    word_pool: Sequence[str] = (),
    word_share: float = 0.0,
) -> str:
    """Return one complete IOI sentence (answer and full stop included) from training pools only.

    The template comes from `compositional_template` with probability `compositional`, else from
    `TEMPLATES_TRAIN`; with probability `word_share` the names, place and object are words of
    `word_pool` instead, so the rule is learned for any token (held-out words never drawn).
    """
    template = (
        compositional_template(rng) if rng.random() < compositional else rng.choice(TEMPLATES_TRAIN)
    )
    if word_pool and rng.random() < word_share:
        held = set(NAMES_HELDOUT) | set(PLACES_HELDOUT) | set(OBJECTS_HELDOUT)
        held |= set(NAMES_TEST) | set(PLACES_TEST) | set(OBJECTS_TEST)
        # four distinct words: a place or object equal to a name would break the task
        io, s, place, obj = rng.sample([w for w in word_pool if w not in held], 4)
    else:
        io, s = rng.sample(NAMES_TRAIN, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    text = ioi_sentence(template, io, s, place, obj, rng.choice(["ABBA", "BABA"]))
    return text + "."


def ioi_names(tokenizer: Any, split: str) -> list[str]:
    """Return the names of `split` that are one token (with a leading space) for `tokenizer`."""
    return single_token_words(tokenizer, pool_for(split, NAMES_TRAIN, NAMES_HELDOUT, NAMES_TEST))


def make_ioi_prompts(
    tokenizer: Any,
    n: int,
    seed: int | None = None,
    split: str = "dev",
    prepend_bos: bool = True,
) -> TaskPrompts:
    """Return `n` IOI prompts ending just before the indirect object (half ABBA, half BABA):
    `io_ids`, `s_ids [n]` (ids of " IO", " S"), `last_pos [n]` at the final " to". `seed`
    defaults to the split's documented seed (`common.DEFAULT_SEEDS`)."""
    split = check_split(split)
    names = ioi_names(tokenizer, split)
    require_pool(names, 2, "IOI names")
    places = pool_for(split, PLACES, PLACES_HELDOUT, PLACES_TEST)
    objects = pool_for(split, OBJECTS, OBJECTS_HELDOUT, OBJECTS_TEST)
    templates = pool_for(split, TEMPLATES_TRAIN, TEMPLATES_HELDOUT, TEMPLATES_TEST)
    rng = random.Random(split_seed(split, seed))
    texts, answers, io_ids, s_ids = [], [], [], []
    for i in range(n):
        io, s = rng.sample(names, 2)
        order = "ABBA" if i % 2 == 0 else "BABA"
        full = ioi_sentence(
            rng.choice(templates), io, s, rng.choice(places), rng.choice(objects), order
        )
        prompt = full[: -len(" " + io)]
        texts.append(prompt)
        answers.append(" " + io)
        io_ids.append(single_token_id(tokenizer, " " + io))
        s_ids.append(single_token_id(tokenizer, " " + s))
    meta = {"task": "ioi", "split": split}
    return build_prompts(tokenizer, texts, answers, prepend_bos, meta, io_ids=io_ids, s_ids=s_ids)


def ioi_logit_diff(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Return `logit(IO) - logit(S)` per prompt, `[n]`, from `logits [n, vocab]`."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, io_ids.to(logits.device)] - logits[rows, s_ids.to(logits.device)]
