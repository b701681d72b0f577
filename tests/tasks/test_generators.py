from __future__ import annotations

import random

import pytest
import torch

from sparsecircuits.tasks import (
    docstring,
    greater_than,
    ioi,
    make_docstring_prompts,
    make_greater_than_prompts,
    make_ioi_prompts,
)
from sparsecircuits.tasks.greater_than import is_heldout_year
from sparsecircuits.tasks.vocabulary import vocabulary_text


def test_year_tokens_are_single_two_digit_tokens(tokenizer):
    ids = greater_than.year_token_ids(tokenizer)
    assert ids.shape == (100,) and len(set(ids.tolist())) == 100
    assert [tokenizer.decode([i]) for i in ids.tolist()] == [f"{y:02d}" for y in range(100)]
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode(" 1732", add_special_tokens=False)) == [
        "Ġ17",
        "32",
    ]


def test_greater_than_prompts_end_in_century_token(tokenizer):
    p = make_greater_than_prompts(tokenizer, 40, seed=3)
    assert p.input_ids.shape[0] == 40 and p.yy is not None and p.year_ids is not None
    assert (p.last_pos == p.input_ids.shape[1] - 1).all()  # all prompts have one length
    for row, yy, text in zip(p.input_ids.tolist(), p.yy.tolist(), p.texts, strict=True):
        century = text.rsplit(" ", 1)[1]
        assert tokenizer.decode([row[-1]]) == f" {century}"
        assert tokenizer.decode([row[-5]]) == f"{yy:02d}"
        assert f" {century}{yy:02d} " in text
        assert is_heldout_year(int(century), yy) and 2 <= yy <= 97
        assert text.split()[1] in greater_than.NOUNS_HELDOUT


