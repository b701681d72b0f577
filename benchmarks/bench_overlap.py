"""Overlapped harvest and training: end-to-end tokens/s against harvest-only and train-only, and
the per-step stalls a refill causes, with and without the store's background fill.

`python -m benchmarks.bench_overlap [--quick] [--threads N] [--steps N] [--device cuda]
[--model FOLDER] [--d-sae N]` (one JSON line per measurement). The work is `sparsecircuits
demo`'s: the embedded model's layer 1, a TopK transcoder and a TopK SAE (d_sae 2048, k 32)
trained from one forward, 4096 tokens per step, a 65,536-token shuffle buffer (a refill every
16 steps). `--device cuda` runs the model, the store and the training on the GPU (the background
fill then harvests on a side stream); `--model` takes any local model folder (the device plan
passes its random Gemma-2 of Gemma-2-2B's width) and `--d-sae` the dictionaries' width.

* `harvest_only`: `ActivationStore.next_batch()` alone for the run's steps (model forward,
  buffer copy, shuffled gather), prefetch off; tokens/s counts the rows harvested (whole fills).
* `train_only`: `Trainer` steps on batches already in memory.
* `end_to_end`: `Trainer` on an `ActivationStore`, prefetch off and on, interleaved rounds.
  `ideal_serial` is the trained tokens over harvest-only seconds plus train-only seconds (for
  equal harvested and trained tokens, `1 / (1/harvest + 1/train)`): harvesting then training
  with nothing overlapped; `vs_ideal_serial` the measured end-to-end over it. Per step: the
  median step time and the stalls (steps longer than twice the median, with the seconds they
  add over the median).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import sparsecircuits  # noqa: F401  # first: its OpenMP wait policy must precede torch's import

# isort: split
import torch

from benchmarks.common import emit

LAYER = 1
D_SAE = 2048
K = 32
CONTEXT_SIZE = 128
BATCH_TOKENS = 4096
BUFFER_TOKENS = 65536
HOOKS = [
    f"blocks.{LAYER}.mlp.hook_in",
    f"blocks.{LAYER}.mlp.hook_out",
    f"blocks.{LAYER}.hook_mlp_out",
]


def dictionaries(adapter: Any, d_sae: int = D_SAE) -> dict[str, Any]:
    """The demo's TopK transcoder and TopK SAE on layer `LAYER`, on the model's device."""
    from sparsecircuits.dictionaries import DictionaryConfig, make

    hook_in, hook_out, sae_hook = HOOKS
    made = {}
    for kind, (h_in, h_out) in (("transcoder", (hook_in, hook_out)), ("sae", (sae_hook, sae_hook))):
        cfg = DictionaryConfig(
            architecture="topk",
            kind=kind,
            d_in=adapter.hook_dim(h_in),
            d_sae=d_sae,
            d_out=adapter.hook_dim(h_out),
            hook_in=h_in,
            hook_out=h_out,
            k=K,
            seed=0,
            device=str(adapter.device),
        )
        made[kind] = make(cfg)
    return made


def make_store(adapter: Any, contexts: list[torch.Tensor], prefetch: bool) -> Any:
    from sparsecircuits.data import ActivationStore, ActivationStoreConfig

    cfg = ActivationStoreConfig(
        context_size=CONTEXT_SIZE,
        contexts_per_forward=32,
        batch_tokens=BATCH_TOKENS,
        buffer_tokens=BUFFER_TOKENS,
        prefetch=prefetch,
    )
    return ActivationStore(adapter, contexts, HOOKS, cfg)


class TimedStore:
    """Passes batches through and records when each was asked for (the step boundaries)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.times: list[float] = []

    def next_batch(self) -> dict[str, torch.Tensor]:
        self.times.append(time.perf_counter())
        return self.store.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return self.store.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state)

    def close(self) -> None:
        self.store.close()


