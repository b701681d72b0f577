"""Write runs/embedded/task_stream_tokens.npy: generated task text for the v2 fine-tune.

v1 saw 10 IOI templates and 262 docstring parameter names; it solved the training split but
generalised only partly to held-out templates and names. This stream teaches the rules instead
of the instances: IOI sentences from the compositional grammar (thousands of templates, none
using a held-out template's wording, place or object), half of them with arbitrary words in
the name, place and object slots (so the circuit copies any token, not the training names), docstrings whose parameter names are
drawn half of the time from every identifier-like token of the tokenizer (held-out names
excluded), plus greater-than and the neutral vocabulary sentences that keep held-out words'
embeddings trained. Needs the shipped tokenizer (build_tokenizer.py runs first).

Usage: python scripts/embedded/build_task_stream.py [--mb 12] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from build_corpus import vocab_text  # noqa: E402

from sparsecircuits.tasks import docstring, greater_than, ioi  # noqa: E402

BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"


# Capitalised words the IOI grammar uses as sentence openers: a "name" equal to one would read
# as grammar.
GRAMMAR_WORDS = {"After", "When", "While", "Then", "Friends", "Yesterday", "Later", "At", "The"}
GRAMMAR_WORDS |= {"Once", "As", "Because", "Since", "Before", "Today", "This", "On", "Last"}
GRAMMAR_WORDS |= {"In", "One", "Next", "Afterwards", "Earlier", "Inside", "It", "Soon"}


def capitalised_words(vocab: Mapping[str, int]) -> dict[str, int]:
    """Return {word: token id} for every capitalised ASCII-alphabetic single-token word of 2+
    letters in " Word" form (training and held-out names, other proper nouns, code words)."""
    return {
        piece[1:]: i
        for piece, i in vocab.items()
        if piece.startswith("Ġ") and piece[1:].isascii() and piece[1:].isalpha()
        if piece[1].isupper() and len(piece) > 2
    }


def capitalised_tokens(tok: Tokenizer) -> list[str]:
    """Return the `capitalised_words` minus held-out names and the IOI grammar's own sentence
    openers, sorted."""
    held = set(ioi.NAMES_HELDOUT) | GRAMMAR_WORDS
    return sorted(w for w in capitalised_words(tok.get_vocab()) if w not in held)


def identifier_tokens(tok: Tokenizer) -> list[str]:
    """Return lowercase alphabetic single-token words (" name" form, 3+ letters), held-out excluded."""
    held = set(docstring.PARAMS_HELDOUT)
    words = []
    for piece in tok.get_vocab():
        word = piece[1:]
        is_word = piece.startswith("Ġ") and word.isalpha() and word.islower() and len(word) >= 3
        if is_word and word not in held:
            words.append(word)
    return sorted(words)


# Neutral sentences with the held-out IOI templates' own words ("offered" is three tokens,
# " of" "fer" "ed", and occurs 14 times in the corpus), never in an IOI structure: no names, no
# repeated subject. The same policy as held-out names in `build_corpus.vocab_text`.
TEMPLATE_WORD_SENTENCES = [
    "The shop offered a discount to every customer.", "The {place} offered a free {object}.",
    "They offered help.", "The library offered a course on {noun}s.",
    "The {place} was busy.", "Everyone was busy with the {noun}.", "It was a busy day.",
    "We had lunch at noon.", "After lunch, the team met again.", "The lunch was late.",
    "She was working on the {noun}.", "They were working late at the {place}.",
    "He decided to give a talk.", "The team decided to give a demo.",
    "The guests arrived early.", "The train arrived at the {place}.",
]  # fmt: skip


# One-name recall: a name mentioned once and predicted again later, as any name is in real text.
# Held-out names are drawn half of the time: the v5 model boosted an in-context training name's
# logit 18 above an absent one, a held-out name's only 5 (it had never had to copy them). Only one
# name per sentence, so there is nothing to tell apart and never an IOI structure.
RECALL_SENTENCES = [
    "{A} went to the {place}. Everyone at the {place} waved to {A}.",
    "{A} found a {object}. The {object} now belongs to {A}.",
    "This is {A}. Please say hello to {A}.",
    "{A} wrote a letter, and the letter was signed by {A}.",
    "When {A} arrived, the {place} sent a {object} to {A}.",
    "{A} was at the {place}. Later, someone gave a {object} to {A}.",
    "The {object} was for {A}, so they handed it to {A}.",
    "{A} called twice. Nobody answered {A}.",
    "Ask {A}: the {object} is with {A}.",
    "{A} likes the {place}. The staff know {A} well.",
    "A {object} was waiting for {A} when {A} came home.",
    "We met {A} at the {place}, and we talked to {A} for hours.",
]


def recall_text(rng: random.Random) -> str:
    """One single-name recall sentence (see above); half of the names are held-out ones."""
    names = ioi.NAMES_HELDOUT if rng.random() < 0.5 else ioi.NAMES_TRAIN
    return rng.choice(RECALL_SENTENCES).format(
        A=rng.choice(names), place=rng.choice(ioi.PLACES), object=rng.choice(ioi.OBJECTS)
    )


def template_word_text(rng: random.Random) -> str:
    """One neutral sentence using a held-out IOI template's wording (see above)."""
    return rng.choice(TEMPLATE_WORD_SENTENCES).format(
        place=rng.choice(ioi.PLACES),
        object=rng.choice(ioi.OBJECTS),
        noun=rng.choice(greater_than.NOUNS_TRAIN),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=12.0, help="megabytes of text to generate")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument(
        "--word-share",
        type=float,
        default=0.5,
        help="share of IOI sentences whose names, place and object are arbitrary vocabulary words",
    )
    parser.add_argument(
        "--more-verbs",
        action="store_true",
        help="draw IOI giving verbs from the training list plus ioi.GIVES_MORE",
    )
    parser.add_argument(
        "--template-words",
        type=float,
        default=0.0,
        help="share of the stream given to TEMPLATE_WORD_SENTENCES (taken from the vocabulary part)",
    )
    parser.add_argument(
        "--caps-share",
        type=float,
        default=0.0,
        help="share of the arbitrary-word IOI sentences whose two names are capitalised tokens",
    )
    parser.add_argument(
        "--recall",
        type=float,
        default=0.0,
        help="share of the stream given to RECALL_SENTENCES (taken from the vocabulary part)",
    )
    args = parser.parse_args()
    gives = ioi.GIVES + (ioi.GIVES_MORE if args.more_verbs else ())
    rng = random.Random(args.seed)
    tok = Tokenizer.from_file(str(SHIP / "tokenizer.json"))
    extra = identifier_tokens(tok)
    held_words = {w.lower() for w in ioi.PLACES_HELDOUT + ioi.OBJECTS_HELDOUT}
    held_words |= set(greater_than.NOUNS_HELDOUT)
    word_pool = [w for w in extra if w not in held_words]
    caps_pool = capitalised_tokens(tok) if args.caps_share else []
    generators = {
        "ioi": (
            lambda r: ioi.ioi_training_text(
                r,
                0.85,
                word_pool=word_pool,
                word_share=args.word_share,
                gives=gives,
                name_pool=caps_pool,
                name_share=args.caps_share,
            ),
            " ",
            0.45,
        ),
        "docstring": (
            lambda r: docstring.docstring_training_text(r, extra, extra_share=0.5),
            "\n",
            0.30,
        ),
        "greater_than": (greater_than.greater_than_training_text, " ", 0.12),
        "vocab": (vocab_text, " ", 0.13 - args.template_words - args.recall),
    }
    if args.recall:
        generators["recall"] = (recall_text, " ", args.recall)
    if args.template_words:
        generators["template_words"] = (template_word_text, " ", args.template_words)
    total = int(args.mb * 1e6)
    docs: list[tuple[str, str]] = []
    for kind, (fn, sep, share) in generators.items():
        made = 0
        while made < total * share:
            text = sep.join(fn(rng) for _ in range(rng.randint(4, 12)))
            docs.append((kind, text))
            made += len(text)
    rng.shuffle(docs)
    eos_id = tok.token_to_id("<|endoftext|>")
    stream: list[int] = []
    per_kind: dict[str, int] = {}
    texts = [t for _, t in docs]
    for (kind, _), enc in zip(docs, tok.encode_batch(texts), strict=True):
        stream.extend(enc.ids)
        stream.append(eos_id)
        per_kind[kind] = per_kind.get(kind, 0) + len(enc.ids) + 1
    BUILD.mkdir(parents=True, exist_ok=True)
    np.save(BUILD / "task_stream_tokens.npy", np.asarray(stream, dtype=np.uint16))
    stats = {
        "chars": sum(len(t) for t in texts),
        "tokens": len(stream),
        "tokens_by_kind": per_kind,
        "docstring_extra_names": len(extra),
        "ioi_word_pool": len(word_pool),
        "seed": args.seed,
        "word_share": args.word_share,
        "more_verbs": args.more_verbs,
        "template_words": args.template_words,
        "caps_share": args.caps_share,
        "recall": args.recall,
        "caps_pool": len(caps_pool),
    }
    (BUILD / "task_stream_stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
