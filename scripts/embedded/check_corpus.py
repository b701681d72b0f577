"""Fail when the embedded model's training text holds a test-split item.

Scans every document of a corpus file (JSON lines with a "text" field; default
runs/embedded/corpus_train.jsonl, written by build_corpus.py) with
`sparsecircuits.tasks.contamination.find_test_items`, prints one JSON object
(`{"corpus", "documents", "chars", "items": {kind: {item: count}}, "documents_with_items"}`)
and exits with status 1 when any item was found.

Usage: python scripts/embedded/check_corpus.py [CORPUS.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.tasks.contamination import find_test_items  # noqa: E402

DEFAULT = ROOT / "runs" / "embedded" / "corpus_train.jsonl"


def check(path: Path) -> dict:
    """Return the scan summary of the corpus at `path`."""
    items: dict[str, dict[str, int]] = {}
    documents = chars = flagged = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            documents += 1
            chars += len(text)
            hits = find_test_items(text)
            flagged += bool(hits)
            for hit in hits:
                per_kind = items.setdefault(hit.kind, {})
                per_kind[hit.item] = per_kind.get(hit.item, 0) + 1
    return {
        "corpus": str(path),
        "documents": documents,
        "chars": chars,
        "items": items,
        "documents_with_items": flagged,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="*", type=Path, default=[DEFAULT])
    args = parser.parse_args(argv)
    status = 0
    for path in args.corpus:
        if not path.is_file():
            print(f"error: {path} not found; build it with scripts/embedded/build_corpus.py")
            return 2
        summary = check(path)
        print(json.dumps(summary))
        status |= bool(summary["items"])
    return status


if __name__ == "__main__":
    sys.exit(main())
