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
case by case within one run.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import torch

from benchmarks import third_party
from benchmarks.bench_graph import REPO, measure_build, why_unavailable, worker_python
from benchmarks.common import BenchOptions, emit, log, ratio, skipped, text_contexts
from benchmarks.scale_model import SCALE_D_SAE, SCALE_K, SCALE_MODEL, ensure_scale_model

CASES = ((32, None), (32, 8192), (128, 8192))  # (prompt tokens, max_feature_nodes)
CONTENDERS = ("sparsecircuits", "circuit-tracer")
BATCH_SIZE = {"sparsecircuits": 64, "circuit-tracer": 512}  # each library's default


def worker(options: BenchOptions, contender: str, n_tokens: int, budget: int | None) -> dict:
    """Build one graph of the scale model in this process; return its measurements."""
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

        def build(ids: torch.Tensor) -> dict[str, Any]:
            graph = third_party.circuit_tracer_attribute(
                model, ids, BATCH_SIZE[contender], max_feature_nodes=budget
            )
            return {
                "n_features": int(graph.selected_features.numel()),
                "n_edges": int((graph.adjacency_matrix != 0).sum()),
            }

    ids = text_contexts(adapter, 1, n_tokens)[0].to(adapter.device)
    return {**measure_build(options, build, ids), "n_layers": adapter.n_layers}


def _spawn(
    options: BenchOptions, contender: str, n_tokens: int, budget: int | None, timeout_s: float
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
    ] + (["--threads", str(options.threads)] if options.threads else [])
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
) -> None:
    """Emit one graph record per case and library, and the ratio lines per case."""
    log("graph_scale: writing the GPT-2-small-sized model and transcoders (once)")
    ensure_scale_model(options.workdir)
    why = {c: why_unavailable(c) for c in CONTENDERS}
    for n_tokens, budget in cases:
        config = {
            **options.base_config(),
            "model": SCALE_MODEL,
            "tokens": n_tokens,
            "max_feature_nodes": budget,
            "d_sae": SCALE_D_SAE,
            "k": SCALE_K,
        }
        results: dict[str, dict[str, Any]] = {}
        for contender in CONTENDERS:
            if why[contender] is not None:
                skipped("graph", contender, config, why[contender] or "")
                continue
            log(f"graph_scale {contender} tokens={n_tokens} max_feature_nodes={budget}")
            result, error = _spawn(options, contender, n_tokens, budget, timeout_s)
            if result is None:
                skipped("graph", contender, config, error)
                continue
            results[contender] = result
            emit(
                {
                    "name": "graph",
                    "library": contender,
                    "config": {**config, "batch_size": BATCH_SIZE[contender]},
                    "seconds": round(result["seconds"], 3),
                    "graph_peak_delta_mb": round(result["graph_peak_delta_mb"], 1),
                    "peak_rss_mb": round(result["process_peak_rss_mb"], 1),
                    "n_features": result["n_features"],
                    "n_edges": result["n_edges"],
                }
            )
        ours, theirs = results.get("sparsecircuits"), results.get("circuit-tracer")
        if ours is None or theirs is None:
            continue
        short = {"model": SCALE_MODEL, "tokens": n_tokens, "max_feature_nodes": budget}
        ratio("graph_time", "circuit-tracer", short, theirs["seconds"] / ours["seconds"])
        for measure in ("graph_peak_delta_mb", "process_peak_rss_mb"):
            ratio(
                "graph_memory",
                "circuit-tracer",
                {**short, "measure": measure},
                max(theirs[measure], 1.0) / max(ours[measure], 1.0),
            )