class FixedBatches:
    """A store that serves batches harvested beforehand, in turn (train-only)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches
        self.served = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.batches[self.served % len(self.batches)]
        self.served += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def train(adapter: Any, store: Any, steps: int, d_sae: int = D_SAE) -> float:
    """Train the demo dictionaries for `steps` steps from `store`; return the seconds (the
    dictionaries are built before the clock starts)."""
    from benchmarks.common import synchronize
    from sparsecircuits.training import TrainConfig, Trainer

    cfg = TrainConfig(
        total_tokens=steps * BATCH_TOKENS, batch_tokens=BATCH_TOKENS, quiet=True, log_every=10**9
    )
    made = dictionaries(adapter, d_sae)
    synchronize(str(adapter.device))
    start = time.perf_counter()
    Trainer(store, made, cfg).train()
    synchronize(str(adapter.device))
    return time.perf_counter() - start


def step_stalls(times: list[float], end: float) -> dict[str, Any]:
    """From the step boundaries: median step seconds, the stalls (> 2x median) and their excess."""
    steps = [b - a for a, b in zip(times, [*times[1:], end], strict=True)][1:]  # not step 0
    median = statistics.median(steps)
    stalls = [s for s in steps if s > 2 * median]
    return {
        "median_step_s": round(median, 4),
        "max_step_s": round(max(steps), 4),
        "stalls": len(stalls),
        "stall_excess_s": round(sum(s - median for s in stalls), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 round")
    parser.add_argument("--steps", type=int, default=48, help="steps per run (default 48)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch/numba CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--model",
        default="embedded",
        help="'embedded' (default), 'tiny' (a random GPT-2 of its shape) or a local model folder",
    )
    parser.add_argument(
        "--d-sae", type=int, default=D_SAE, help=f"dictionary width (default {D_SAE})"
    )
    args = parser.parse_args(argv)
    from sparsecircuits.models import load_model
    from sparsecircuits.threads import set_threads, summary

    set_threads(args.threads)
    steps, rounds = (20, 1) if args.quick else (args.steps, args.rounds)
    sys.path.insert(0, ".")
    from benchmarks.common import (
        BenchOptions,
        model_label,
        model_source,
        synchronize,
        text_contexts,
    )

    source = model_source(BenchOptions(model=args.model))  # "tiny" builds a model: once
    adapter = load_model(source, device=args.device)
    d_sae = args.d_sae

    n_contexts = steps * BATCH_TOKENS // (CONTEXT_SIZE - 1) + BUFFER_TOKENS // CONTEXT_SIZE + 2
    contexts = list(text_contexts(adapter, n_contexts, CONTEXT_SIZE).unbind(0))
    config = {
        "device": str(adapter.device),
        "model": model_label(source),
        "layer": LAYER,
        "dictionaries": "topk transcoder + topk sae",
        "d_sae": d_sae,
        "k": K,
        "batch_tokens": BATCH_TOKENS,
        "buffer_tokens": BUFFER_TOKENS,
        "steps": steps,
        **summary(),
    }
    print(f"overlap {config}", file=sys.stderr, flush=True)
    tokens = steps * BATCH_TOKENS

    # warm-up: thread pools, numba compilation, first-call allocations
    warm = make_store(adapter, contexts, prefetch=False)
    batches = [warm.next_batch() for _ in range(4)]
    train(adapter, FixedBatches(batches), 4, d_sae)

    samples: dict[str, list[float]] = {"harvest_only": [], "train_only": []}
    stalls: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(rounds):
        store = make_store(adapter, contexts, prefetch=False)
        start = time.perf_counter()
        for _ in range(steps):
            store.next_batch()
        synchronize(str(adapter.device))
        samples["harvest_only"].append(time.perf_counter() - start)
        harvested = store.producer.position * store.producer.rows_per_context
        samples["train_only"].append(train(adapter, FixedBatches(batches), steps, d_sae))
        for mode in ("off", "on"):
            timed = TimedStore(make_store(adapter, contexts, prefetch=mode == "on"))
            seconds = train(adapter, timed, steps, d_sae)
            samples.setdefault(f"end_to_end_prefetch_{mode}", []).append(seconds)
            stalls[mode].append(step_stalls(timed.times, timed.times[0] + seconds))
    seconds = {name: statistics.median(s) for name, s in samples.items()}
    speed = {name: tokens / s for name, s in seconds.items()}
    speed["harvest_only"] = harvested / seconds["harvest_only"]
    ideal = tokens / (seconds["harvest_only"] + seconds["train_only"])
    for name in ("harvest_only", "train_only"):
        emit(
            {
                "name": f"overlap_{name}",
                "config": config,
                "tokens_per_s": round(speed[name], 1),
                "seconds": round(seconds[name], 3),
                "tokens": harvested if name == "harvest_only" else tokens,
            }
        )
    for mode in ("off", "on"):
        name = f"end_to_end_prefetch_{mode}"
        emit(
            {
                "name": f"overlap_{name}",
                "config": config,
                "tokens_per_s": round(speed[name], 1),
                "seconds": round(seconds[name], 3),
                "ideal_serial_tokens_per_s": round(ideal, 1),
                "vs_ideal_serial": round(speed[name] / ideal, 3),
                "steps": stalls[mode],
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
