"""Dictionary train-step throughput with the activations already in memory.

One step = loss + backward + optimizer step (+ each library's per-step bookkeeping) on a batch
of `batch_tokens` real activations of the benchmark model (layer 1 `mlp.hook_in` /
`hook_mlp_out`, d_in 256). Ours runs through `Trainer.train(stop_at_step=...)` with a store that
returns the same batch, so every per-step cost of our trainer is counted (loss parts, the dead-
latent counter, grad clipping, the lr schedule, the decoder renormalisation).

Also measured: the encoder GEMM alone (`[batch, d_in] @ [d_in, d_sae]`), the ceiling any
dense-encoder step is bounded by, expressed as tokens/s: the fastest exact way to compute it at
the precision the step selects from (`benchmarks/ceiling.py`), timed in the same interleaved
rounds as the step it bounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch

from benchmarks import third_party
from benchmarks.common import (
    BenchOptions,
    Competitor,
    emit,
    log,
    memory_fields,
    paired_ratios,
    peak_rss_mb,
    ratio,
    reset_peak_device_memory,
    reset_peak_rss,
    skipped,
    slowdowns,
    spread,
    synchronize,
    time_rounds,
)

BATCH_TOKENS = 4096
LAYER = 1


class RepeatBatch:
    """A `BatchSource` that serves the same in-memory batch forever."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The batch."""
        return self.batch

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def harvest_batch(adapter: Any, n_tokens: int, layer: int) -> dict[str, torch.Tensor]:
    """`{mlp.hook_in, hook_mlp_out}` activations `[n_tokens, d]` of layer `layer`."""
    from benchmarks.common import text_contexts

    context = 128
    n_contexts = math.ceil(n_tokens / (context - 1))
    ids = text_contexts(adapter, n_contexts, context)
    hooks = [f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"]
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    with torch.no_grad():
        for chunk in ids.split(16):
            _, cache = adapter.run_with_cache(chunk.to(adapter.device), hooks, stop_after_last=True)
            for h in hooks:
                out[h].append(cache[h][:, 1:].reshape(-1, cache[h].shape[-1]).float())
    return {h: torch.cat(v)[:n_tokens].contiguous() for h, v in out.items()}


# ReLU and JumpReLU dictionaries start at this L0 (`init_l0`: encoder biases / thresholds from
# the batch's pre-activation quantiles), the sparsity of a trained dictionary after its first
# steps; their records carry the L0 and step mode of the last timed step.
WARM_L0 = 32
# Their learning rate: small enough that the timed steps stay at WARM_L0. At the width's default
# rate, a hundred steps on the one repeated batch fit that batch and drift L0 (to 80-117 at d_sae
# 4096), so the measured sparsity would depend on how many rounds a width happens to run. A
# step's cost does not depend on the rate, only on how many latents it keeps.
HOLD_L0_LR = 1e-7


def configs(quick: bool, cases: str | None = None) -> list[dict[str, Any]]:
    """The (kind, architecture, d_sae, k) grid; `cases` ("relu:4096,topk:16384,topk:16384:64")
    keeps only those architectures at those widths, both kinds, every k of the grid or the k
    given (any k for TopK)."""
    if cases:
        grid = []
        for case in cases.split(","):
            arch, width, *k = case.strip().split(":")
            if k:
                for kind in ("transcoder", "sae"):
                    grid.append(
                        {"kind": kind, "architecture": arch, "d_sae": int(width), "k": int(k[0])}
                    )
            else:
                grid += [
                    c
                    for c in configs(False)
                    if (c["architecture"], c["d_sae"]) == (arch, int(width))
                ]
        return grid
    widths = [4096] if quick else [4096, 16384, 65536]
    grid = []
    for d_sae in widths:
        for kind in ("transcoder", "sae"):
            for arch in ("relu", "jumprelu"):
                grid.append({"kind": kind, "architecture": arch, "d_sae": d_sae, "k": None})
            for k in (32, 128):
                grid.append({"kind": kind, "architecture": "topk", "d_sae": d_sae, "k": k})
    return grid


def held_dead(d_sae: int, dead_frac: float) -> torch.Tensor | None:
    """The latents `--dead-frac` holds dead `[round(dead_frac · d_sae)]`, the same for every
    library (a seeded permutation), or None when none are."""
    n_dead = round(dead_frac * d_sae)
    if n_dead == 0:
        return None
    return torch.randperm(d_sae, generator=torch.Generator().manual_seed(0))[:n_dead]


def our_step(
    spec: dict[str, Any], batch: dict[str, torch.Tensor], options: BenchOptions
) -> Callable[[], None]:
    """A closure running one step of our `Trainer` on `spec`'s dictionary."""
    from sparsecircuits.dictionaries import DictionaryConfig, make
    from sparsecircuits.training import TrainConfig, Trainer

    hook_in, hook_out = f"blocks.{LAYER}.mlp.hook_in", f"blocks.{LAYER}.hook_mlp_out"
    if spec["kind"] == "sae":
        hook_in = hook_out
    d_in = batch[hook_in].shape[1]
    cfg = DictionaryConfig(
        architecture=spec["architecture"],
        kind=spec["kind"],
        d_in=d_in,
        d_sae=spec["d_sae"],
        d_out=batch[hook_out].shape[1],
        hook_in=hook_in,
        hook_out=hook_out,
        dtype=options.dtype,
        device=options.device,
        **({"k": spec["k"]} if spec["k"] else {"init_l0": WARM_L0}),
    )
    dictionary = make(cfg)
    train_cfg = TrainConfig(
        total_tokens=10**15,
        batch_tokens=BATCH_TOKENS,
        quiet=True,
        log_every=10**9,
        lr=None if spec["k"] else HOLD_L0_LR,
    )
    trainer = Trainer(RepeatBatch(batch), {"d": dictionary}, train_cfg)
    dead = held_dead(spec["d_sae"], options.dead_frac) if spec["k"] else None

    def step() -> dict[str, float]:
        if dead is not None:  # the trainer's own counter decides what is dead: hold it
            counter = torch.zeros(spec["d_sae"], dtype=torch.long, device=options.device)
            counter[dead] = train_cfg.dead_tokens
            trainer.tokens_since_fired["d"] = counter
        return trainer.train(stop_at_step=trainer.step + 1).metrics["d"]

    step.trainer = trainer  # type: ignore[attr-defined]  # for bench_breakdown's phase labels
    return step


def step_memory(step: Callable[[], None], device: str) -> float:
    """Peak RSS growth (MiB) over one call of `step` (GPU: peak allocated)."""
    synchronize(device)
    if device.startswith("cuda"):
        reset_peak_device_memory(device)
        allocated = torch.cuda.memory_allocated()
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated() - allocated) / 2**20
    from benchmarks.common import current_rss_mb

    reset_peak_rss()
    before = current_rss_mb()
    step()
    return peak_rss_mb() - before


