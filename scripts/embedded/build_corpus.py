"""Build the embedded model's corpus: Python docs prose, stdlib source, generated task text.

Writes (build outputs, gitignored) runs/embedded/corpus_train.jsonl and, shipped,
src/sparsecircuits/models/embedded/heldout.jsonl (prose never trained on) and corpus_stats.json.

Sources:
  * prose: reST sources of the Python 3.11 documentation (Debian package python3.11-doc,
    /usr/share/doc/python3.11/html/_sources), PSF licence / Zero-Clause BSD for docs.
  * code: the local interpreter's stdlib (`sysconfig.get_paths()['stdlib']`), PSF licence.
  * generated: greater-than, IOI and docstring training sentences from sparsecircuits.tasks
    (training split only) plus neutral "vocabulary" sentences (`tasks.vocabulary`) that use
    every train and dev task word outside the task structures so that their embeddings are
    trained. IOI sentences come mostly from the compositional grammar, and half of them carry
    arbitrary corpus words (lowercase and capitalised, `slot_word_pool`) in the name, place and
    object slots, so no word is an IOI name by membership; half of the docstrings also draw
    their parameter names from the corpus's lowercase words.

The training text holds no test-split item (`sparsecircuits.tasks.contamination`): natural
prose paragraphs and stdlib files that contain one are left out (the held-out prose is split
off first and kept whole), and the build fails if any item remains in the written corpus.

Usage: python scripts/embedded/build_corpus.py [--synthetic-frac 0.4] [--seed 0] [--ship DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks import docstring, greater_than, ioi  # noqa: E402
from sparsecircuits.tasks.contamination import contains_test_items, count_test_items  # noqa: E402
from sparsecircuits.tasks.vocabulary import vocabulary_text  # noqa: E402

DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"
SKIP_DIRS = {"site-packages", "ensurepip", "__pycache__", "pydoc_data"}
SKIP_DOCS = {"whatsnew/changelog.rst.txt"}
HELDOUT_BYTES = 1_200_000
CODE_CAP_BYTES = 18_000_000
CODE_FILE_CAP = 250_000
# IOI sentences from the compositional grammar, and the share whose name, place and object slots
# hold arbitrary corpus words; share of docstrings that also draw corpus words as parameter names.
IOI_COMPOSITIONAL = 0.85
IOI_WORD_SHARE = 0.5
DOCSTRING_EXTRA_SHARE = 0.5
# A word of the natural text enters the slot pool from this many occurrences (frequent words are
# the ones the tokenizer keeps as single tokens).
SLOT_WORD_MIN_COUNT = 100
_WORD = re.compile(r"(?<![\w.'])([A-Za-z][a-z]{2,})(?![\w'])")


def _stable_hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def prose_documents() -> list[tuple[str, str]]:
    """Return (relative path, text) for every doc source file, sorted by path."""
    if not DOCS_DIR.is_dir():
        raise SystemExit(f"{DOCS_DIR} missing: run `apt-get install -y python3.11-doc`")
    docs = []
    for path in sorted(DOCS_DIR.rglob("*.txt")):
        rel = str(path.relative_to(DOCS_DIR))
        if rel in SKIP_DOCS:
            continue
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) > 200:
            docs.append((rel, text))
    return docs


def without_test_items(text: str) -> tuple[str, int]:
    """Return `text` without its paragraphs (blank-line separated) that hold a test-split item,
    and the number of paragraphs left out."""
    paragraphs = re.split(r"\n\s*\n", text)
    kept = [p for p in paragraphs if not contains_test_items(p)]
    return "\n\n".join(kept), len(paragraphs) - len(kept)


def code_documents() -> tuple[list[tuple[str, str]], int]:
    """Return (relative path, text) for stdlib .py files without a test-split item, capped in
    total size, and the number of files left out for holding one."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total, left_out = [], 0, 0
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts):
            continue
        if path.stat().st_size > CODE_FILE_CAP or path.stat().st_size < 200:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if contains_test_items(text):
            left_out += 1
            continue
        docs.append((str(rel), text))
        total += len(text)
        if total > CODE_CAP_BYTES:
            break
    return docs, left_out


def _dev_and_test_words() -> set[str]:
    """Lowercased dev and test words of every task (names, places, objects, nouns, parameter
    names) and the test templates' verbs: never drawn into a task slot."""
    words = ioi.NAMES_HELDOUT + ioi.NAMES_TEST + ioi.PLACES_HELDOUT + ioi.PLACES_TEST
    words += ioi.OBJECTS_HELDOUT + ioi.OBJECTS_TEST + ioi.TEST_TEMPLATE_VERBS
    words += greater_than.NOUNS_HELDOUT + greater_than.NOUNS_TEST
    words += docstring.PARAMS_HELDOUT + docstring.PARAMS_TEST
    return {w.lower() for w in words}


