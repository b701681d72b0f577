"""The test-split checker (`tasks.contamination`) and the embedded corpus policy that it guards:
every kind of test item is found, look-alikes are not, and a corpus built by build_corpus.py's
functions from planted natural text passes check_corpus.py while a planted one fails."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from sparsecircuits.tasks import contamination, docstring, greater_than, ioi
from testkit import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "embedded"

FOUND = [
    ("Don't panic.", "ioi_name", "Don"),
    ("Written by Andre in Paris.", "ioi_name", "Andre"),
    ("Released in Jan 2004.", "ioi_name", "Jan"),
    ("Copyright 2001-2023 the authors", "year_ending", "2023"),
    ("It started in 1911, as planned", "year_ending", "1911"),
    ("def apply(self, data, op=None):\n    return op", "parameter_name", "op"),
    ("def f(a, *args, **kw):\n    pass", "parameter_name", "kw"),
    ("def g(x: dict[str, int] = {}, X=1):", "parameter_name", "X"),
    ("    :param op: the operator", "parameter_name", "op"),
    ("    :type N: int", "parameter_name", "N"),
    ("key = lambda T: T[0]", "parameter_name", "T"),
    (".. function:: reduce(ch, iterable)", "parameter_name", "ch"),
    ("Mary kept waiting for\n John outside", "ioi_template", "kept waiting for"),
    ("Records of the exhibition cover", "greater_than_frame", "Records of the"),
]
NOT_FOUND = [
    "London and Donald met Janet and Normandy; Andrea too.",
    "don't, jan, norm, andre",
    "the years 2006, 1910 and 2100; 12005 and 1.2005 and 2005.5 and v2011",
    "op = compute(kw)\nX = np.zeros(N)\nself.op(T)",
    "def f(self, ops, kwargs, Xs):",
    "the next morning",
]


@pytest.mark.parametrize(("text", "kind", "item"), FOUND)
def test_every_kind_of_test_item_is_found(text, kind, item):
    hits = contamination.find_test_items(text)
    assert (kind, item) in {(h.kind, h.item) for h in hits}
    assert contamination.contains_test_items(text)


@pytest.mark.parametrize("text", NOT_FOUND)
def test_look_alikes_are_not_test_items(text):
    assert contamination.find_test_items(text) == []


def test_the_checker_covers_every_test_template_and_item():
    for template in ioi.TEMPLATES_TEST:
        sentence = ioi.ioi_sentence(template, "Mary", "John", "office", "drink", "ABBA")
        hits = contamination.find_test_items(sentence)
        assert {h.kind for h in hits} == {"ioi_template"}, sentence
    for frame in greater_than.TEST_TEMPLATES:
        sentence = frame.format(noun="war", xx=17, yy="32") + "90."
        assert {h.kind for h in contamination.find_test_items(sentence)} == {
            "greater_than_frame"
        }, sentence
    for ending in greater_than.TEST_ENDINGS:
        assert contamination.contains_test_items(f"from 17{ending:02d} to 1799")
    for name in docstring.PARAMS_TEST:
        assert contamination.contains_test_items(f"def f(self, {name}, b):")
    for name in ioi.NAMES_TEST:
        assert contamination.contains_test_items(f"Then {name} left.")


def _natural_documents() -> list[tuple[str, str]]:
    """Small prose and code documents, some paragraphs holding test items."""
    words = "the value of each item is returned to the caller with its name and Python"
    prose = "\n\n".join(f"Paragraph {i}: {words} " * 4 for i in range(20))
    planted = prose + "\n\nDon't use it before 2005.\n\n" + prose
    code = "def lookup(self, key, default=None):\n    return self.data.get(key, default)\n" * 30
    return [("a.rst", prose), ("b.rst", planted), ("c.py", code)]


def _build_small_corpus(tmp_path: Path) -> Path:
    """A corpus written like build_corpus.py: natural text cleaned of test items (paragraphs),
    then the v3 generators drawing on a word pool of that text."""
    build = load_script(SCRIPTS / "build_corpus.py")
    natural = []
    for rel, text in _natural_documents():
        clean, _ = build.without_test_items(text)
        natural.append((rel, clean))
    pool = build.slot_word_pool((t for _, t in natural), min_count=5)
    synthetic = build.synthetic_documents(60_000, random.Random(0), pool)
    path = tmp_path / "corpus_train.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for rel, text in natural + synthetic:
            f.write(json.dumps({"kind": "x", "source": rel, "text": text}) + "\n")
    return path


def test_a_corpus_built_by_the_policy_passes_the_check_and_a_planted_one_fails(tmp_path, capsys):
    check = load_script(SCRIPTS / "check_corpus.py")
    path = _build_small_corpus(tmp_path)
    assert check.main([str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == {} and summary["documents"] > 20
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "When Don and Mary went out, Don gave a map to Mary."}) + "\n")
    assert check.main([str(path)]) == 1
    assert json.loads(capsys.readouterr().out)["items"] == {"ioi_name": {"Don": 2}}


def test_paragraphs_with_test_items_are_left_out_and_the_rest_kept():
    build = load_script(SCRIPTS / "build_corpus.py")
    text = "First paragraph.\n\nIn 1911 Don left.\n\n  \nLast paragraph."
    assert build.without_test_items(text) == ("First paragraph.\n\nLast paragraph.", 1)


def test_slot_words_are_lowercase_and_capitalised_corpus_words_and_never_dev_or_test_words():
    build = load_script(SCRIPTS / "build_corpus.py")
    held = ioi.NAMES_HELDOUT[0]
    text = " ".join([f"window Window {held} {held.lower()} library Library op Op dog's it"] * 3)
    assert build.slot_word_pool([text], min_count=3) == ["Window", "window"]


def test_ioi_pretraining_text_puts_arbitrary_words_in_the_name_slots():
    build = load_script(SCRIPTS / "build_corpus.py")
    pool = ["Table", "table", "Return", "value", "window", "Python", "buffer", "Parser"]
    make, _, _ = build.generators(pool)["ioi"]
    rng = random.Random(1)
    sentences = [make(rng) for _ in range(400)]
    with_words = [
        s for s in sentences if not set(re.findall(r"[A-Z]\w+", s)) & set(ioi.NAMES_TRAIN)
    ]
    # about half of the sentences carry pool words only, capitalised ones among them
    assert 0.3 < len(with_words) / len(sentences) < 0.7
    assert any(re.search(r"\b(Table|Return|Python|Parser)\b", s) for s in with_words)
    assert not any(contamination.contains_test_items(s) for s in sentences)
