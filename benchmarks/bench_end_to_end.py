"""End-to-end training throughput: harvest + train one TopK transcoder from token contexts.

Ours: `ActivationStore` (model forward stopping after the hooked layer, 64k-token shuffle
buffer) feeding `Trainer` (Adam), the same pieces `sparsecircuits train` wires together. Per
batch it computes the embeddings and blocks 0..L only: no later block, no final LayerNorm, no
logits.
sparsify: its `Trainer(TrainConfig(...), dataset, model).fit()` with the transcoder on
`h.{L}.mlp` (input = what the MLP receives, output = its output: the same pair), Adam, no
W&B, on the model loaded as `python -m sparsify` loads it for its default FVU loss: `AutoModel`,
the base model without the LM head. Per batch it computes the embeddings, every block and the
final LayerNorm (it has no early stop) but no logits; it trains inside forward hooks and has no
shuffle buffer. Both see 4096 tokens per step; construction and the warm-up are timed for both;
the two fits alternate for 3 rounds and the ratio line is the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from benchmarks import third_party
from benchmarks.common import (
    BenchOptions,
    emit,
    log,
    memory_fields,
    model_source,
    ratio,
    reset_peak_rss,
    skipped,
    spread,
    text_contexts,
)

LAYER = 1
D_SAE = 4096
K = 32
CONTEXT_SIZE = 128
CONTEXTS_PER_STEP = 32


def our_fit(adapter: Any, contexts: Any, steps: int, options: BenchOptions) -> int:
    """Train our transcoder for `steps` steps on `contexts`; return tokens trained."""
    from sparsecircuits.data import ActivationStore, ActivationStoreConfig
    from sparsecircuits.dictionaries import DictionaryConfig, make
    from sparsecircuits.training import TrainConfig, Trainer

    hooks = [f"blocks.{LAYER}.mlp.hook_in", f"blocks.{LAYER}.hook_mlp_out"]
    cfg = DictionaryConfig(
        architecture="topk",
        kind="transcoder",
        d_in=adapter.hook_dim(hooks[0]),
        d_sae=D_SAE,
        d_out=adapter.hook_dim(hooks[1]),
        hook_in=hooks[0],
        hook_out=hooks[1],
        k=K,
        dtype=options.dtype,
        device=options.device,
    )
    store = ActivationStore(
        adapter,
        contexts,
        hooks,
        ActivationStoreConfig(
            context_size=CONTEXT_SIZE,
            contexts_per_forward=CONTEXTS_PER_STEP,
            batch_tokens=4096,
            buffer_tokens=65536,
            dtype=options.dtype,
        ),
    )
    train_cfg = TrainConfig(total_tokens=steps * 4096, batch_tokens=4096, quiet=True, log_every=50)
    result = Trainer(store, {"tc": make(cfg)}, train_cfg).train()
    return result.tokens


def run(adapter: Any, options: BenchOptions) -> None:
    """Emit end-to-end tokens/s for ours and sparsify, and their ratio."""
    steps = 12 if options.quick else 24
    repeats = 3  # each round is one fit per library (seconds each)
    contexts = text_contexts(adapter, (steps + 2) * CONTEXTS_PER_STEP + 64, CONTEXT_SIZE)
    ours_contexts = list(contexts.unbind(0))
    config = {
        **options.base_config(),
        "kind": "transcoder",
        "architecture": "topk",
        "layer": LAYER,
        "d_sae": D_SAE,
        "k": K,
        "batch_tokens": 4096,
        "steps": steps,
        "context_size": CONTEXT_SIZE,
    }
    log(f"end_to_end {config}")
    computes = {
        "sparsecircuits": f"embeddings + blocks 0..{LAYER} (stops after the hooked layer), "
        "no logits",
        "eai-sparsify": "embeddings + every block + final LayerNorm (AutoModel as its CLI "
        f"loads it, dtype {third_party.sparsify_cli_model_dtype(options.device)}), no logits",
    }
    fits = {"sparsecircuits": lambda: our_fit(adapter, ours_contexts, steps, options)}
    why = third_party.available_sparsify()
    if why is None and options.dtype == "float32":
        save_dir = tempfile.mkdtemp(prefix="sparsify-e2e-", dir=options.workdir)
        n_ctx = steps * CONTEXTS_PER_STEP
        fits["eai-sparsify"] = third_party.sparsify_fit(
            model_source(options),
            LAYER,
            contexts[:n_ctx],
            D_SAE,
            K,
            CONTEXTS_PER_STEP,
            save_dir,
            options.device,
        )
    else:
        skipped(
            "end_to_end", "eai-sparsify", config, why or "sparsify's trainer is fp32 (+ autocast)"
        )
    warm = {name: fit for name, fit in fits.items()}
    for fit in warm.values():  # warm-up: first-call allocations, thread pools
        fit()
    samples: dict[str, list[float]] = {name: [] for name in fits}
    tokens: dict[str, int] = {}
    reset_peak_rss()
    for _ in range(repeats):
        for name, fit in fits.items():
            start = time.perf_counter()
            tokens[name] = fit()
            samples[name].append(time.perf_counter() - start)
    mem = memory_fields(options.device)
    speeds = {}
    for name, times in samples.items():
        seconds = statistics.median(times)
        speeds[name] = tokens[name] / seconds
        emit(
            {
                "name": "end_to_end",
                "library": name,
                "config": config,
                "tokens_per_s": round(speeds[name], 1),
                "seconds": round(seconds, 3),
                "tokens": tokens[name],
                "tokens_per_s_spread": spread([tokens[name] / t for t in times], 1),
                "model_forward": computes[name],
                **mem,
            }
        )
    if "eai-sparsify" in speeds:
        # tokens/s ours / theirs per round = (our tokens / our s) / (their tokens / their s)
        per_round = [
            (tokens["sparsecircuits"] / ours) / (tokens["eai-sparsify"] / theirs)
            for ours, theirs in zip(samples["sparsecircuits"], samples["eai-sparsify"], strict=True)
        ]
        ratio(
            "end_to_end",
            "eai-sparsify",
            {"d_sae": D_SAE, "k": K, "layer": LAYER},
            per_round,
            sparsify_model_forward=computes["eai-sparsify"],
        )
