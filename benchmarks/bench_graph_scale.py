"""Attribution graphs at GPT-2 small's size: our `build_graph` vs circuit-tracer's `attribute`.

The model and transcoders are `scale_model.ensure_scale_model`'s (12 layers, d_model 768, vocab
50257, random weights; 12 TopK transcoders of 24,576 features, k 64), written once into the
work folder. Cases: a 32-token prompt with every active feature a target, and 32- and
128-token prompts with a budget of 8,192 feature nodes (circuit-tracer's demo
`max_feature_nodes`; circuit-tracer's dense full graph at 128 tokens would need ~40 GB). Both
libraries trace the same prompt on the same weights: circuit-tracer's worker (in
`.venv-bench-ct`) loads our transcoder files and copies them into its own transcoder objects
(`third_party.circuit_tracer_model`). Each build runs in its own worker process, measured like
`bench_graph.worker` (warm-up on 8 tokens, peak RSS growth over the build, whole-process peak).
Records carry `config.model = "gpt2-small-size"`; the ratio lines compare the two libraries
case by case within one run: the two alternate for 3 rounds and each ratio line is the median
(and min, max) of the per-round ratios. circuit-tracer builds at `attribute`'s default batch
of 512 targets unless `--graph-theirs-batch-sizes` names a sweep (then the fastest, per case,
from one sweep worker: a `graph_batch_sweep` record; each point costs one build, minutes here).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import torch

from benchmarks import third_party
from benchmarks.bench_graph import REPO, measure_build, why_unavailable, worker_python
from benchmarks.common import (
    BenchOptions,
    emit,
    log,
    ratio,
    skipped,
    spread,
    synchronize,
    text_contexts,
)
from benchmarks.scale_model import SCALE_D_SAE, SCALE_K, SCALE_MODEL, ensure_scale_model

CASES = ((32, None), (32, 8192), (128, 8192))  # (prompt tokens, max_feature_nodes)
CONTENDERS = ("sparsecircuits", "circuit-tracer")
BATCH_SIZE = {"sparsecircuits": 64, "circuit-tracer": 512}  # each library's default
REPEATS = 3


def worker(
    options: BenchOptions,
    contender: str,
    n_tokens: int,
    budget: int | None,
    batch_size: int | None = None,
    sweep: list[int] | None = None,
) -> dict:
    """Build one graph of the scale model in this process; return its measurements.

    circuit-tracer builds at `batch_size` (default 512, its own); with `sweep` it builds once
    per batch size after one warm-up and returns `{"sweep": [{"batch_size", "seconds"}]}`."""
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model

    model_dir, tc_dir = ensure_scale_model(options.workdir)
    adapter = load_model(model_dir, device=options.device)
    transcoders = load_transcoders(tc_dir, device=options.device)
    if contender == "sparsecircuits":
        from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
        from sparsecircuits.circuits.replacement import ReplacementModel

        replacement = ReplacementModel(adapter, transcoders)
        config = GraphConfig(max_feature_nodes=budget)

        def build(ids: torch.Tensor) -> dict[str, Any]:
            graph = build_graph(replacement, ids, config)
            return {"n_features": graph.n_features, "n_edges": graph.adjacency.nnz}

    else:
        model = third_party.circuit_tracer_model(adapter, dict(transcoders.items()))
        del transcoders  # circuit-tracer holds its own copy
        theirs_batch = batch_size or BATCH_SIZE[contender]
        if sweep:
            ids = text_contexts(adapter, 1, n_tokens)[0].to(adapter.device)
            return {"sweep": _sweep(options, model, ids, budget, sweep)}

        def build(ids: torch.Tensor) -> dict[str, Any]:
            graph = third_party.circuit_tracer_attribute(
                model, ids, theirs_batch, max_feature_nodes=budget
            )
            return {
                "n_features": int(graph.selected_features.numel()),
                "n_edges": int((graph.adjacency_matrix != 0).sum()),
            }

    ids = text_contexts(adapter, 1, n_tokens)[0].to(adapter.device)
    return {**measure_build(options, build, ids), "n_layers": adapter.n_layers}


def _sweep(
    options: BenchOptions, model: Any, ids: torch.Tensor, budget: int | None, sweep: list[int]
) -> list[dict[str, Any]]:
    """Seconds of circuit-tracer's graph of `ids` at each batch size in `sweep`."""
    third_party.circuit_tracer_attribute(model, ids[:8], sweep[0], max_feature_nodes=budget)
    out = []
    for batch_size in sweep:
        synchronize(options.device)
        start = time.perf_counter()
        third_party.circuit_tracer_attribute(model, ids, batch_size, max_feature_nodes=budget)
        synchronize(options.device)
        out.append({"batch_size": batch_size, "seconds": time.perf_counter() - start})
    return out


