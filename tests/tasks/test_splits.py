"""Train / dev / test splits of the circuit tasks: structural novelty, determinism, who reads test."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

import sparsecircuits
from sparsecircuits.cli import main
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.tasks import (
    docstring,
    greater_than,
    ioi,
    make_docstring_prompts,
    make_greater_than_prompts,
    make_ioi_prompts,
)
from sparsecircuits.tasks.common import DEFAULT_SEEDS, check_split
from sparsecircuits.tasks.vocabulary import vocabulary_text
from testkit import load_script

ROOT = Path(__file__).resolve().parents[2]
MAKERS = [make_greater_than_prompts, make_ioi_prompts, make_docstring_prompts]
YEAR = re.compile(r"\b(\d\d)(\d\d)\b")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", text))


def _task_stream_script():
    """The embedded model's task-stream builder (its word pools are what the train split draws)."""
    return load_script(ROOT / "scripts" / "embedded" / "build_task_stream.py")


def _frame_phrases(template: str) -> list[str]:
    """The fixed wording of a greater-than frame between its slots ("{noun}", "{xx}{yy}", ...),
    phrases of two words or more."""
    pieces = [p.strip(" ,.;") for p in re.split(r"\{\w+\}", template)]
    return [p for p in pieces if len(p.split()) >= 2]


def test_greater_than_splits_are_disjoint_in_endings_centuries_frames_and_nouns():
    test_endings = set(greater_than.TEST_ENDINGS)
    dev = greater_than._year_pool("dev")
    train = greater_than._year_pool("train")
    test = greater_than._year_pool("test")
    assert not {yy for _, yy in dev + train} & test_endings
    assert {yy for _, yy in test} == test_endings and len(test_endings) >= 10
    assert not {xx for xx, _ in test} & {xx for xx, _ in dev + train}
    assert not set(dev) & set(train)
    # the endings cover the whole range, so "later" and "earlier" both carry weight
    assert min(test_endings) < 12 and max(test_endings) > 88
    nouns = [greater_than.NOUNS_TRAIN, greater_than.NOUNS_HELDOUT, greater_than.NOUNS_TEST]
    assert all(not set(a) & set(b) for i, a in enumerate(nouns) for b in nouns[i + 1 :])
    seen = {p for t in greater_than.TRAIN_TEMPLATES for p in _frame_phrases(t)}
    seen |= set(_frame_phrases(greater_than.EVAL_TEMPLATE))
    for frame in greater_than.TEST_TEMPLATES:
        assert frame.endswith("{xx}") and frame.count("{xx}{yy}") == 1
        assert not set(_frame_phrases(frame)) & seen, frame


def test_ioi_splits_are_disjoint_in_names_templates_and_verbs():
    pools = [
        (ioi.NAMES_TRAIN, ioi.NAMES_HELDOUT, ioi.NAMES_TEST),
        (ioi.TEMPLATES_TRAIN, ioi.TEMPLATES_HELDOUT, ioi.TEMPLATES_TEST),
        (ioi.PLACES, ioi.PLACES_HELDOUT, ioi.PLACES_TEST),
        (ioi.OBJECTS, ioi.OBJECTS_HELDOUT, ioi.OBJECTS_TEST),
    ]
    for train, dev, test in pools:
        assert not set(train) & set(dev) and not set(train) & set(test)
        assert not set(dev) & set(test)
    rng = random.Random(0)
    grammar = {ioi.compositional_template(rng) for _ in range(3000)}
    known = grammar | set(ioi.TEMPLATES_TRAIN) | set(ioi.TEMPLATES_HELDOUT)
    # every training and dev template opens "{B} and {A}"; no test template does
    assert all("{B} and {A}" in t for t in known)
    known_words = set().union(*(_words(t) for t in known)) | _words(" ".join(ioi.GIVES))
    for template in ioi.TEMPLATES_TEST:
        assert "{B} and {A}" not in template and template.endswith(" to {A}")
        assert template.count("{B}") == 2 and template.count("{A}") == 2
        assert template.index("{B}") < template.index("{A}")
        assert set(ioi.TEST_TEMPLATE_VERBS) & _words(template), template
    assert not set(ioi.TEST_TEMPLATE_VERBS) & known_words