def selection_and_precision(spec: dict[str, Any], options: BenchOptions) -> tuple[str | None, str]:
    """For one grid entry: the selection our TopK step uses (None for other architectures) and
    the precision of the GEMM it selects from ("bf16" or "fp32"), which its ceiling is timed at."""
    from benchmarks import ceiling

    selection = None
    if spec["architecture"] == "topk":
        from sparsecircuits.dictionaries import kernels

        selection = kernels.selection_for(
            spec["d_sae"], spec["k"], options.device.split(":")[0], options.torch_dtype
        )
    return selection, ceiling.step_precision(options.dtype, selection)


def measure_ceilings(
    x: torch.Tensor, d_sae: int, options: BenchOptions, precisions: Iterable[str]
) -> dict[str, str]:
    """Time every exact way to compute `x @ W_enc` at each of `precisions` (interleaved rounds),
    emit one `matmul_ceiling` record per precision, and return `{precision: fastest variant}`.
    """
    from benchmarks import ceiling

    wanted = set(precisions)
    timed = [p for p in ceiling.PRECISIONS if p in wanted]
    fns: dict[str, Callable[[], Any]] = {}
    for precision in timed:
        fns.update(ceiling.variants(x, d_sae, precision))
    # 3 rounds rank the variants; the chosen one is timed again beside every step it bounds
    samples, _ = time_rounds(fns, options.device, 3, options.min_time_s)
    n, d_in = x.shape
    flop = 2 * n * d_in * d_sae
    fastest = {}
    for precision in timed:
        mine = {name: s for name, s in samples.items() if name.startswith(precision + ":")}
        if not mine:
            continue
        best = min(mine, key=lambda name: statistics.median(mine[name]))
        fastest[precision] = best
        seconds = statistics.median(mine[best])
        emit(
            {
                "name": "matmul_ceiling",
                "library": "torch",
                "config": {
                    **options.base_config(),
                    "shape": [n, d_in, d_sae],
                    "precision": precision,
                    "variant": best.partition(":")[2],
                },
                "tokens_per_s": round(n / seconds, 1),
                "tflops": round(flop / seconds / 1e12, 3),
                "tokens_per_s_spread": spread([n / t for t in mine[best]], 1),
                "variants_tokens_per_s": {
                    name.partition(":")[2]: round(n / statistics.median(t), 1)
                    for name, t in sorted(mine.items(), key=lambda item: statistics.median(item[1]))
                },
                **memory_fields(options.device),
            }
        )
    return fastest