def slot_word_pool(texts: Iterable[str], min_count: int = SLOT_WORD_MIN_COUNT) -> list[str]:
    """Return the words (three letters or more, lowercase or capitalised) that occur at least
    `min_count` times in `texts`, no dev or test word of any task in any case; sorted."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_WORD.findall(text))
    held = _dev_and_test_words()
    return sorted(w for w, n in counts.items() if n >= min_count and w.lower() not in held)


Generator = tuple[Callable[[random.Random], str], str, float]


def generators(word_pool: Sequence[str]) -> dict[str, Generator]:
    """Return `{kind: (text generator, joiner, share of the generated bytes)}` of the training
    split, the IOI and docstring generators drawing from `word_pool`."""
    lowercase = [w for w in word_pool if w.islower()]
    return {
        "greater_than": (greater_than.greater_than_training_text, " ", 0.24),
        "ioi": (
            lambda r: ioi.ioi_training_text(
                r, IOI_COMPOSITIONAL, word_pool=word_pool, word_share=IOI_WORD_SHARE
            ),
            " ",
            0.36,
        ),
        "docstring": (
            lambda r: docstring.docstring_training_text(r, lowercase, DOCSTRING_EXTRA_SHARE),
            "\n",
            0.28,
        ),
        "vocab": (vocabulary_text, " ", 0.12),
    }


def synthetic_documents(
    total_bytes: int, rng: random.Random, word_pool: Sequence[str]
) -> list[tuple[str, str]]:
    """Return generated paragraphs (4-12 examples of one kind each) totalling ~total_bytes."""
    docs = []
    for kind, (fn, sep, share) in generators(word_pool).items():
        made = 0
        while made < total_bytes * share:
            text = sep.join(fn(rng) for _ in range(rng.randint(4, 12)))
            docs.append((f"synthetic/{kind}", text))
            made += len(text)
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--synthetic-frac",
        type=float,
        default=0.4,
        help="share of training BYTES that is generated task text",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ship",
        type=Path,
        default=SHIP,
        help="folder for heldout.jsonl (default: the package's embedded model folder)",
    )
    args = parser.parse_args()
    ship: Path = args.ship
    rng = random.Random(args.seed)
    BUILD.mkdir(parents=True, exist_ok=True)
    ship.mkdir(parents=True, exist_ok=True)

    prose = prose_documents()
    heldout, train_prose, held_bytes, prose_left_out = [], [], 0, 0
    for rel, text in prose:
        if _stable_hash(rel) % 8 == 0 and held_bytes < HELDOUT_BYTES:
            heldout.append((rel, text))
            held_bytes += len(text)
        else:
            clean, dropped = without_test_items(text)
            prose_left_out += dropped
            if len(clean) > 200:
                train_prose.append((rel, clean))
    code, code_left_out = code_documents()
    natural = sum(len(t) for _, t in train_prose) + sum(len(t) for _, t in code)
    synth_bytes = int(natural * args.synthetic_frac / (1 - args.synthetic_frac))
    word_pool = slot_word_pool(t for _, t in train_prose + code)
    synthetic = synthetic_documents(synth_bytes, rng, word_pool)

    train = [("prose", r, t) for r, t in train_prose] + [("code", r, t) for r, t in code]
    train += [("synthetic", r, t) for r, t in synthetic]
    rng.shuffle(train)
    leaks = count_test_items(t for *_, t in train)
    if leaks:
        raise SystemExit(f"error: test-split items in the training text: {leaks}")
    with open(BUILD / "corpus_train.jsonl", "w", encoding="utf-8") as f:
        for kind, rel, text in train:
            f.write(json.dumps({"kind": kind, "source": rel, "text": text}) + "\n")
    with open(ship / "heldout.jsonl", "w", encoding="utf-8") as f:
        for rel, text in heldout:
            f.write(json.dumps({"source": f"python3.11-doc/{rel}", "text": text}) + "\n")

    def _bytes(items: list) -> int:
        return sum(len(t) for *_, t in items)

    stats = {
        "train_documents": len(train),
        "train_chars": _bytes(train),
        "chars_by_kind": {
            "prose_python_docs": _bytes(train_prose),
            "code_python_stdlib": _bytes(code),
            **{
                f"synthetic_{k}": sum(len(t) for r, t in synthetic if r == f"synthetic/{k}")
                for k in ("greater_than", "ioi", "docstring", "vocab")
            },
        },
        "test_items_left_out": {"prose_paragraphs": prose_left_out, "code_files": code_left_out},
        "slot_word_pool": {
            "words": len(word_pool),
            "capitalised": sum(not w.islower() for w in word_pool),
            "min_count": SLOT_WORD_MIN_COUNT,
        },
        "heldout_documents": len(heldout),
        "heldout_chars": _bytes(heldout),
        "seed": args.seed,
        "synthetic_frac_bytes": args.synthetic_frac,
    }
    (BUILD / "corpus_stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
