"""ActivationStore: batches, BOS exclusion, hook alignment, mixing, memory, resume, exhaustion."""

from __future__ import annotations

import json

import pytest
import torch

from sparsecircuits.config import from_dict
from sparsecircuits.data.sources import FileSource
from sparsecircuits.data.store import ActivationStore, ActivationStoreConfig
from sparsecircuits.data.tokenize import TokenSource
from sparsecircuits.errors import SparseCircuitsError

MLP_IN, MLP_OUT, RESID = "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"
CTX = 9  # 8 activation rows per context once BOS is dropped


def config(**overrides):
    values = dict(
        context_size=CTX, contexts_per_forward=3, batch_tokens=32, buffer_tokens=200, seed=0
    )
    values.update(overrides)
    return ActivationStoreConfig(**values)


def store_over(helpers, n_contexts=60, hooks=(MLP_IN, MLP_OUT), **overrides):
    adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    contexts = helpers.synthetic_contexts(n_contexts, CTX)
    return ActivationStore(adapter, contexts, list(hooks), config(**overrides)), adapter


def check_pair_alignment(batch):
    mlp_in, mlp_out = batch[MLP_IN], batch[MLP_OUT]
    token, position = mlp_in[:, 0], mlp_in[:, 3]
    assert torch.equal(mlp_in[:, 1], token / 2 + 1)
    assert torch.equal(mlp_out[:, 0], 2 * token + 1)
    assert torch.equal(mlp_out[:, 1], token % 5)
    assert torch.equal(mlp_out[:, 2], 10 * position)


def test_batches_are_aligned_shuffled_and_without_bos(helpers):
    store, adapter = store_over(helpers)
    batches = list(store)
    assert len(batches) == (60 * (CTX - 1)) // 32
    for batch in batches:
        assert batch[MLP_IN].shape == (32, 4) and batch[MLP_OUT].shape == (32, 3)
        assert batch[MLP_IN].dtype == torch.float32
        check_pair_alignment(batch)
        assert (batch[MLP_IN][:, 3] >= 1).all()  # position 0 (BOS) never appears
    # every served row is a distinct (token) row of the stream: nothing duplicated
    tokens = torch.cat([b[MLP_IN][:, 0] for b in batches])
    assert tokens.unique().numel() == tokens.numel()
    # the model ran without autograd and stopped after the last hook
    assert all(not call["grad_enabled"] and call["stop_after_last"] for call in adapter.calls)
    assert max(call["shape"][0] for call in adapter.calls) == 3


def test_a_batch_mixes_many_contexts(helpers):
    store, _ = store_over(helpers, n_contexts=200, buffer_tokens=800, batch_tokens=64)
    distinct = []
    for batch in store:
        context_ids = (batch[MLP_IN][:, 0] // 1000).long()
        distinct.append(context_ids.unique().numel())
    mean_distinct = sum(distinct) / len(distinct)
    # buffer = 100 contexts; 64 uniform draws hit ~48 distinct contexts on average.
    # Unshuffled, a batch would span only 64 / 8 = 8 contexts.
    assert mean_distinct > 35, distinct


def test_bos_kept_when_not_excluded(helpers):
    store, _ = store_over(helpers, exclude_bos=False)
    rows = torch.cat([b[MLP_IN] for b in store])
    assert (rows[:, 3] == 0).sum() > 0
    assert rows.shape[0] == (60 * CTX) // 32 * 32


def test_memory_bound(helpers):
    hooks = (MLP_IN, MLP_OUT, RESID)
    store, _ = store_over(helpers, hooks=hooks, buffer_tokens=203, prefetch=False)
    assert store.capacity == 200  # whole contexts of 8 rows
    assert store.memory_bytes() == 200 * (4 + 3 + 5) * 4
    assert store.memory_bytes() <= 203 * (4 + 3 + 5) * 4
    held = sum(buffer.numel() * buffer.element_size() for buffer in store.buffers.values())
    assert held == store.memory_bytes()
    half, _ = store_over(helpers, dtype="bfloat16", prefetch=False)
    assert half.memory_bytes() == 200 * 7 * 2
    assert next(half)[MLP_IN].dtype == torch.bfloat16
    # prefetch: the fill being consumed and the one being harvested, never more
    ahead, _ = store_over(helpers, hooks=hooks, buffer_tokens=203)
    assert ahead.memory_bytes() == 2 * 200 * (4 + 3 + 5) * 4
    for _ in ahead:
        spare = ahead._spare or {}
        held = sum(b.numel() * b.element_size() for b in [*ahead.buffers.values(), *spare.values()])
        assert held <= ahead.memory_bytes()


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("steps_before", [0, 1, 6, 7, 9])
def test_resume_matches_uninterrupted_run(helpers, tokenizer, tmp_path, steps_before, prefetch):
    # buffer 200 rows / batch 32: fills end mid-batch, so some resumes straddle two fills
    (tmp_path / "a.txt").write_text(
        "\n\n".join(helpers.words(13 * i, 5 + i % 17) for i in range(80))
    )
    source = TokenSource(FileSource(tmp_path / "a.txt", split="paragraph"), tokenizer, CTX)
    adapter = helpers.FakeAdapter(tokenizer)
    uninterrupted = list(ActivationStore(adapter, source, [MLP_IN, MLP_OUT], config()))
    assert len(uninterrupted) > 12

    first = ActivationStore(adapter, source, [MLP_IN, MLP_OUT], config(prefetch=prefetch))
    for step in range(steps_before):
        assert torch.equal(next(first)[MLP_IN], uninterrupted[step][MLP_IN])
    state = json.loads(json.dumps(first.state_dict()))

    resumed = ActivationStore(adapter, source, [MLP_IN, MLP_OUT], config(prefetch=prefetch))
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(uninterrupted) - steps_before
    for got, want in zip(rest, uninterrupted[steps_before:], strict=True):
        assert torch.equal(got[MLP_IN], want[MLP_IN]) and torch.equal(got[MLP_OUT], want[MLP_OUT])
    assert resumed.tokens_served == len(uninterrupted) * 32


def test_resume_from_one_shot_iterator_and_seed_changes_order(helpers):
    store, _ = store_over(helpers)
    full = [b[MLP_IN] for b in store]
    first, _ = store_over(helpers)
    for _ in range(8):
        next(first)
    adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    resumed = ActivationStore(
        adapter, iter(helpers.synthetic_contexts(60, CTX)), [MLP_IN, MLP_OUT], config()
    )
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(a[MLP_IN], b) for a, b in zip(resumed, full[8:], strict=True))
    other, _ = store_over(helpers, seed=1)
    assert not torch.equal(next(other)[MLP_IN], full[0])