def run(adapter: Any, options: BenchOptions) -> None:
    """Emit train-step records for our trainer, sparsify, SAELens, and the GEMM ceiling.

    Every contender of a config, the ceiling included, is timed in the same interleaved rounds;
    each ratio line is the median (and min, max) of the per-round ratios. With
    `options.compete`, every contender is also timed beside a competing CPU-bound process in
    each round, and `competition` records give each side's slowdown.
    """
    from benchmarks import ceiling

    batch = harvest_batch(adapter, BATCH_TOKENS, LAYER)
    batch = {h: t.to(options.device) for h, t in batch.items()}
    mlp_in, mlp_out = batch[f"blocks.{LAYER}.mlp.hook_in"], batch[f"blocks.{LAYER}.hook_mlp_out"]
    d_in = mlp_in.shape[1]
    why_sparsify = third_party.available_sparsify()
    why_saelens = third_party.available_saelens()
    competitor = Competitor(options.compete) if options.compete else None

    ceilings: dict[int, dict[str, str]] = {}
    ceiling_fns: dict[str, Callable[[], Any]] = {}
    grid = configs(options.quick, options.train_cases)
    chosen = [selection_and_precision(spec, options) for spec in grid]
    for spec, (selection, precision) in zip(grid, chosen, strict=True):
        d_sae, k = spec["d_sae"], spec["k"]
        if d_sae not in ceilings:
            log(f"train_step ceiling d_sae={d_sae}")
            # fp32 always (the reference); bf16 only where a step at this width selects from it,
            # since a CPU without native bf16 emulates it at a small fraction of fp32's speed
            needed = {"fp32"} | {
                p for s, (_, p) in zip(grid, chosen, strict=True) if s["d_sae"] == d_sae
            }
            ceilings[d_sae] = measure_ceilings(mlp_in, d_sae, options, needed)
            ceiling_fns = {}
            for timed, name in ceilings[d_sae].items():
                ceiling_fns[timed] = ceiling.variants(mlp_in, d_sae, timed, only=name)[name]
        config = {
            **options.base_config(),
            "kind": spec["kind"],
            "architecture": spec["architecture"],
            "d_in": d_in,
            "d_sae": d_sae,
            "k": k,
            "batch_tokens": BATCH_TOKENS,
            **({"dead_frac": options.dead_frac} if options.dead_frac and k else {}),
        }
        if selection is not None:
            config["selection"] = selection
        log(f"train_step {config}")
        reset_peak_rss()
        lr = 2e-4 / math.sqrt(d_sae / 2**14)
        x = mlp_in if spec["kind"] == "transcoder" else mlp_out
        fns: dict[str, Callable[[], Any]] = {"sparsecircuits": our_step(spec, batch, options)}
        if spec["architecture"] == "topk":
            if why_sparsify is None:
                fns["eai-sparsify"] = third_party.sparsify_step(
                    spec["kind"],
                    d_in,
                    d_sae,
                    k,
                    x,
                    mlp_out,
                    options.torch_dtype,
                    lr,
                    dead=held_dead(d_sae, options.dead_frac),
                )
            else:
                skipped("train_step", "eai-sparsify", config, why_sparsify)
        relu_65k = spec["architecture"] in ("relu", "jumprelu") and d_sae >= 65536
        if spec["kind"] == "sae" and why_saelens is None and relu_65k and not options.quick:
            # SAELens' ReLU step at 65k costs minutes on a CPU and is no target; keeps the full
            # run near 30 minutes (its 4k/16k ReLU steps are measured).
            skipped(
                "train_step", "sae-lens", config, "(Jump)ReLU at d_sae 65536 not run (time budget)"
            )
        elif spec["kind"] == "sae" and why_saelens is None and options.dead_frac > 0:
            skipped("train_step", "sae-lens", config, "not run with --dead-frac")
        elif spec["kind"] == "sae" and why_saelens is None:
            autocast = options.dtype == "bfloat16"
            saelens_dtype = "float32"  # SAELens trains fp32 weights; bf16 is its autocast
            fns["sae-lens"] = third_party.saelens_step(
                spec["architecture"], d_in, d_sae, k or 32, x, saelens_dtype, lr, autocast=autocast
            )
            if spec["architecture"] == "topk" and not autocast:
                fns["sae-lens:sparse"] = third_party.saelens_step(
                    "topk", d_in, d_sae, k, x, saelens_dtype, lr, sparse_activations=True
                )
        elif spec["kind"] == "sae":
            skipped("train_step", "sae-lens", config, why_saelens or "")
        else:
            skipped(
                "train_step",
                "sae-lens",
                config,
                "SAELens has no transcoder training (its transcoders are load/inference only)",
            )
        if precision in ceiling_fns:
            fns["ceiling"] = ceiling_fns[precision]
        deltas = {}
        for name in list(fns):
            try:
                deltas[name] = step_memory(fns[name], options.device)
            except Exception as exc:  # noqa: BLE001 - a library failing is a result, not a crash
                if name == "sparsecircuits":
                    raise
                library, _, option = name.partition(":")
                first = (str(exc).splitlines() or [""])[0][:200]
                skipped(
                    "train_step",
                    library,
                    {**config, **({"option": option} if option else {})},
                    f"{type(exc).__name__} in its train step: {first}",
                )
                del fns[name]
        # A 65k step takes seconds on a CPU: the minimum of 3 rounds (every ratio line has at
        # least 3 pairs), and the memory step was the warm-up.
        repeats = max(3, options.repeats if d_sae < 65536 else 3)
        alone, contested = time_rounds(
            fns, options.device, repeats, options.min_time_s, warm=True, competitor=competitor
        )
        mem = memory_fields(options.device)
        seconds = {name: statistics.median(values) for name, values in alone.items()}
        last = fns["sparsecircuits"]()  # one more step: the L0 and mode the timed steps had
        ours_fields: dict[str, Any] = {"l0": round(last["l0"], 2)}
        if "sparse_step" in last:
            ours_fields["step_mode"] = "sparse" if last["sparse_step"] else "dense"
        for name, s in seconds.items():
            if name == "ceiling":
                continue
            library, _, option = name.partition(":")
            emit(
                {
                    "name": "train_step",
                    "library": library,
                    "config": {**config, **({"option": option} if option else {})},
                    "tokens_per_s": round(BATCH_TOKENS / s, 1),
                    "seconds": round(s, 5),
                    "tokens_per_s_spread": spread([BATCH_TOKENS / t for t in alone[name]], 1),
                    "step_peak_delta_mb": round(deltas[name], 1),
                    **(ours_fields if name == "sparsecircuits" else {}),
                    **mem,
                }
            )
        short = {"kind": spec["kind"], "architecture": spec["architecture"], "d_sae": d_sae, "k": k}
        for name in alone:
            if name == "sparsecircuits":
                continue
            library, _, option = name.partition(":")
            # speeds: ours/theirs = their seconds / our seconds, round by round
            extra: dict[str, Any] = {}
            cfg = {**short, **({"option": option} if option else {})}
            if name == "ceiling":
                extra = {"ceiling": ceilings[d_sae][precision], "ceiling_precision": precision}
            ratio(
                "train_step",
                library,
                cfg,
                paired_ratios(alone[name], alone["sparsecircuits"]),
                **extra,
            )
            if contested:
                emit_competition("train_step", library, cfg, alone, contested, name, options)
        del fns
    if competitor is not None:
        competitor.close()


def emit_competition(
    what: str,
    vs: str,
    config: dict[str, Any],
    alone: dict[str, list[float]],
    contested: dict[str, list[float]],
    theirs: str,
    options: BenchOptions,
    ours: str = "sparsecircuits",
) -> dict[str, Any]:
    """Emit one pair's ratio under competition (ours/theirs speed, round by round) with each
    side's slowdown (seconds beside the competitor / seconds alone, round by round)."""
    return ratio(
        what,
        vs,
        {**config, "competition": options.compete},
        paired_ratios(contested[theirs], contested[ours]),
        slowdown={
            ours: slowdowns(alone[ours], contested[ours]),
            vs: slowdowns(alone[theirs], contested[theirs]),
        },
        ratio_alone=spread(paired_ratios(alone[theirs], alone[ours])),
    )
