"""Packing: exact lengths, BOS at position 0, EOS between documents, nothing lost."""

from __future__ import annotations

import pytest
import torch

from sparsecircuits.data.sources import FileSource
from sparsecircuits.data.tokenize import TokenBatcher, TokenSource, pack_tokens
from sparsecircuits.errors import SparseCircuitsError


def documents(helpers, n_docs=40):
    # documents of varying length, so contexts straddle document boundaries
    return [helpers.words(7 * i, 3 + (i * 11) % 29) for i in range(n_docs)]


def expected_stream(tokenizer, texts):
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return stream


@pytest.mark.parametrize("context_size", [2, 8, 17])
def test_contexts_are_exact_start_with_bos_and_lose_nothing(helpers, tokenizer, context_size):
    texts = documents(helpers)
    contexts = list(pack_tokens(texts, tokenizer, context_size, tokenize_batch=6))
    stream = expected_stream(tokenizer, texts)
    body = context_size - 1
    assert len(contexts) == len(stream) // body
    for context in contexts:
        assert context.shape == (context_size,) and context.dtype == torch.long
        assert context[0].item() == tokenizer.bos_token_id
    packed = torch.cat([c[1:] for c in contexts]).tolist()
    assert packed == stream[: len(packed)]
    assert len(stream) - len(packed) < body  # only the final partial piece is dropped


def test_documents_are_separated_by_eos(helpers, tokenizer):
    contexts = list(pack_tokens(["w1 w2", "w3", "w4 w5 w6 w7"], tokenizer, 5))
    eos = tokenizer.eos_token_id
    assert [c.tolist() for c in contexts] == [[1, 4, 5, eos, 6], [1, eos, 7, 8, 9]]


def test_no_bos_and_gpt2_style_tokenizer(helpers):
    no_bos_tokenizer = helpers.make_tokenizer(with_bos=False)  # BOS falls back to EOS
    contexts = list(pack_tokens(["w0 w1 w2 w3 w4 w5"], no_bos_tokenizer, 4))
    assert [c[0].item() for c in contexts] == [no_bos_tokenizer.eos_token_id] * 2
    plain = list(pack_tokens(["w0 w1 w2 w3 w4 w5"], no_bos_tokenizer, 4, prepend_bos=False))
    assert [c.tolist() for c in plain] == [[3, 4, 5, 6]]


def test_context_too_long_or_too_small_raises_at_once(tokenizer):
    with pytest.raises(SparseCircuitsError, match="longer than the model's maximum context 16"):
        pack_tokens(["w1"], tokenizer, 32, max_context=16)
    with pytest.raises(SparseCircuitsError, match="too small"):
        pack_tokens(["w1"], tokenizer, 1)
    with pytest.raises(SparseCircuitsError, match="longer than the model's maximum"):
        TokenSource(None, tokenizer, 32, max_context=16)


def test_too_few_tokens_raises(tokenizer):
    with pytest.raises(SparseCircuitsError, match="yielded only 3 tokens.*context of 8"):
        list(pack_tokens(["w1 w2"], tokenizer, 8))


def test_token_source_replays_and_reports_empty_data(helpers, tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(documents(helpers)))
    source = TokenSource(FileSource(tmp_path / "a.txt", split="paragraph"), tokenizer, 9)
    first = torch.stack(list(source))
    assert torch.equal(first, torch.stack(list(source)))
    assert source.bos_token_id == tokenizer.bos_token_id
    (tmp_path / "empty.txt").write_text("   ")
    with pytest.raises(SparseCircuitsError, match="yielded no text"):
        list(TokenSource(FileSource(tmp_path / "empty.txt"), tokenizer, 9))


def test_token_batcher(helpers, tokenizer):
    contexts = list(pack_tokens(documents(helpers), tokenizer, 6))
    batches = list(TokenBatcher(contexts, 4))
    assert all(b.shape == (4, 6) for b in batches[:-1])
    assert 1 <= batches[-1].shape[0] <= 4
    assert torch.equal(torch.cat(batches), torch.stack(contexts))
    dropped = list(TokenBatcher(contexts, 4, drop_last=True))
    assert len(dropped) == len(contexts) // 4


def test_one_bos_rule_for_a_tokenizer_without_bos(helpers) -> None:
    """The tokenizer has no BOS but the model config does: packed contexts start with the
    config's id, as the adapter's prompts do; without a config the rule falls back to EOS."""
    from types import SimpleNamespace

    from sparsecircuits.models.tokens import bos_token_id

    tokenizer = helpers.make_tokenizer(with_bos=False)
    config = SimpleNamespace(bos_token_id=7)
    assert tokenizer.bos_token_id is None and bos_token_id(tokenizer) == tokenizer.eos_token_id
    assert bos_token_id(tokenizer, config) == 7
    texts = [helpers.words(0, 40)]
    contexts = list(pack_tokens(texts, tokenizer, 8, model_config=config))
    assert {int(c[0]) for c in contexts} == {7}
    source = TokenSource(None, tokenizer, 8, model_config=config)
    assert source.bos_token_id == 7
