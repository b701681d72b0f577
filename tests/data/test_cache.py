"""Disk cache: harvest round trip, manifest checks, training from the cache with resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sparsecircuits.data.cache import CachedActivationSource, harvest_to_disk
from sparsecircuits.data.store import ActivationStore, ActivationStoreConfig
from sparsecircuits.errors import SparseCircuitsError

MLP_IN, MLP_OUT = "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"
CTX = 9


def direct_rows(adapter, contexts, hook, exclude_bos=True):
    """The activations the model gives for the contexts, flattened to [rows, d]."""
    _, cache = adapter.run_with_cache(torch.stack(contexts), [hook])
    acts = cache[hook][:, 1:] if exclude_bos else cache[hook]
    return acts.reshape(-1, acts.shape[-1])


def harvest(helpers, folder, n_contexts=30, n_tokens=200, shard_tokens=70, **kwargs):
    adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    contexts = helpers.synthetic_contexts(n_contexts, CTX)
    source = harvest_to_disk(
        adapter,
        iter(contexts),
        [MLP_IN, MLP_OUT],
        folder,
        n_tokens,
        shard_tokens,
        contexts_per_forward=4,
        progress=False,
        **kwargs,
    )
    return source, adapter, contexts


def test_round_trip_equals_in_memory_activations(helpers, tmp_path):
    source, adapter, contexts = harvest(helpers, tmp_path / "cache")
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["hooks"] == {MLP_IN: 4, MLP_OUT: 3}
    assert manifest["n_tokens"] == 200 and manifest["context_size"] == CTX
    assert manifest["model_name"] == "fake-model" and manifest["dtype"] == "float32"
    # shards hold whole contexts: 70 -> 64 rows; 200 = 64 + 64 + 64 + 8
    assert [s["n_tokens"] for s in manifest["shards"]] == [64, 64, 64, 8]
    assert manifest["n_contexts"] == 25  # ceil(200 / 8) contexts were run
    for hook in (MLP_IN, MLP_OUT):
        want = direct_rows(adapter, contexts, hook)[:200]
        assert torch.equal(source.read(hook), want)
        assert torch.equal(source.read(hook, 60, 130), want[60:130])  # across a shard border
    token_ids = torch.stack(contexts)[:, 1:].reshape(-1)[:200]
    assert torch.equal(source.read_token_ids(), token_ids)


def test_store_from_cache_matches_store_from_model(helpers, tmp_path):
    source, adapter, contexts = harvest(helpers, tmp_path / "cache", n_tokens=240, shard_tokens=50)
    cfg = ActivationStoreConfig(context_size=CTX, batch_tokens=16, buffer_tokens=80, seed=5)
    cached = list(ActivationStore.from_cache(tmp_path / "cache", [MLP_IN, MLP_OUT], cfg))
    assert len(cached) == 15
    rows = torch.cat([b[MLP_IN] for b in cached])
    # same rows as the model gives (as a set), shuffled, hook pairs aligned
    want = direct_rows(adapter, contexts, MLP_IN)[:240]
    assert torch.equal(rows[rows[:, 0].argsort()], want[want[:, 0].argsort()])
    assert not torch.equal(rows, want)
    for batch in cached:
        assert torch.equal(batch[MLP_OUT][:, 0], 2 * batch[MLP_IN][:, 0] + 1)
        assert torch.equal(batch[MLP_OUT][:, 2], 10 * batch[MLP_IN][:, 3])
    # the model store over the same contexts with a buffer of whole contexts gives the same batches
    model_store = ActivationStore(adapter, contexts, [MLP_IN, MLP_OUT], cfg)
    for got, want_batch in zip(cached, model_store, strict=False):
        assert torch.equal(got[MLP_IN], want_batch[MLP_IN])


def test_cache_store_resume_and_config_dir(helpers, tmp_path):
    harvest(helpers, tmp_path / "cache", n_tokens=240)
    cfg = ActivationStoreConfig(
        batch_tokens=16, buffer_tokens=70, cache_dir=str(tmp_path / "cache")
    )
    full = [b[MLP_OUT] for b in ActivationStore(None, None, [MLP_OUT], cfg)]
    first = ActivationStore(None, None, [MLP_OUT], cfg)
    for _ in range(5):
        next(first)
    resumed = ActivationStore(None, None, [MLP_OUT], cfg)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(torch.equal(a[MLP_OUT], b) for a, b in zip(resumed, full[5:], strict=True))


def test_manifest_validation(helpers, tmp_path):
    source, adapter, _ = harvest(helpers, tmp_path / "cache")
    with pytest.raises(SparseCircuitsError, match=r"no hook\(s\) blocks.1.hook_resid_post.*cached"):
        ActivationStore.from_cache(tmp_path / "cache", ["blocks.1.hook_resid_post"])

    class WiderAdapter(helpers.FakeAdapter):
        def hook_dim(self, name):
            return 99

    with pytest.raises(SparseCircuitsError, match="the model has 99"):
        ActivationStore.from_cache(tmp_path / "cache", [MLP_IN], adapter=WiderAdapter())
    with pytest.raises(SparseCircuitsError, match="already holds an activation cache"):
        harvest(helpers, tmp_path / "cache")
    harvest(helpers, tmp_path / "cache", n_tokens=50, overwrite=True)
    assert CachedActivationSource(tmp_path / "cache").n_tokens == 50
    assert len(list((tmp_path / "cache").glob("shard_*"))) == 1  # stale shards removed
    (tmp_path / "cache" / "shard_00000.safetensors").unlink()
    with pytest.raises(SparseCircuitsError, match="missing 1 shard"):
        CachedActivationSource(tmp_path / "cache")
    with pytest.raises(SparseCircuitsError, match="no manifest.json"):
        CachedActivationSource(tmp_path)


def test_harvest_short_data_warns_and_empty_data_raises(helpers, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sparsecircuits"):
        source, _, _ = harvest(helpers, tmp_path / "short", n_contexts=3, n_tokens=1000)
    assert source.n_tokens == 24 and "ran out after 24" in caplog.text
    adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    with pytest.raises(SparseCircuitsError, match="no contexts"):
        harvest_to_disk(adapter, iter([]), [MLP_IN], tmp_path / "empty", 10, progress=False)


def test_harvest_bf16_and_bos_kept(helpers, tmp_path):
    source, adapter, contexts = harvest(
        helpers, tmp_path / "cache", n_tokens=90, dtype="bfloat16", exclude_bos=False
    )
    assert source.dtype == torch.bfloat16
    want = direct_rows(adapter, contexts, MLP_IN, exclude_bos=False)[:90]
    assert torch.equal(source.read(MLP_IN), want.to(torch.bfloat16))
