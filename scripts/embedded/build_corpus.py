"""Build the embedded model's corpus: Python docs prose, stdlib source, generated task text.

Writes (build outputs, gitignored) runs/embedded/corpus_train.jsonl and, shipped,
src/sparsecircuits/models/embedded/heldout.jsonl (prose never trained on) and corpus_stats.json.

Sources:
  * prose: reST sources of the Python 3.11 documentation (Debian package python3.11-doc,
    /usr/share/doc/python3.11/html/_sources), PSF licence / Zero-Clause BSD for docs.
  * code: the local interpreter's stdlib (`sysconfig.get_paths()['stdlib']`), PSF licence.
  * generated: greater-than, IOI and docstring training sentences from sparsecircuits.tasks
    (training split only) plus neutral "vocabulary" sentences (`tasks.vocabulary`) that use
    every task word, held-out ones included, outside the task structures so that their
    embeddings are trained.

Usage: python scripts/embedded/build_corpus.py [--synthetic-frac 0.4] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks import docstring, greater_than, ioi  # noqa: E402
from sparsecircuits.tasks.vocabulary import vocabulary_text  # noqa: E402

DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
BUILD = ROOT / "runs" / "embedded"
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded"
SKIP_DIRS = {"site-packages", "ensurepip", "__pycache__", "pydoc_data"}
SKIP_DOCS = {"whatsnew/changelog.rst.txt"}
HELDOUT_BYTES = 1_200_000
CODE_CAP_BYTES = 18_000_000
CODE_FILE_CAP = 250_000


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


def code_documents() -> list[tuple[str, str]]:
    """Return (relative path, text) for stdlib .py files, capped in total size."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts):
            continue
        if path.stat().st_size > CODE_FILE_CAP or path.stat().st_size < 200:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append((str(rel), text))
        total += len(text)
        if total > CODE_CAP_BYTES:
            break
    return docs


GENERATORS = {
    "greater_than": (greater_than.greater_than_training_text, " ", 0.24),
    "ioi": (ioi.ioi_training_text, " ", 0.36),
    "docstring": (docstring.docstring_training_text, "\n", 0.28),
    "vocab": (vocabulary_text, " ", 0.12),
}


def synthetic_documents(total_bytes: int, rng: random.Random) -> list[tuple[str, str]]:
    """Return generated paragraphs (4-12 examples of one kind each) totalling ~total_bytes."""
    docs = []
    for kind, (fn, sep, share) in GENERATORS.items():
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
    args = parser.parse_args()
    rng = random.Random(args.seed)
    BUILD.mkdir(parents=True, exist_ok=True)
    SHIP.mkdir(parents=True, exist_ok=True)

    prose = prose_documents()
    heldout, train_prose, held_bytes = [], [], 0
    for rel, text in prose:
        if _stable_hash(rel) % 8 == 0 and held_bytes < HELDOUT_BYTES:
            heldout.append((rel, text))
            held_bytes += len(text)
        else:
            train_prose.append((rel, text))
    code = code_documents()
    natural = sum(len(t) for _, t in train_prose) + sum(len(t) for _, t in code)
    synth_bytes = int(natural * args.synthetic_frac / (1 - args.synthetic_frac))
    synthetic = synthetic_documents(synth_bytes, rng)

    train = [("prose", r, t) for r, t in train_prose] + [("code", r, t) for r, t in code]
    train += [("synthetic", r, t) for r, t in synthetic]
    rng.shuffle(train)
    with open(BUILD / "corpus_train.jsonl", "w", encoding="utf-8") as f:
        for kind, rel, text in train:
            f.write(json.dumps({"kind": kind, "source": rel, "text": text}) + "\n")
    with open(SHIP / "heldout.jsonl", "w", encoding="utf-8") as f:
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
                for k in GENERATORS
            },
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