def test_greater_than_training_text_avoids_heldout():
    rng = random.Random(0)
    held_nouns = set(greater_than.NOUNS_HELDOUT)
    for _ in range(3000):
        text = greater_than.greater_than_training_text(rng)
        years = [int(w.strip(".,")) for w in text.split() if w.strip(".,").isdigit()]
        start, end = years
        assert start // 100 == end // 100 and end > start
        assert not is_heldout_year(start // 100, start % 100)
        assert not held_nouns & set(w.strip(".,") for w in text.split())


def test_ioi_answer_is_the_non_repeated_name(tokenizer):
    p = make_ioi_prompts(tokenizer, 30, seed=1)
    assert p.io_ids is not None and p.s_ids is not None
    for i, text in enumerate(p.texts):
        io, s = p.answers[i].strip(), tokenizer.decode([int(p.s_ids[i])]).strip()
        words = text.replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(s) == 2
        assert tokenizer.decode([int(p.io_ids[i])]) == " " + io
        assert io in ioi.NAMES_HELDOUT and s in ioi.NAMES_HELDOUT
        assert text.endswith(" to")
        assert tokenizer.decode([int(p.input_ids[i, p.last_pos[i]])]) == " to"
        assert (p.input_ids[i, p.last_pos[i] + 1 :] == tokenizer.eos_token_id).all()
    # the prompts vary: many different answers and subjects over 30 draws
    assert len(set(p.answers)) > 5 and len({int(t) for t in p.s_ids}) > 5


def test_ioi_orders_abba_and_baba():
    abba = ioi.ioi_sentence(ioi.TEMPLATES_TRAIN[1], "Mary", "John", "store", "drink", "ABBA")
    baba = ioi.ioi_sentence(ioi.TEMPLATES_TRAIN[1], "Mary", "John", "store", "drink", "BABA")
    assert abba == "When Mary and John went to the store, John gave a drink to Mary"
    assert baba == "When John and Mary went to the store, John gave a drink to Mary"


@pytest.mark.parametrize("compositional", [0.0, 0.8])
def test_ioi_training_text_never_uses_heldout_names_or_templates(compositional):
    rng = random.Random(0)
    held = set(ioi.NAMES_HELDOUT) | set(ioi.PLACES_HELDOUT) | set(ioi.OBJECTS_HELDOUT)
    sentences = [ioi.ioi_training_text(rng, compositional) for _ in range(3000)]
    text = " ".join(sentences)
    words = set(text.replace(",", " ").replace(".", " ").split())
    assert not held & words
    assert "busy when" not in text and "After the lunch" not in text
    if compositional:
        assert not any(w in text for w in ioi.HELDOUT_TEMPLATE_WORDS)
        assert "offer" not in text
    assert not set(ioi.NAMES_TRAIN) & held
    assert not (set(ioi.PLACES) | set(ioi.OBJECTS)) & held


def test_compositional_templates_are_many_valid_and_never_heldout():
    rng = random.Random(1)
    templates = {ioi.compositional_template(rng) for _ in range(5000)}
    assert len(templates) > 1000
    assert not templates & set(ioi.TEMPLATES_HELDOUT)
    for template in templates:
        head, tail = template.split(" and ", 1)
        assert head.endswith("{B}") and tail.startswith("{A}")
        assert tail.count("{B}") == 1 and template.endswith(" to {A}")
        sentence = ioi.ioi_sentence(template, "Mary", "John", "store", "drink", "ABBA")
        assert sentence.endswith("John") is False and sentence.count("John") == 2
        assert sentence.count("Mary") == 2 and "{" not in sentence


def test_docstring_answer_is_next_argument(tokenizer):
    p = make_docstring_prompts(tokenizer, 20, seed=2)
    assert p.correct_ids is not None and p.wrong_ids is not None
    assert p.wrong_ids.shape == (20, 5)
    for i, text in enumerate(p.texts):
        sig = text.split("(self, ")[1].split(")")[0].split(", ")
        documented = [
            line.split(":param ")[1].split(":")[0]
            for line in text.splitlines()
            if ":param " in line
        ]
        answer = p.answers[i].strip()
        assert sig.index(answer) == sig.index(documented[-1]) + 1
        assert text.endswith("    :param")
        assert int(p.correct_ids[i]) not in p.wrong_ids[i].tolist()
        assert tokenizer.decode([int(p.correct_ids[i])]) == " " + answer
        assert set(sig) <= set(docstring.PARAMS_HELDOUT)


def test_docstring_training_text_never_uses_heldout_params():
    rng = random.Random(0)
    held = set(docstring.PARAMS_HELDOUT)
    for _ in range(2000):
        text = docstring.docstring_training_text(rng)
        sig = text.split("(self, ")[1].split(")")[0].split(", ")
        assert not held & set(sig)
        documented = [
            line.split(":param ")[1].split(":")[0]
            for line in text.splitlines()
            if ":param " in line
        ]
        first = sig.index(documented[0])
        assert documented == sig[first : first + len(documented)]


def test_train_split_prompts_use_train_pools(tokenizer):
    p = make_ioi_prompts(tokenizer, 10, seed=0, split="train")
    assert all(a.strip() in ioi.NAMES_TRAIN for a in p.answers)
    g = make_greater_than_prompts(tokenizer, 10, seed=0, split="train")
    assert g.yy is not None
    assert all(
        not is_heldout_year(int(t.rsplit(" ", 1)[1]), int(y))
        for t, y in zip(g.texts, g.yy.tolist(), strict=True)
    )
    assert torch.equal(
        make_ioi_prompts(tokenizer, 10, seed=0, split="train").input_ids, p.input_ids
    )


def test_word_pool_sentences_keep_the_ioi_shape_and_skip_heldout_words():
    rng = random.Random(3)
    pool = ["kettle", "river", "bridge", "tree", "lamp"] + ioi.NAMES_HELDOUT + ioi.OBJECTS_HELDOUT
    sentences = [
        ioi.ioi_training_text(rng, 0.5, word_pool=pool, word_share=1.0) for _ in range(300)
    ]
    held = set(ioi.NAMES_HELDOUT) | set(ioi.OBJECTS_HELDOUT)
    for sentence in sentences:
        words = sentence.rstrip(".").replace(",", " ").split()
        assert not held & set(words)
        io = words[-1]
        assert io in pool and sentence.count(f" {io}") + sentence.startswith(io) == 2


def test_vocabulary_text_uses_heldout_words_outside_task_structures():
    rng = random.Random(8)
    texts = [vocabulary_text(rng) for _ in range(2000)]
    words = set(" ".join(texts).replace(".", " ").replace(",", " ").split())
    assert set(ioi.NAMES_HELDOUT) <= words
    assert set(greater_than.NOUNS_HELDOUT) & words
    assert any(f"{p} = " in t for t in texts for p in docstring.PARAMS_HELDOUT)
    # no giving verb, docstring or year: never an IOI, docstring or greater-than example
    assert not any(f" {verb} " in t for t in texts for verb in ioi.GIVES)
    assert not any(":param" in t or "the year" in t for t in texts)


def test_docstring_extra_params_never_draw_heldout_names():
    rng = random.Random(4)
    extra = ["kettle", "river"] + docstring.PARAMS_HELDOUT
    text = "".join(
        docstring.docstring_training_text(rng, extra, extra_share=1.0) for _ in range(500)
    )
    assert "kettle" in text
    signatures = [line for line in text.splitlines() if line.startswith("def ")]
    for line in signatures:
        args = line.split("(self, ")[1].split(")")[0].split(", ")
        assert not set(args) & set(docstring.PARAMS_HELDOUT)
