"""Negative prompts of the circuit tasks (O'Neill & Bui): minimal edits that remove the answer."""

from __future__ import annotations

import re

import pytest

from sparsecircuits.tasks import make_docstring_prompts, make_greater_than_prompts, make_ioi_prompts
from sparsecircuits.tasks.negatives import (
    docstring_negatives,
    greater_than_negatives,
    ioi_abc_text,
    ioi_negatives,
    same_length_pairs,
)


@pytest.fixture(scope="module")
def tokenizer():
    import transformers

    from sparsecircuits.models.embedded import embedded_dir

    return transformers.AutoTokenizer.from_pretrained(embedded_dir())


def test_ioi_abc_text_hand_examples() -> None:
    baba = "When John and Mary went to the store, John gave a drink to"
    assert ioi_abc_text(baba, io="Mary", s="John", third="Alice") == (
        "When Mary and Alice went to the store, John gave a drink to"
    )
    abba = "When Mary and John went to the store, John gave a drink to"
    assert ioi_abc_text(abba, io="Mary", s="John", third="Alice") == (
        "When Alice and Mary went to the store, John gave a drink to"
    )


def test_ioi_negatives_have_three_distinct_names(tokenizer) -> None:
    pos = make_ioi_prompts(tokenizer, 20, seed=1)
    neg = ioi_negatives(tokenizer, pos, seed=1)
    assert len(same_length_pairs(pos, neg)) == 20
    for i, text in enumerate(neg.texts):
        io = pos.answers[i].strip()
        subject = tokenizer.decode([int(pos.s_ids[i])]).strip()
        assert len(re.findall(rf"\b{subject}\b", pos.texts[i])) == 2
        assert len(re.findall(rf"\b{subject}\b", text)) == 1, text
        assert len(re.findall(rf"\b{io}\b", text)) == 1, text
        assert len(text.split()) == len(pos.texts[i].split())


def test_greater_than_negatives_start_in_01(tokenizer) -> None:
    pos = make_greater_than_prompts(tokenizer, 10, seed=0)
    neg = greater_than_negatives(tokenizer, pos)
    for p, n in zip(pos.texts, neg.texts, strict=True):
        assert re.search(r"year \d\d01 to the year", n)
        assert p.split(" year ")[0] == n.split(" year ")[0]
    assert len(same_length_pairs(pos, neg)) == 10


def test_docstring_negatives_document_no_signature_argument(tokenizer) -> None:
    pos = make_docstring_prompts(tokenizer, 10, seed=0)
    neg = docstring_negatives(tokenizer, pos, seed=0)
    for text in neg.texts:
        args = re.search(r"\(self, ([^)]*)\)", text).group(1).split(", ")
        documented = re.findall(r":param (\w+):", text)
        assert len(documented) == 2 and not set(documented) & set(args)
    assert len(same_length_pairs(pos, neg)) == 10


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize(
    "make, negatives",
    [
        (make_ioi_prompts, ioi_negatives),
        (make_greater_than_prompts, greater_than_negatives),
        (make_docstring_prompts, docstring_negatives),
    ],
)
def test_negatives_tokenize_like_their_prompts(tokenizer, make, negatives, prepend_bos) -> None:
    from sparsecircuits.models.tokens import bos_token_id

    pos = make(tokenizer, 8, seed=0, prepend_bos=prepend_bos)
    neg = negatives(tokenizer, pos)
    bos = bos_token_id(tokenizer)
    assert bool((pos.input_ids[:, 0] == bos).all()) is prepend_bos
    assert bool((neg.input_ids[:, 0] == bos).all()) is prepend_bos
    assert len(same_length_pairs(pos, neg)) > 0
