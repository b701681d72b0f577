"""Write runs/embedded/task_stream_tokens.npy: generated task text for the embedded model's fine-tune.

A task-only stream that teaches the rules rather than the instances: IOI sentences from the
compositional grammar
(thousands of templates, none using a held-out template's wording, place or object), half of
them with arbitrary words in the name, place and object slots (so the circuit copies any token,
not the training names), docstrings whose parameter names are drawn half of the time from every
identifier-like token of the tokenizer (dev and test names excluded), plus greater-than and the
neutral vocabulary sentences that keep dev words' embeddings trained. Every generator draws from
the train split only: no dev or test template, name, place, object, noun or parameter name, and
no test year ending (`tests/tasks/test_splits.py`; the build fails if
`sparsecircuits.tasks.contamination` finds a test-split item in the text). Needs the shipped tokenizer
(build_tokenizer.py runs first).

Usage: python scripts/embedded/build_task_stream.py [--mb 12] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks import docstring, greater_than, ioi  # noqa: E402
from sparsecircuits.tasks.contamination import count_test_items  # noqa: E402
from sparsecircuits.tasks.vocabulary import vocabulary_text  # noqa: E402

BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"
# Share of IOI sentences whose names, place and object are arbitrary vocabulary words.
WORD_SHARE = 0.5


def identifier_tokens(tok: Tokenizer) -> list[str]:
    """Return lowercase alphabetic single-token words (" name" form, 3+ letters), dev and test
    parameter names excluded."""
    held = set(docstring.PARAMS_HELDOUT) | set(docstring.PARAMS_TEST)
    words = []
    for piece in tok.get_vocab():
        word = piece[1:]
        is_word = piece.startswith("Ġ") and word.isalpha() and word.islower() and len(word) >= 3
        if is_word and word not in held:
            words.append(word)
    return sorted(words)


def ioi_word_pool(words: list[str]) -> list[str]:
    """Return `words` without the dev and test places, objects, nouns and names (lowercased)."""
    held = ioi.PLACES_HELDOUT + ioi.OBJECTS_HELDOUT + ioi.PLACES_TEST + ioi.OBJECTS_TEST
    held += greater_than.NOUNS_HELDOUT + greater_than.NOUNS_TEST + ioi.NAMES_TEST
    held_words = {w.lower() for w in held}
    return [w for w in words if w not in held_words]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=12.0, help="megabytes of text to generate")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tok = Tokenizer.from_file(str(SHIP / "tokenizer.json"))
    extra = identifier_tokens(tok)
    word_pool = ioi_word_pool(extra)
    generators = {
        "ioi": (
            lambda r: ioi.ioi_training_text(r, 0.85, word_pool=word_pool, word_share=WORD_SHARE),
            " ",
            0.45,
        ),
        "docstring": (
            lambda r: docstring.docstring_training_text(r, extra, extra_share=0.5),
            "\n",
            0.30,
        ),
        "greater_than": (greater_than.greater_than_training_text, " ", 0.12),
        "vocab": (vocabulary_text, " ", 0.13),
    }
    total = int(args.mb * 1e6)
    docs: list[tuple[str, str]] = []
    for kind, (fn, sep, share) in generators.items():
        made = 0
        while made < total * share:
            text = sep.join(fn(rng) for _ in range(rng.randint(4, 12)))
            docs.append((kind, text))
            made += len(text)
    rng.shuffle(docs)
    leaks = count_test_items(text for _, text in docs)
    if leaks:
        raise SystemExit(f"error: test-split items in the task stream: {leaks}")
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
    }
    (BUILD / "task_stream_stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
