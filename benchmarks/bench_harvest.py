"""Harvest throughput: `ModelAdapter.run_with_cache` vs the bare HF model.

For a hooked layer L (`blocks.L.mlp.hook_in` + `blocks.L.hook_mlp_out`, what a transcoder
trains on) three things run on the same `[32, 128]` token batch under `torch.no_grad()`:

* ours: `adapter.run_with_cache(ids, hooks, stop_after_last=True)`;
* bare-stop: the HF base model with its block list cut to blocks `0..L` (the cheapest forward
  that still computes layer L's MLP output; it also runs the final LayerNorm, a rounding error);
* bare-full: the full HF causal-LM forward (logits included), what a harvester that cannot
  stop early pays.

Plus the whole store path: `ActivationStore.next_batch()` tokens/s (forward, buffer copy,
shuffle gather) over a stream of contexts.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    BenchOptions,
    emit,
    log,
    memory_fields,
    paired_ratios,
    ratio,
    reset_peak_rss,
    text_contexts,
    time_rounds,
)

CONTEXTS = 32
CONTEXT_SIZE = 128


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if base is not None and base is not model else model


def _block_list(base: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    for name in ("h", "layers"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, nn.ModuleList):
            return base, name, blocks
    raise NotImplementedError(f"no block list found on {type(base).__name__}")


def bare_forward_to(adapter: Any, layer: int) -> Callable[[torch.Tensor], Any]:
    """A function running the bare HF base model through block `layer` only."""
    base, name, blocks = _block_list(_base_model(adapter.model))
    truncated = nn.ModuleList(list(blocks)[: layer + 1])

    def forward(ids: torch.Tensor) -> Any:
        setattr(base, name, truncated)
        try:
            return base(input_ids=ids, use_cache=False)
        finally:
            setattr(base, name, blocks)

    return forward


def run(adapter: Any, options: BenchOptions) -> None:
    """Emit harvest records and harvest-vs-bare-forward ratios."""
    ids = text_contexts(adapter, CONTEXTS, CONTEXT_SIZE).to(options.device)
    n_tokens = ids.numel()
    layers = sorted({min(1, adapter.n_layers - 1), adapter.n_layers - 1})
    model = adapter.model
    for layer in layers:
        hooks = [f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"]
        config = {
            **options.base_config(),
            "layer": layer,
            "n_layers": adapter.n_layers,
            "hooks": hooks,
            "batch": [CONTEXTS, CONTEXT_SIZE],
        }
        log(f"harvest {config}")
        bare = bare_forward_to(adapter, layer)
        fns: dict[str, Callable[[], Any]] = {
            "ours": partial(adapter.run_with_cache, ids, hooks, stop_after_last=True),
            "bare-stop": partial(bare, ids),
            "bare-full": partial(model, input_ids=ids, use_cache=False),
        }
        reset_peak_rss()
        with torch.no_grad():
            samples, _ = time_rounds(
                fns, options.device, max(3, options.repeats), options.min_time_s
            )
        seconds = {name: statistics.median(values) for name, values in samples.items()}
        mem = memory_fields(options.device)
        speeds = {name: n_tokens / s for name, s in seconds.items()}
        labels = {
            "ours": ("harvest", "sparsecircuits"),
            "bare-stop": ("harvest_bare_stop", "transformers"),
            "bare-full": ("harvest_bare_full", "transformers"),
        }
        for name, speed in speeds.items():
            record_name, library = labels[name]
            emit(
                {
                    "name": record_name,
                    "library": library,
                    "config": config,
                    "tokens_per_s": round(speed, 1),
                    "seconds": round(seconds[name], 5),
                    **mem,
                }
            )
        short = {"layer": layer, "n_layers": adapter.n_layers}
        ratio(
            "harvest",
            "bare-forward",
            {**short, "bare": "stop_after_layer"},
            paired_ratios(samples["bare-stop"], samples["ours"]),
        )
        ratio(
            "harvest",
            "bare-forward",
            {**short, "bare": "full_forward"},
            paired_ratios(samples["bare-full"], samples["ours"]),
        )
    run_store(adapter, options)


def run_store(adapter: Any, options: BenchOptions) -> None:
    """`ActivationStore.next_batch()` throughput for a transcoder's two hooks at layer 1."""
    from sparsecircuits.data import ActivationStore, ActivationStoreConfig

    layer = min(1, adapter.n_layers - 1)
    hooks = [f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"]
    n_batches = 8 if options.quick else 24
    cfg = ActivationStoreConfig(
        context_size=CONTEXT_SIZE,
        contexts_per_forward=CONTEXTS,
        batch_tokens=4096,
        buffer_tokens=65536,
        dtype="float32",
    )
    contexts = text_contexts(
        adapter, (n_batches + 1) * 4096 // (CONTEXT_SIZE - 1) + 1, CONTEXT_SIZE
    )
    import time

    reset_peak_rss()
    store = ActivationStore(adapter, list(contexts.unbind(0)), hooks, cfg)
    start = time.perf_counter()
    for _ in range(n_batches):
        store.next_batch()
    seconds = time.perf_counter() - start
    emit(
        {
            "name": "harvest_store",
            "library": "sparsecircuits",
            "config": {
                **options.base_config(),
                "layer": layer,
                "hooks": hooks,
                "batch_tokens": 4096,
                "buffer_tokens": 65536,
                "batches": n_batches,
            },
            "tokens_per_s": round(n_batches * 4096 / seconds, 1),
            "seconds": round(seconds, 3),
            **memory_fields(options.device),
        }
    )