def _spawn(
    options: BenchOptions,
    contender: str,
    n_tokens: int,
    budget: int | None,
    timeout_s: float,
    batch_size: int | None = None,
    sweep: list[int] | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """Run one worker; return (its result or None, error text)."""
    cmd = [
        worker_python(contender),
        "-m",
        "benchmarks.run",
        "--worker",
        "graph_scale",
        "--library",
        contender,
        "--n-tokens",
        str(n_tokens),
        "--max-feature-nodes",
        str(budget or 0),
        "--device",
        options.device,
        "--workdir",
        str(options.workdir),
    ]
    cmd += ["--threads", str(options.threads)] if options.threads else []
    cmd += ["--batch-size", str(batch_size)] if batch_size else []
    cmd += ["--sweep-batch-sizes", ",".join(map(str, sweep))] if sweep else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")])
        ),
    }
    try:
        done = subprocess.run(
            cmd, capture_output=True, cwd=REPO, env=env, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    result = None
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
    if done.returncode != 0 or result is None:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return None, f"worker failed (exit {done.returncode}): {tail[-400:]}"
    return result, ""


def parse_cases(text: str | None) -> tuple[tuple[int, int | None], ...]:
    """`CASES`, or the cases of `TOKENS:MAX_FEATURE_NODES,...` (0: every feature a target)."""
    if not text:
        return CASES
    cases = []
    for item in text.split(","):
        tokens, _, budget = item.partition(":")
        cases.append((int(tokens), int(budget or 0) or None))
    return tuple(cases)


def run(
    options: BenchOptions,
    timeout_s: float = 3600,
    cases: tuple[tuple[int, int | None], ...] = CASES,
    theirs_batch_sizes: list[int] | None = None,
) -> None:
    """Emit one graph record per case and library, and the ratio lines per case."""
    log("graph_scale: writing the GPT-2-small-sized model and transcoders (once)")
    ensure_scale_model(options.workdir)
    why = {c: why_unavailable(c) for c in CONTENDERS}
    sweep = list(theirs_batch_sizes or [BATCH_SIZE["circuit-tracer"]])
    for n_tokens, budget in cases:
        config = {
            **options.base_config(),
            "model": SCALE_MODEL,
            "tokens": n_tokens,
            "max_feature_nodes": budget,
            "d_sae": SCALE_D_SAE,
            "k": SCALE_K,
        }
        contenders = []
        for contender in CONTENDERS:
            if why[contender] is not None:
                skipped("graph", contender, config, why[contender] or "")
            else:
                contenders.append(contender)
        batch = dict(BATCH_SIZE)
        if "circuit-tracer" in contenders and len(sweep) > 1:
            batch["circuit-tracer"] = _best_batch(options, n_tokens, budget, sweep, config)
        elif "circuit-tracer" in contenders:
            batch["circuit-tracer"] = sweep[0]
        repeats = REPEATS if len(contenders) > 1 else 1
        samples: dict[str, list[dict[str, Any] | None]] = {c: [] for c in contenders}
        for _ in range(repeats):
            for contender in contenders:
                log(f"graph_scale {contender} tokens={n_tokens} max_feature_nodes={budget}")
                result, error = _spawn(
                    options,
                    contender,
                    n_tokens,
                    budget,
                    timeout_s,
                    batch_size=batch[contender] if contender == "circuit-tracer" else None,
                )
                if result is None:
                    skipped("graph", contender, config, error)
                samples[contender].append(result)
        medians: dict[str, dict[str, Any]] = {}
        for contender, results in samples.items():
            done = [r for r in results if r is not None]
            if not done:
                continue
            result = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]
            medians[contender] = result
            emit(
                {
                    "name": "graph",
                    "library": contender,
                    "config": {**config, "batch_size": batch[contender]},
                    "seconds": round(result["seconds"], 3),
                    "seconds_spread": spread([r["seconds"] for r in done]),
                    "graph_peak_delta_mb": round(result["graph_peak_delta_mb"], 1),
                    "peak_rss_mb": round(max(r["process_peak_rss_mb"] for r in done), 1),
                    "n_features": result["n_features"],
                    "n_edges": result["n_edges"],
                }
            )
        if len(medians) < 2:
            continue
        pairs = [
            (ours, theirs)
            for ours, theirs in zip(
                samples["sparsecircuits"], samples["circuit-tracer"], strict=True
            )
            if ours is not None and theirs is not None
        ]
        short = {"model": SCALE_MODEL, "tokens": n_tokens, "max_feature_nodes": budget}
        extra = {"theirs_batch_size": batch["circuit-tracer"]}
        ratio(
            "graph_time",
            "circuit-tracer",
            short,
            [theirs["seconds"] / ours["seconds"] for ours, theirs in pairs],
            **extra,
        )
        for measure in ("graph_peak_delta_mb", "process_peak_rss_mb"):
            ratio(
                "graph_memory",
                "circuit-tracer",
                {**short, "measure": measure},
                [max(theirs[measure], 1.0) / max(ours[measure], 1.0) for ours, theirs in pairs],
                **extra,
            )


def _best_batch(
    options: BenchOptions,
    n_tokens: int,
    budget: int | None,
    sweep: list[int],
    config: dict[str, Any],
) -> int:
    """circuit-tracer's fastest batch size of `sweep` for this case (one sweep worker);
    emits a `graph_batch_sweep` record (its default batch when the sweep fails)."""
    log(f"graph_scale circuit-tracer batch sweep {sweep} tokens={n_tokens}")
    result, error = _spawn(
        options, "circuit-tracer", n_tokens, budget, 3600.0 * len(sweep), sweep=sweep
    )
    if result is None:
        skipped("graph_batch_sweep", "circuit-tracer", config, error)
        return BATCH_SIZE["circuit-tracer"]
    best = min(result["sweep"], key=lambda p: p["seconds"])
    emit(
        {
            "name": "graph_batch_sweep",
            "library": "circuit-tracer",
            "config": config,
            "seconds_by_batch_size": {
                str(p["batch_size"]): round(p["seconds"], 3) for p in result["sweep"]
            },
            "best_batch_size": best["batch_size"],
            "seconds": round(best["seconds"], 3),
        }
    )
    return int(best["batch_size"])