def test_docstring_splits_are_disjoint_in_names_and_shape(tokenizer):
    train, dev, test = docstring.PARAMS_TRAIN, docstring.PARAMS_HELDOUT, docstring.PARAMS_TEST
    assert not set(train) & set(dev) and not set(train) & set(test) and not set(dev) & set(test)
    extra = _task_stream_script().identifier_tokens(_raw_tokenizer())
    assert len(extra) > 500 and not set(extra) & set(test)
    for text in make_docstring_prompts(tokenizer, 30, split="test").texts:
        assert "(self" not in text and ":type " in text and " -> " in text.splitlines()[0]
    for text in make_docstring_prompts(tokenizer, 30, split="dev").texts:
        assert "(self, " in text and ":type " not in text


def _raw_tokenizer():
    from tokenizers import Tokenizer

    from sparsecircuits.models.embedded import embedded_dir

    return Tokenizer.from_file(str(embedded_dir() / "tokenizer.json"))


def _train_split_texts(n: int = 1500) -> dict[str, list[str]]:
    """Text of every training generator, with the pools and shares of build_task_stream.py."""
    script = _task_stream_script()
    extra = script.identifier_tokens(_raw_tokenizer())
    word_pool = script.ioi_word_pool(extra)
    rng = random.Random(0)
    return {
        "greater_than": [greater_than.greater_than_training_text(rng) for _ in range(n)],
        "ioi": [
            ioi.ioi_training_text(rng, 0.85, word_pool=word_pool, word_share=0.5) for _ in range(n)
        ],
        "ioi_names": [ioi.ioi_training_text(rng, 0.85) for _ in range(n)]
        + [ioi.ioi_training_text(rng) for _ in range(n)],
        "docstring": [docstring.docstring_training_text(rng, extra, 0.5) for _ in range(n)]
        + [docstring.docstring_training_text(rng) for _ in range(n)],
        "vocab": [vocabulary_text(rng) for _ in range(n)],
    }


def test_train_split_text_never_emits_test_material():
    texts = _train_split_texts()
    everything = "\n".join(t for kind in texts.values() for t in kind)
    words = _words(everything)
    assert not words & set(ioi.NAMES_TEST)
    assert not words & set(docstring.PARAMS_TEST)
    # the verbs of the test templates are in no training IOI template (arbitrary words of the
    # task stream fill only the name, place and object slots, so these sentences keep only names)
    assert not _words("\n".join(texts["ioi_names"])) & set(ioi.TEST_TEMPLATE_VERBS)
    assert not words & (set(ioi.PLACES_TEST) | set(ioi.OBJECTS_TEST) | set(greater_than.NOUNS_TEST))
    years = [m.groups() for t in texts["greater_than"] for m in YEAR.finditer(t)]
    assert len(years) == 2 * len(texts["greater_than"])
    assert not {int(yy) for _, yy in years} & set(greater_than.TEST_ENDINGS)
    assert not {int(xx) for xx, _ in years} & set(greater_than.TEST_CENTURIES)
    for frame in greater_than.TEST_TEMPLATES:
        for phrase in _frame_phrases(frame):
            assert phrase not in "\n".join(texts["greater_than"]), phrase
    ioi_text = "\n".join(texts["ioi"] + texts["ioi_names"])
    for template in ioi.TEMPLATES_TEST:
        for phrase in re.split(r"\{\w+\}", template):
            words = re.findall(r"[A-Za-z]+", phrase)
            assert len(words) < 3 or phrase.strip(" ,.;") not in ioi_text, phrase


def _template_regex(template: str, slots: dict[str, str]) -> re.Pattern[str]:
    """A regex matching `template` with each `{slot}` replaced by the pattern `slots[slot]`."""
    pieces = re.split(r"(\{\w+\})", template)
    return re.compile(
        "".join(slots[p[1:-1]] if p.startswith("{") else re.escape(p) for p in pieces)
    )


