"""The data path on real tiny HF models: store and cache rows equal the model's activations."""

from __future__ import annotations

import json

import pytest
import torch

from sparsecircuits import models
from sparsecircuits.data import (
    ActivationStore,
    ActivationStoreConfig,
    EmbeddedSource,
    FileSource,
    TokenSource,
    harvest_to_disk,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import tiny

MLP_IN, MLP_OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
CTX = 16


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def adapter(request, tmp_path_factory):
    folder = tiny.build_tiny_model(
        request.param, tmp_path_factory.mktemp(request.param), max_context=32
    )
    return models.load_model(str(folder), device="cpu")


@pytest.fixture
def token_source(adapter, tmp_path):
    texts = tiny.tokenizer_corpus(n_sentences=60, seed=3)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return TokenSource(
        FileSource(tmp_path / "data.jsonl"), adapter.tokenizer, CTX, max_context=adapter.max_context
    )


def model_rows(adapter, token_source, hook):
    contexts = torch.stack(list(token_source))
    with torch.no_grad():
        _, cache = adapter.run_with_cache(contexts, [hook])
    return cache[hook][:, 1:].reshape(-1, adapter.hook_dim(hook)), contexts


def sort_rows(rows):
    # sort by all columns lexicographically-ish via a random projection (rows are distinct)
    key = rows.double() @ torch.linspace(1, 2, rows.shape[1], dtype=torch.float64)
    return rows[key.argsort()]


def test_store_serves_exactly_the_model_rows(adapter, token_source):
    cfg = ActivationStoreConfig(
        context_size=CTX, contexts_per_forward=4, batch_tokens=30, buffer_tokens=300
    )
    store = ActivationStore(adapter, token_source, [MLP_IN, MLP_OUT], cfg)
    batches = list(store)
    served_in = torch.cat([b[MLP_IN] for b in batches])
    served_out = torch.cat([b[MLP_OUT] for b in batches])
    want_in, contexts = model_rows(adapter, token_source, MLP_IN)
    want_out, _ = model_rows(adapter, token_source, MLP_OUT)
    assert contexts[:, 0].eq(adapter.bos_token_id).all()
    # served rows are a subset of model rows; pairs stay aligned (match each in-row to its out-row)
    assert served_in.shape[0] == len(batches) * 30 and len(batches) >= 5
    distance = torch.cdist(served_in, want_in, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(dim=1)
    assert torch.allclose(served_in, want_in[nearest], atol=1e-5)
    assert torch.allclose(served_out, want_out[nearest], atol=1e-5)
    # no row served twice: identical rows (same token after the same prefix) may repeat only
    # as often as the model produced them; ties in argmin resolve to the first copy
    copies = (
        torch.cdist(want_in, want_in, compute_mode="donot_use_mm_for_euclid_dist") < 1e-5
    ).sum(dim=1)
    served_count = torch.bincount(nearest, minlength=want_in.shape[0])
    assert (served_count <= copies).all()


def test_resume_on_real_model(adapter, token_source):
    cfg = ActivationStoreConfig(
        context_size=CTX, contexts_per_forward=4, batch_tokens=32, buffer_tokens=200
    )
    full = list(ActivationStore(adapter, token_source, [MLP_IN, MLP_OUT], cfg))
    first = ActivationStore(adapter, token_source, [MLP_IN, MLP_OUT], cfg)
    for _ in range(4):
        next(first)
    resumed = ActivationStore(adapter, token_source, [MLP_IN, MLP_OUT], cfg)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 4
    for got, want in zip(rest, full[4:], strict=True):
        assert torch.equal(got[MLP_IN], want[MLP_IN]) and torch.equal(got[MLP_OUT], want[MLP_OUT])


def test_cache_round_trip_on_real_model(adapter, token_source, tmp_path):
    want, _ = model_rows(adapter, token_source, MLP_OUT)
    n_tokens = want.shape[0] - 7
    source = harvest_to_disk(
        adapter,
        token_source,
        [MLP_IN, MLP_OUT],
        tmp_path / "cache",
        n_tokens,
        shard_tokens=100,
        contexts_per_forward=4,
        progress=False,
    )
    assert source.model_name == adapter.name
    assert torch.allclose(source.read(MLP_OUT), want[:n_tokens], atol=1e-5)
    with pytest.raises(SparseCircuitsError, match="no hook"):
        ActivationStore.from_cache(
            tmp_path / "cache", ["blocks.0.hook_resid_post"], adapter=adapter
        )


def test_context_longer_than_model_raises(adapter, token_source):
    cfg = ActivationStoreConfig(context_size=64)
    with pytest.raises(SparseCircuitsError, match="maximum context 32"):
        ActivationStore(adapter, token_source, [MLP_IN], cfg)


def test_embedded_corpus_packs_with_its_tokenizer():
    from transformers import AutoTokenizer

    from sparsecircuits.models.embedded import embedded_dir

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_dir()))
    contexts = TokenSource(EmbeddedSource(), tokenizer, 64)
    first = next(iter(contexts))
    assert first.shape == (64,) and first[0].item() == tokenizer.bos_token_id
