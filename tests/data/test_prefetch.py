"""The activation store's background fill: same batches and weights as without it, exact resume
from what was consumed, errors and shutdown without stray threads."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from sparsecircuits.data.store import ActivationStore, ActivationStoreConfig
from sparsecircuits.dictionaries import DictionaryConfig, make
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.training import TrainConfig, Trainer

MLP_IN, MLP_OUT = "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"
CTX = 9  # 8 rows per context


def config(**overrides):
    values = dict(
        context_size=CTX, contexts_per_forward=3, batch_tokens=32, buffer_tokens=200, seed=0
    )
    values.update(overrides)
    return ActivationStoreConfig(**values)


def fill_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparsecircuits-fill")]


class RecordingAdapter:
    """Wraps the fake adapter: records which thread ran each forward; can sleep in each forward,
    or raise in forward number `fail_at`."""

    def __init__(self, inner, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.inner = inner
        self.delay = delay
        self.fail_at = fail_at
        self.threads: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run_with_cache(self, input_ids, hooks, stop_after_last=True):
        self.threads.append(threading.current_thread().name)
        if self.fail_at is not None and len(self.threads) == self.fail_at:
            raise SparseCircuitsError("the model failed on purpose")
        time.sleep(self.delay)
        return self.inner.run_with_cache(input_ids, hooks, stop_after_last)


def stores(helpers, n_contexts=60, **adapter_kw):
    """(prefetching store, its adapter, store without prefetch) over the same contexts."""
    contexts = helpers.synthetic_contexts(n_contexts, CTX)
    adapter = RecordingAdapter(helpers.FakeAdapter(helpers.make_tokenizer()), **adapter_kw)
    ahead = ActivationStore(adapter, contexts, [MLP_IN, MLP_OUT], config())
    plain_adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    plain = ActivationStore(plain_adapter, contexts, [MLP_IN, MLP_OUT], config(prefetch=False))
    return ahead, adapter, plain


def test_prefetch_serves_the_same_batches_and_harvests_in_the_background(helpers):
    ahead, adapter, plain = stores(helpers)
    assert ahead.prefetch and not plain.prefetch
    got, want = list(ahead), list(plain)
    assert len(got) == len(want) == (60 * 8) // 32
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a[MLP_IN], b[MLP_IN]) and torch.equal(a[MLP_OUT], b[MLP_OUT])
    # fill 0 runs in the foreground, every later one in a fill thread
    first_fill = 200 // 8 // 3 + 1  # forwards of 3 contexts for the 25 contexts of a fill
    assert all(name == "MainThread" for name in adapter.threads[:first_fill])
    assert adapter.threads[first_fill:]
    assert all(name.startswith("sparsecircuits-fill") for name in adapter.threads[first_fill:])
    assert not fill_threads()


def test_next_fill_is_ready_before_it_is_needed(helpers):
    ahead, _, _ = stores(helpers)
    next(ahead)  # fill 0 in the foreground, fill 1 started
    pending = ahead._pending
    assert pending is not None and pending.fill_index == 1
    pending.result()  # what a trainer's steps give it time for
    waited = ahead.wait_seconds
    for _ in range(6):  # 200 rows per fill, 32 per batch: batch 6 straddles fills 0 and 1
        next(ahead)
    assert ahead.wait_seconds - waited < 0.5  # swapped in, not harvested here


def test_batches_keep_pace_with_a_slower_background_fill(helpers):
    ahead, _, _ = stores(helpers, delay=0.01)
    next(ahead)
    for _ in range(5):  # the rest of fill 0's whole batches, fill 1 harvested meanwhile
        next(ahead)
        pending = ahead._pending
        assert pending is not None and ahead._rows_filled
        share = ahead._rows_served / ahead._rows_filled
        # each batch returns only once the next fill is as far along as this one is used up
        assert pending.done() or pending.control.rows >= int(share * ahead.capacity)


def test_prefetch_off_for_a_one_shot_iterator(helpers):
    adapter = helpers.FakeAdapter(helpers.make_tokenizer())
    contexts = iter(helpers.synthetic_contexts(60, CTX))
    store = ActivationStore(adapter, contexts, [MLP_IN], config())
    assert not store.prefetch  # a cancelled fill could not be replayed
    assert len(list(store)) == (60 * 8) // 32


def test_state_records_what_was_consumed_not_what_was_prefetched(helpers):
    ahead, _, plain = stores(helpers)
    for _ in range(3):
        next(ahead), next(plain)
    assert ahead._pending is not None  # fill 1 is being (or was) harvested
    assert ahead.state_dict() == plain.state_dict()


def test_error_in_the_background_fill_reaches_the_consumer(helpers):
    # forward 10 is in fill 1 (fill 0 takes 9 forwards), which runs in the background
    ahead, adapter, _ = stores(helpers, fail_at=10)
    batches = 0
    with pytest.raises(SparseCircuitsError, match="failed on purpose"):
        for _ in ahead:
            batches += 1
    assert batches == 200 // 32  # fill 0's whole batches, then the error where fill 1 is needed
    assert adapter.threads[9].startswith("sparsecircuits-fill")
    assert not fill_threads()


def test_close_stops_the_fill_after_its_current_forward(helpers):
    ahead, adapter, plain = stores(helpers, delay=0.05)
    want = list(plain)
    got = [next(ahead)]
    ahead.close()  # waits for the forward in progress, not for the fill's 9
    assert not fill_threads()
    forwards = len(adapter.threads)
    assert forwards < 9 + 9  # fill 1 did not run to its end
    got += list(ahead)  # the store carries on: the next fill is harvested again
    assert all(torch.equal(a[MLP_IN], b[MLP_IN]) for a, b in zip(got, want, strict=True))
    assert len(got) == len(want)


def tiny_transcoder(seed: int = 0):
    cfg = DictionaryConfig(
        architecture="topk",
        kind="transcoder",
        d_in=4,
        d_sae=16,
        d_out=3,
        hook_in=MLP_IN,
        hook_out=MLP_OUT,
        k=2,
        seed=seed,
    )
    return make(cfg)


def train_cfg(steps: int) -> TrainConfig:
    return TrainConfig(total_tokens=32 * steps, batch_tokens=32, lr=1e-3, quiet=True, seed=0)


def test_trained_weights_are_identical_with_and_without_prefetch(helpers):
    ahead, _, plain = stores(helpers, n_contexts=120)
    results = []
    for store in (ahead, plain):
        dictionaries = {"tc": tiny_transcoder()}
        Trainer(store, dictionaries, train_cfg(25)).train()
        results.append({k: v.clone() for k, v in dictionaries["tc"].state_dict().items()})
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
    assert not fill_threads()


def test_resumed_training_with_prefetch_matches_uninterrupted(helpers, tmp_path):
    contexts = helpers.synthetic_contexts(120, CTX)

    def trainer(out):
        adapter = helpers.FakeAdapter(helpers.make_tokenizer())
        store = ActivationStore(adapter, contexts, [MLP_IN, MLP_OUT], config())
        return Trainer(store, {"tc": tiny_transcoder()}, train_cfg(25), out_dir=out)

    whole = trainer(tmp_path / "whole")
    whole.train()
    first = trainer(tmp_path / "split")
    first.train(stop_at_step=9)  # mid-fill, with fill 1 being harvested
    checkpoint = first.save_checkpoint()
    resumed = trainer(tmp_path / "split")
    resumed.load_checkpoint(checkpoint)
    resumed.train()
    for key, value in whole.dictionaries["tc"].state_dict().items():
        assert torch.equal(value, resumed.dictionaries["tc"].state_dict()[key]), key
    first.store.close()  # type: ignore[attr-defined]
    assert not fill_threads()


def test_interrupt_in_training_leaves_no_fill_thread(helpers):
    ahead, _, _ = stores(helpers, n_contexts=120, delay=0.02)
    transcoder = tiny_transcoder()
    calls = {"n": 0}
    original = transcoder.loss

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    transcoder.loss = loss  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        Trainer(ahead, {"tc": transcoder}, train_cfg(25)).train()
    assert not fill_threads()


def test_prefetch_is_not_part_of_a_runs_identity():
    from sparsecircuits.config import to_dict
    from sparsecircuits.pipelines.train import RunConfig
    from sparsecircuits.training.checkpoints import fingerprint, run_settings

    on, off = to_dict(RunConfig()), to_dict(RunConfig(prefetch=False))
    assert on != off  # recorded in run_config.json
    # a run may be resumed with prefetch switched: it does not change the batches
    assert fingerprint(run_settings({}, on)) == fingerprint(run_settings({}, off))