def test_resume_refuses_different_settings(helpers):
    store, _ = store_over(helpers)
    next(store)
    state = store.state_dict()
    for change in ({"batch_tokens": 16}, {"seed": 3}, {"buffer_tokens": 400}):
        other, _ = store_over(helpers, **change)
        with pytest.raises(SparseCircuitsError, match="cannot resume"):
            other.load_state_dict(state)
    subset, _ = store_over(helpers, hooks=(MLP_IN,))
    subset.load_state_dict(state)  # fewer hooks: the same data order (next test)
    state_one = subset.state_dict()
    both, _ = store_over(helpers)
    with pytest.raises(SparseCircuitsError, match="hooks"):
        both.load_state_dict(state_one)


def test_resume_with_a_subset_of_the_hooks_continues_the_same_rows(helpers):
    uninterrupted = [b[MLP_IN] for b in store_over(helpers)[0]]
    first, _ = store_over(helpers)
    for _ in range(5):
        next(first)
    resumed, _ = store_over(helpers, hooks=(MLP_IN,))
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(uninterrupted) - 5
    assert all(set(b) == {MLP_IN} for b in rest)
    assert all(torch.equal(a[MLP_IN], b) for a, b in zip(rest, uninterrupted[5:], strict=True))


def test_exhaustion_stops_and_empty_data_raises(helpers, tokenizer, tmp_path):
    store, _ = store_over(helpers, n_contexts=5)  # 40 rows: one batch, then the rest is dropped
    assert next(store)[MLP_IN].shape == (32, 4)
    with pytest.raises(StopIteration):
        next(store)
    with pytest.raises(StopIteration):
        next(store)
    adapter = helpers.FakeAdapter(tokenizer)
    with pytest.raises(SparseCircuitsError, match="yielded no activations"):
        next(ActivationStore(adapter, iter([]), [MLP_IN], config()))
    (tmp_path / "empty.jsonl").write_text("")
    empty = TokenSource(FileSource(tmp_path / "empty.jsonl"), tokenizer, CTX)
    with pytest.raises(SparseCircuitsError, match="yielded no text"):
        next(ActivationStore(adapter, empty, [MLP_IN], config()))


def test_configuration_errors(helpers, tokenizer):
    adapter = helpers.FakeAdapter(tokenizer, max_context=8)
    contexts = helpers.synthetic_contexts(4, CTX)
    with pytest.raises(SparseCircuitsError, match="maximum context 8"):
        ActivationStore(adapter, contexts, [MLP_IN], config())
    adapter = helpers.FakeAdapter(tokenizer)
    with pytest.raises(SparseCircuitsError, match="fewer than batch_tokens"):
        ActivationStore(adapter, contexts, [MLP_IN], config(buffer_tokens=16))
    with pytest.raises(SparseCircuitsError, match="duplicates"):
        ActivationStore(adapter, contexts, [MLP_IN, MLP_IN], config())
    with pytest.raises(SparseCircuitsError, match="context_size is 9"):
        next(ActivationStore(adapter, helpers.synthetic_contexts(40, 7), [MLP_IN], config()))
    no_bos = [c[1:].clone() for c in helpers.synthetic_contexts(40, CTX + 1)]
    with pytest.raises(SparseCircuitsError, match="does not start with BOS"):
        next(ActivationStore(adapter, no_bos, [MLP_IN], config()))
    with pytest.raises(SparseCircuitsError, match="unknown dtype"):
        ActivationStore(adapter, contexts, [MLP_IN], config(dtype="float8"))
    with pytest.raises(SparseCircuitsError, match="unknown key"):
        from_dict(ActivationStoreConfig, {"context_size": 8, "shuffle": True})
