"""Indirect object identification (Wang et al. 2022).

"When Mary and John went to the store, John gave a drink to" -> " Mary". The answer (IO) is
the name that is not repeated; S is the repeated subject. ABBA and BABA orders are both used.
Held-out evaluation uses names and templates that the IOI training generator never emits.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from sparsecircuits.tasks.common import (
    TaskPrompts,
    batch_token_lists,
    check_split,
    encode,
    require_pool,
    single_token_id,
    single_token_words,
)

NAMES_TRAIN = [  # fmt: skip
    "Mary",
    "John",
    "James",
    "Michael",
    "David",
    "Robert",
    "William",
    "Richard",
    "Thomas",
    "Charles",
    "Daniel",
    "Paul",
    "Mark",
    "George",
    "Steven",
    "Andrew",
    "Kevin",
    "Brian",
    "Edward",
    "Jason",
    "Ryan",
    "Jacob",
    "Eric",
    "Peter",
    "Frank",
    "Scott",
    "Adam",
    "Henry",
    "Jack",
    "Alice",
    "Anna",
    "Sarah",
    "Laura",
    "Emma",
    "Emily",
    "Linda",
    "Susan",
    "Karen",
    "Lisa",
    "Nancy",
    "Helen",
    "Sandra",
    "Carol",
    "Ruth",
    "Amy",
    "Rachel",
    "Kate",
    "Grace",
    "Rose",
    "Julia",
    "Lucy",
    "Jane",
    "Diana",
    "Hannah",
    "Olivia",
    "Sophie",
    "Tom",
    "Sam",
    "Ben",
    "Joe",
    "Adrian",
    "Albert",
    "Alan",
    "Amanda",
    "Andrea",
    "Angela",
    "Anthony",
    "Arthur",
    "Austin",
    "Barbara",
    "Benjamin",
    "Betty",
    "Bill",
    "Bob",
    "Bruce",
    "Carl",
    "Caroline",
    "Catherine",
    "Charlotte",
    "Christine",
    "Cindy",
    "Craig",
    "Dave",
    "Dennis",
    "Derek",
    "Dorothy",
    "Douglas",
    "Dylan",
    "Elizabeth",
    "Ellen",
    "Ethan",
    "Evan",
    "Fiona",
    "Fred",
    "Gabriel",
    "Gordon",
    "Greg",
    "Harry",
    "Heather",
    "Ian",
    "Isaac",
    "Ivan",
    "Jake",
    "Jamie",
    "Janet",
    "Jean",
    "Jeff",
    "Jennifer",
    "Jenny",
    "Jeremy",
    "Jim",
    "Joan",
    "Joel",
    "Jonathan",
    "Jordan",
    "Joseph",
    "Joshua",
    "Joyce",
    "Judy",
    "Julie",
    "Justin",
    "Karl",
    "Katie",
    "Keith",
    "Ken",
    "Kim",
    "Kyle",
    "Larry",
    "Lee",
    "Leon",
    "Lewis",
    "Liam",
    "Louise",
    "Luke",
    "Lynn",
    "Maria",
    "Marie",
    "Martha",
    "Matt",
    "Matthew",
    "Megan",
    "Melissa",
    "Michelle",
    "Mike",
    "Monica",
    "Nathan",
    "Neil",
    "Noah",
    "Norman",
    "Owen",
    "Pamela",
    "Philip",
    "Rebecca",
    "Ray",
    "Roger",
    "Ron",
    "Roy",
    "Russell",
    "Samuel",
    "Sean",
    "Stephen",
    "Stuart",
    "Teresa",
    "Terry",
    "Tony",
    "Tyler",
    "Vincent",
    "Walter",
    "Wayne",
    "Will",
    "Zoe",
    "Bella",
    "Ella",
    "Ruby",
    "Ivy",
    "Nora",
    "Iris",
    "Clara",
    "Dora",
    "Mia",
    "Nina",
    "Tina",
    "Vera",
    "Amber",
    "Jade",
    "Ann",
    "Beth",
    "Carlos",
    "Diego",
    "Juan",
    "Jose",
    "Pedro",
    "Rosa",
    "Hugo",
    "Felix",
    "Oscar",
    "Victor",
    "Hector",
    "Marcus",
    "Rita",
    "Lucas",
    "Ada",
    "Eve",
]
NAMES_HELDOUT = [
    "Alex",
    "Max",
    "Leo",
    "Dan",
    "Tim",
    "Victoria",
    "Claire",
    "Sharon",
    "Donna",
    "Nick",
    "Chris",
    "Martin",
    "Oliver",
    "Lily",
    "Jessica",
    "Kelly",
    "Simon",
    "Patrick",
    "Louis",
    "Eva",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]

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


def _fill(template: str, io: str, s: str, place: str, obj: str, order: str) -> str:
    """Fill a BABA template; for ABBA the first two name slots are swapped."""
    first, second = (s, io) if order == "BABA" else (io, s)
    head, tail = template.split(" and ", 1)
    head = head.replace("{B}", first)
    tail = tail.replace("{A}", second, 1) if order == "ABBA" else tail
    text = (head + " and " + tail).replace("{B}", s).replace("{A}", io)
    return text.replace("{PLACE}", place).replace("{OBJECT}", obj)


def ioi_sentence(template: str, io: str, s: str, place: str, obj: str, order: str) -> str:
    """Return the full IOI sentence (ending with the IO name) for a BABA-form template."""
    if order not in ("ABBA", "BABA"):
        raise ValueError(order)
    return _fill(template, io, s, place, obj, order)


def ioi_training_text(rng: random.Random) -> str:
    """Return one complete IOI sentence (with answer and full stop) from training pools only."""
    io, s = rng.sample(NAMES_TRAIN, 2)
    text = ioi_sentence(
        rng.choice(TEMPLATES_TRAIN),
        io,
        s,
        rng.choice(PLACES),
        rng.choice(OBJECTS),
        rng.choice(["ABBA", "BABA"]),
    )
    return text + "."


def make_ioi_prompts(
    tokenizer: Any, n: int, seed: int = 0, split: str = "heldout", prepend_bos: bool = True
) -> TaskPrompts:
    """Return `n` IOI prompts ending just before the indirect object (half ABBA, half BABA).

    Fields `io_ids [n]` and `s_ids [n]` hold the single-token ids of " IO" and " S";
    `last_pos [n]` indexes the final " to" (prompts differ in length across templates).
    """
    check_split(split)
    names = single_token_words(tokenizer, NAMES_HELDOUT if split == "heldout" else NAMES_TRAIN)
    require_pool(names, 2, "IOI names")
    places = single_token_words(tokenizer, PLACES) or PLACES
    objects = single_token_words(tokenizer, OBJECTS) or OBJECTS
    templates = TEMPLATES_HELDOUT if split == "heldout" else TEMPLATES_TRAIN
    rng = random.Random(seed)
    texts, answers, token_lists, io_ids, s_ids = [], [], [], [], []
    for i in range(n):
        io, s = rng.sample(names, 2)
        order = "ABBA" if i % 2 == 0 else "BABA"
        full = ioi_sentence(
            rng.choice(templates), io, s, rng.choice(places), rng.choice(objects), order
        )
        prompt = full[: -len(" " + io)]
        texts.append(prompt)
        answers.append(" " + io)
        token_lists.append(encode(tokenizer, prompt))
        io_ids.append(single_token_id(tokenizer, " " + io))
        s_ids.append(single_token_id(tokenizer, " " + s))
    input_ids, last_pos = batch_token_lists(tokenizer, token_lists, prepend_bos)
    return TaskPrompts(
        input_ids=input_ids,
        last_pos=last_pos,
        texts=texts,
        answers=answers,
        io_ids=torch.tensor(io_ids, dtype=torch.long),
        s_ids=torch.tensor(s_ids, dtype=torch.long),
        meta={"task": "ioi", "split": split},
    )


def ioi_logit_diff(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Return `logit(IO) - logit(S)` per prompt, `[n]`, from `logits [n, vocab]`."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, io_ids.to(logits.device)] - logits[rows, s_ids.to(logits.device)]