def test_test_prompts_use_only_test_material(tokenizer):
    g = make_greater_than_prompts(tokenizer, 60, split="test")
    assert g.yy is not None and g.meta["split"] == "test"
    nouns = "|".join(greater_than.NOUNS_TEST)
    frames = [
        _template_regex(t, {"noun": f"(?:{nouns})", "xx": r"(\d\d)", "yy": r"(\d\d)"})
        for t in greater_than.TEST_TEMPLATES
    ]
    used = set()
    for i, (text, yy) in enumerate(zip(g.texts, g.yy.tolist(), strict=True)):
        hits = [k for k, f in enumerate(frames) if f.fullmatch(text)]
        assert len(hits) == 1, text
        used.add(hits[0])
        xx, start, end = frames[hits[0]].fullmatch(text).groups()  # type: ignore[union-attr]
        assert int(start) == yy and yy in greater_than.TEST_ENDINGS and xx == end
        assert int(xx) in greater_than.TEST_CENTURIES
        assert tokenizer.decode([int(g.input_ids[i, g.last_pos[i]])]) == f" {xx}"
    assert used == set(range(len(frames)))

    p = make_ioi_prompts(tokenizer, 60, split="test")
    assert p.io_ids is not None and p.s_ids is not None
    slots = {
        "A": r"(\w+)",
        "B": r"(\w+)",
        "PLACE": "(?:" + "|".join(ioi.PLACES_TEST) + ")",
        "OBJECT": "(?:" + "|".join(ioi.OBJECTS_TEST) + ")",
    }
    templates = [_template_regex(t[: -len(" {A}")], slots) for t in ioi.TEMPLATES_TEST]
    for i, text in enumerate(p.texts):
        io, s = p.answers[i].strip(), tokenizer.decode([int(p.s_ids[i])]).strip()
        assert {io, s} <= set(ioi.NAMES_TEST) and io != s
        assert tokenizer.decode([int(p.io_ids[i])]) == " " + io
        match = [m for m in (t.fullmatch(text) for t in templates) if m is not None]
        assert len(match) == 1, text
        first, second, subject = match[0].groups()
        order = (s, io) if i % 2 else (io, s)  # ABBA on even rows, BABA on odd
        assert (first, second, subject) == (*order, s)

    d = make_docstring_prompts(tokenizer, 60, split="test")
    assert d.correct_ids is not None
    for text, answer in zip(d.texts, d.answers, strict=True):
        signature = re.search(r"\((.*)\) ->", text)
        assert signature is not None
        args = [a.split(":")[0].split("=")[0].strip() for a in signature.group(1).split(", ")]
        documented = re.findall(r":param (\w+):", text)
        assert set(args) <= set(docstring.PARAMS_TEST)
        assert args.index(answer.strip()) == args.index(documented[-1]) + 1


@pytest.mark.parametrize("make", MAKERS)
def test_prompts_are_deterministic_from_the_documented_seed(tokenizer, make):
    test = make(tokenizer, 20, split="test")
    assert test.texts == make(tokenizer, 20, split="test").texts
    assert test.texts == make(tokenizer, 20, seed=DEFAULT_SEEDS["test"], split="test").texts
    assert test.texts != make(tokenizer, 20, seed=0, split="test").texts
    dev = make(tokenizer, 20, split="dev")
    assert dev.texts == make(tokenizer, 20, seed=DEFAULT_SEEDS["dev"], split="dev").texts
    assert torch.equal(dev.input_ids, make(tokenizer, 20, split="heldout").input_ids)
    assert DEFAULT_SEEDS["test"] != DEFAULT_SEEDS["dev"]


def test_split_names():
    assert [check_split(s) for s in ("train", "dev", "heldout", "test")] == [
        "train",
        "dev",
        "dev",
        "test",
    ]
    with pytest.raises(SparseCircuitsError, match="unknown split"):
        check_split("validation")


def test_only_the_report_reads_the_test_split():
    """Outside the task generators and `sparsecircuits tasks`, no library code names the test
    split or its pools, so no choice can be tuned on it."""
    package = Path(sparsecircuits.__file__).resolve().parent
    allowed = {package / "cli" / "tasks.py"} | set((package / "tasks").glob("*.py"))
    pattern = re.compile(
        r"""split\s*=\s*["']test["']|["']test["']\s*[,\]]|_TEST\b|TEST_(TEMPLATES|ENDINGS|CENTURIES)"""
    )
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path not in allowed and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert readers == []


def test_tasks_cli_defaults_to_the_test_split(monkeypatch, capsys):
    import sparsecircuits.tasks as tasks_pkg

    calls = []

    def fake_run_tasks(forward, tokenizer, n, seed, split):
        calls.append({"n": n, "seed": seed, "split": split})
        return {"greater_than": {"prob_diff": 0.5, "n": n}}

    monkeypatch.setattr(tasks_pkg, "run_tasks", fake_run_tasks)
    assert main(["tasks", "--model", "embedded", "--n", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"greater_than": {"prob_diff": 0.5, "n": 3}}
    assert main(["tasks", "--model", "embedded", "--n", "3", "--split", "dev", "--json"]) == 0
    capsys.readouterr()
    assert main(["tasks", "--model", "embedded", "--split", "test", "--seed", "4", "--json"]) == 0
    assert calls == [
        {"n": 3, "seed": None, "split": "test"},
        {"n": 3, "seed": None, "split": "dev"},
        {"n": 200, "seed": 4, "split": "test"},
    ]


def test_tasks_cli_rejects_the_train_split(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tasks", "--model", "embedded", "--split", "train"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
