"""Attribution-graph time and memory: our `build_graph` vs circuit-tracer's `attribute`.

Both build the full unpruned graph of one prompt — every active feature a target, logit
targets up to 0.95 cumulative probability (at most 10) — on the same model and the same
per-layer TopK transcoders (random init, biases centred on real activations). Ours runs at its
default targets-per-backward batch (64); circuit-tracer at the fastest batch of a small sweep
of `attribute(batch_size=...)` (128, 256, 512 — its default — and 1024 unless
`--graph-theirs-batch-sizes` says otherwise), run per prompt length in one worker before the
measured builds and recorded as a `graph_batch_sweep` record. Model and transcoder loading are
not timed.

Where both libraries run, the contenders alternate for 3 rounds (ours, ours streamed,
circuit-tracer, then again), each build in a fresh worker; every ratio line is the median (and
min, max) of the per-round ratios. With `options.compete` each build is also run beside a
competing CPU-bound process, and `competition` ratio lines give each side's slowdown.

Every measurement runs in its own worker process (`run.py --worker graph ...`), so peaks do
not mask each other: the worker warms up on an 8-token prompt, resets the kernel's peak-RSS mark
(`/proc/self/clear_refs`), builds the graph, and reports the seconds and the peak RSS growth
over the build (`graph_peak_delta_mb`, GPU: peak allocated growth); the parent adds the worker
process's whole peak RSS from `os.wait4`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import third_party
from benchmarks.common import (
    BenchOptions,
    Competitor,
    current_rss_mb,
    emit,
    load_adapter,
    log,
    model_source,
    paired_ratios,
    peak_rss_mb,
    ratio,
    reset_peak_rss,
    skipped,
    slowdowns,
    spread,
    synchronize,
    text_contexts,
)

# contenders: our exact full graph, our streamed pruned graph (`store="influential"`: same
# pruned graph and scores, linear memory), circuit-tracer's dense `attribute`
CONTENDERS = ("sparsecircuits", "sparsecircuits:influential", "circuit-tracer")
D_SAE = 4096  # the graph transcoders' width; `run.py --graph-d-sae` sets it (workers too)
REPO = Path(__file__).resolve().parent.parent


def lengths(quick: bool, max_context: int, wanted: list[int] | None = None) -> list[int]:
    """Prompt lengths (BOS included): `wanted`, else 17 (and 65, 256 in the full run)."""
    if not wanted:
        wanted = [17] if quick else [17, 65, 256]
    return [min(n, max_context) for n in wanted]


def library_of(contender: str) -> tuple[str, str]:
    """`(library, store)` of a contender name ("sparsecircuits:influential")."""
    library, _, store = contender.partition(":")
    return library, store or ("all" if library == "sparsecircuits" else "dense")


def make_transcoders(adapter: Any, k: int, d_sae: int) -> dict[int, Any]:
    """One random-init TopK transcoder per layer, biases centred on real activations."""
    from sparsecircuits.dictionaries import DictionaryConfig, make

    ids = text_contexts(adapter, 8, 64).to(adapter.device)
    hooks = [
        f"blocks.{layer}.{h}"
        for layer in range(adapter.n_layers)
        for h in ("mlp.hook_in", "hook_mlp_out")
    ]
    with torch.no_grad():
        _, cache = adapter.run_with_cache(ids, hooks, stop_after_last=False)
    transcoders = {}
    for layer in range(adapter.n_layers):
        hook_in, hook_out = f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"
        cfg = DictionaryConfig(
            architecture="topk",
            kind="transcoder",
            d_in=adapter.d_model,
            d_sae=d_sae,
            d_out=adapter.d_model,
            hook_in=hook_in,
            hook_out=hook_out,
            k=k,
            seed=layer,
            device=str(adapter.device),
        )
        tc = make(cfg).to(adapter.device)
        tc.init_biases_from_data(
            cache[hook_in].reshape(-1, adapter.d_model).float(),
            cache[hook_out].reshape(-1, adapter.d_model).float(),
        )
        transcoders[layer] = tc
    return transcoders


def _ours(adapter: Any, transcoders: dict[int, Any], store: str) -> tuple[Any, Any]:
    from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
    from sparsecircuits.circuits.replacement import ReplacementModel

    replacement = ReplacementModel(adapter, transcoders)
    config = GraphConfig(store=store)

    def build(ids: torch.Tensor) -> dict[str, Any]:
        graph = build_graph(replacement, ids, config)
        return {
            "n_features": graph.n_features,
            "n_nodes": graph.n_nodes,
            "n_edges": int(graph.adjacency.weights.numel()),
            "batch_size": config.batch_size,
        }

    return build, replacement


DEFAULT_THEIRS_BATCH = 512  # attribute()'s default
THEIRS_BATCH_SWEEP = (128, 256, 512, 1024)


def _theirs(
    adapter: Any, transcoders: dict[int, Any], _store: str, batch_size: int = DEFAULT_THEIRS_BATCH
) -> tuple[Any, Any]:
    model = third_party.circuit_tracer_model(adapter, transcoders)
    probe = text_contexts(adapter, 1, 16).to(adapter.device)
    with torch.no_grad():
        diff = (model(probe) - adapter.forward(probe)).abs().max().item()
    if diff > 1e-3:
        raise RuntimeError(
            f"circuit-tracer's model differs from the HF model (max |logit diff| {diff:.2e})"
        )

    def build(ids: torch.Tensor) -> dict[str, Any]:
        graph = third_party.circuit_tracer_attribute(model, ids, batch_size)
        n_nodes = int(graph.adjacency_matrix.shape[0])
        return {
            "n_features": int(graph.selected_features.numel()),
            "n_nodes": n_nodes,
            "n_edges": int((graph.adjacency_matrix != 0).sum()),
            "batch_size": batch_size,
        }

    return build, model


def worker(
    options: BenchOptions,
    contender: str,
    n_tokens: int,
    k: int,
    batch_size: int | None = None,
    sweep: list[int] | None = None,
) -> dict[str, Any]:
    """Build one graph in this process; return its measurements (run in a child process).

    circuit-tracer builds at `batch_size` (default: its own). With `sweep` it instead builds
    the graph once per batch size in `sweep`, after one warm-up, and returns
    `{"sweep": [{"batch_size", "seconds"}, ...]}`."""
    torch.manual_seed(0)
    adapter = load_adapter(options)
    transcoders = make_transcoders(adapter, k, D_SAE)
    library, store = library_of(contender)
    ids = text_contexts(adapter, 1, n_tokens)[0].to(adapter.device)
    if library == "sparsecircuits":
        build, _keep = _ours(adapter, transcoders, store)
    elif sweep:
        return {"sweep": sweep_batch_sizes(options, adapter, transcoders, ids, sweep)}
    else:
        build, _keep = _theirs(adapter, transcoders, store, batch_size or DEFAULT_THEIRS_BATCH)
    return {**measure_build(options, build, ids), "n_layers": adapter.n_layers}


def sweep_batch_sizes(
    options: BenchOptions,
    adapter: Any,
    transcoders: dict[int, Any],
    ids: torch.Tensor,
    batch_sizes: list[int],
) -> list[dict[str, Any]]:
    """Seconds of circuit-tracer's graph of `ids` at each batch size (one model, one warm-up)."""
    model = third_party.circuit_tracer_model(adapter, transcoders)
    third_party.circuit_tracer_attribute(model, ids[: min(8, int(ids.numel()))], batch_sizes[0])
    out = []
    for batch_size in batch_sizes:
        synchronize(options.device)
        start = time.perf_counter()
        third_party.circuit_tracer_attribute(model, ids, batch_size)
        synchronize(options.device)
        out.append({"batch_size": batch_size, "seconds": time.perf_counter() - start})
    return out


def measure_build(options: BenchOptions, build: Any, ids: torch.Tensor) -> dict[str, Any]:
    """Warm `build` up on the first 8 tokens of `ids`, then time `build(ids)`; return its
    seconds, the peak RSS growth over the build, the process's whole peak RSS and `build`'s
    own fields (and the peak GPU allocation growth on CUDA)."""
    n_tokens = int(ids.numel())
    build(ids[: min(8, n_tokens)])  # warm-up
    synchronize(options.device)
    before_mb = current_rss_mb()
    setup_peak_mb = peak_rss_mb()
    reset_peak_rss()
    gpu_before = 0
    if options.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    info = build(ids)
    synchronize(options.device)
    seconds = time.perf_counter() - start
    build_peak_mb = peak_rss_mb()
    out = {
        "seconds": seconds,
        "graph_peak_delta_mb": build_peak_mb - before_mb,
        "process_peak_rss_mb": max(setup_peak_mb, build_peak_mb),
        **info,
    }
    if options.device.startswith("cuda"):
        out["graph_peak_gpu_delta_mb"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
    return out


def worker_python(contender: str) -> str:
    """The interpreter a library's worker runs in.

    circuit-tracer pins transformers<=4.57.3 (and TransformerLens 2.x), which cannot share an
    environment with the rest, so its worker runs in `.venv-bench-ct` when that exists
    (override with SC_BENCH_CT_PYTHON); everything else runs in this interpreter.
    """
    if library_of(contender)[0] == "circuit-tracer":
        override = os.environ.get("SC_BENCH_CT_PYTHON")
        if override:
            return override
        ct = REPO / ".venv-bench-ct" / "bin" / "python"
        if ct.exists():
            return str(ct)
    return sys.executable


def why_unavailable(contender: str) -> str | None:
    """None when the contender's library imports in its worker interpreter, else why not."""
    if library_of(contender)[0] == "sparsecircuits":
        try:
            import sparsecircuits.circuits.graph.build  # noqa: F401
            import sparsecircuits.circuits.replacement  # noqa: F401
        except ImportError as exc:
            return f"graph builder not available ({exc})"
        return None
    python = worker_python(contender)
    if python == sys.executable:
        return third_party.available_circuit_tracer()
    check = subprocess.run([python, "-c", "import circuit_tracer"], capture_output=True, text=True)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        return f"circuit-tracer not importable in {python}: {last[:200]}; run `make bench-env`"
    return None


def _spawn(
    options: BenchOptions,
    contender: str,
    n_tokens: int,
    k: int,
    timeout_s: float,
    batch_size: int | None = None,
    sweep: list[int] | None = None,
) -> tuple[dict[str, Any] | None, float, str]:
    """Run one worker; return (its result or None, its peak RSS in MiB, error text)."""
    cmd = (
        [
            worker_python(contender),
            "-m",
            "benchmarks.run",
            "--worker",
            "graph",
            "--library",
            contender,
            "--n-tokens",
            str(n_tokens),
            "--graph-k",
            str(k),
            "--graph-d-sae",
            str(D_SAE),
            "--device",
            options.device,
            "--dtype",
            options.dtype,
            "--model",
            model_source(options),
            "--workdir",
            str(options.workdir),
        ]
        + (["--tf32"] if options.tf32 else [])
        + (["--threads", str(options.threads)] if options.threads else [])
        + (["--batch-size", str(batch_size)] if batch_size else [])
        + (["--sweep-batch-sizes", ",".join(map(str, sweep))] if sweep else [])
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, 0.0, f"timed out after {timeout_s:.0f} s"
    # The worker reports its own whole-life peak (VmHWM before and after its reset).
    result = None
    for line in stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
    if proc.returncode != 0 or result is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        return None, 0.0, f"worker failed (exit {proc.returncode}): {tail[-400:]}"
    return result, float(result.get("process_peak_rss_mb", 0.0)), ""


def best_batch_size(
    options: BenchOptions, n_tokens: int, k: int, batch_sizes: list[int], config: dict[str, Any]
) -> int:
    """circuit-tracer's fastest batch size for this prompt length from one sweep worker;
    emits the sweep as a `graph_batch_sweep` record (its default when the sweep fails)."""
    if len(batch_sizes) == 1:
        return batch_sizes[0]
    log(f"graph circuit-tracer batch sweep {batch_sizes} n_tokens={n_tokens}")
    result, _, error = _spawn(
        options, "circuit-tracer", n_tokens, k, timeout_s=900 * len(batch_sizes), sweep=batch_sizes
    )
    if result is None:
        skipped("graph_batch_sweep", "circuit-tracer", config, error)
        return DEFAULT_THEIRS_BATCH
    points = result["sweep"]
    best = min(points, key=lambda p: p["seconds"])
    emit(
        {
            "name": "graph_batch_sweep",
            "library": "circuit-tracer",
            "config": config,
            "seconds_by_batch_size": {str(p["batch_size"]): round(p["seconds"], 3) for p in points},
            "best_batch_size": best["batch_size"],
            "seconds": round(best["seconds"], 3),
        }
    )
    return int(best["batch_size"])


def run(
    options: BenchOptions,
    k: int,
    max_context: int,
    theirs_max_tokens: int,
    theirs_batch_sizes: list[int] | None = None,
    n_tokens_list: list[int] | None = None,
) -> None:
    """Emit graph records (seconds, memory) per contender and length (`n_tokens_list`, default
    `lengths`), and their ratios.

    circuit-tracer runs only up to `theirs_max_tokens` (its 256-token graph alone takes ~10
    minutes on 2 CPU cores), at the fastest of `theirs_batch_sizes` (swept per length); ours
    runs at every length, in both storage modes."""
    sweep = list(theirs_batch_sizes or THEIRS_BATCH_SWEEP)
    why = {c: why_unavailable(c) for c in CONTENDERS}
    deltas: dict[str, list[tuple[int, float]]] = {c: [] for c in CONTENDERS if why[c] is None}
    competitor = Competitor(options.compete) if options.compete else None
    for n_tokens in lengths(options.quick, max_context, n_tokens_list):
        config = {
            **options.base_config(),
            "n_tokens": n_tokens,
            "n_layers": None,
            "d_sae": D_SAE,
            "k": k,
            "architecture": "topk",
        }
        contenders = []
        for contender in CONTENDERS:
            library, store = library_of(contender)
            if why[contender] is not None:
                skipped("graph", library, {**config, "store": store}, why[contender] or "")
            elif library == "circuit-tracer" and n_tokens > theirs_max_tokens:
                reason = (
                    f"circuit-tracer runs up to {theirs_max_tokens} tokens (--graph-theirs-max)"
                )
                skipped("graph", library, {**config, "store": store}, reason)
            else:
                contenders.append(contender)
        batch_size = {c: None for c in contenders}
        if "circuit-tracer" in contenders:
            batch_size["circuit-tracer"] = best_batch_size(options, n_tokens, k, sweep, config)
        # every ratio line pairs at least 3 rounds; a length with no ratio line runs once
        paired = "circuit-tracer" in contenders and len(contenders) > 1
        repeats = 3 if paired else 1
        alone: dict[str, list[dict[str, Any] | None]] = {c: [] for c in contenders}
        contested: dict[str, list[dict[str, Any] | None]] = {c: [] for c in contenders}
        peaks: dict[str, float] = {}
        for _ in range(repeats):
            for contender in contenders:
                runs = [(alone, None)]
                if competitor is not None and paired:
                    runs.append((contested, competitor))
                for samples, beside in runs:
                    label = " beside a competitor" if beside else ""
                    log(f"graph {contender} n_tokens={n_tokens}{label}")
                    with beside.running() if beside else contextlib.nullcontext():
                        result, peak, error = _spawn(
                            options,
                            contender,
                            n_tokens,
                            k,
                            timeout_s=900,
                            batch_size=batch_size[contender],
                        )
                    samples[contender].append(result)
                    if result is None:
                        library, store = library_of(contender)
                        where = {"competition": options.compete} if beside else {}
                        skipped("graph", library, {**config, "store": store, **where}, error)
                    elif beside is None:
                        peaks[contender] = max(peaks.get(contender, 0.0), peak)
        summary = {}
        for contender, results in alone.items():
            done = [r for r in results if r is not None]
            if not done:
                continue
            median = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]
            summary[contender] = median
            deltas[contender].append((n_tokens, float(median["graph_peak_delta_mb"])))
            library, store = library_of(contender)
            cfg = {
                **config,
                "n_layers": median.get("n_layers"),
                "batch_size": median["batch_size"],
                "store": store,
            }
            emit(
                {
                    "name": "graph",
                    "library": library,
                    "config": cfg,
                    "seconds": round(median["seconds"], 3),
                    "seconds_spread": spread([r["seconds"] for r in done]),
                    "graph_peak_delta_mb": round(median["graph_peak_delta_mb"], 1),
                    **(
                        {"graph_peak_gpu_delta_mb": round(median["graph_peak_gpu_delta_mb"], 1)}
                        if "graph_peak_gpu_delta_mb" in median
                        else {}
                    ),
                    "peak_rss_mb": round(peaks[contender], 1),
                    "n_features": median["n_features"],
                    "n_nodes": median["n_nodes"],
                    "n_edges": median["n_edges"],
                }
            )
        if "circuit-tracer" not in summary:
            continue
        for contender in ("sparsecircuits", "sparsecircuits:influential"):
            if contender not in summary:
                continue
            pairs = [
                (ours, theirs)
                for ours, theirs in zip(alone[contender], alone["circuit-tracer"], strict=True)
                if ours is not None and theirs is not None
            ]
            if not pairs:
                continue
            short = {
                "n_tokens": n_tokens,
                "k": k,
                "d_sae": D_SAE,
                "store": library_of(contender)[1],
            }
            sweep_extra = {"theirs_batch_size": batch_size["circuit-tracer"]}
            ratio(
                "graph_time",
                "circuit-tracer",
                short,
                [theirs["seconds"] / ours["seconds"] for ours, theirs in pairs],
                **sweep_extra,
            )
            key = (
                "graph_peak_gpu_delta_mb"
                if "graph_peak_gpu_delta_mb" in summary[contender]
                else "graph_peak_delta_mb"
            )
            ratio(
                "graph_memory",
                "circuit-tracer",
                {**short, "measure": key},
                [max(theirs[key], 1.0) / max(ours[key], 1.0) for ours, theirs in pairs],
                **sweep_extra,
            )
            ratio(
                "graph_memory",
                "circuit-tracer",
                {**short, "measure": "process_peak_rss_mb"},
                [
                    theirs["process_peak_rss_mb"] / ours["process_peak_rss_mb"]
                    for ours, theirs in pairs
                ],
                **sweep_extra,
            )
            if competitor is not None:
                emit_graph_competition(
                    short, alone, contested, contender, options.compete or "", sweep_extra
                )
    if competitor is not None:
        competitor.close()
    for contender, points in deltas.items():
        emit_growth(contender, points)


def emit_graph_competition(
    config: dict[str, Any],
    alone: dict[str, list[dict[str, Any] | None]],
    contested: dict[str, list[dict[str, Any] | None]],
    ours: str,
    kind: str,
    extra: dict[str, Any],
) -> None:
    """Emit the graph-time ratio beside a competitor and each side's slowdown, round by round."""
    theirs = "circuit-tracer"
    rounds = [
        (a_ours, c_ours, a_theirs, c_theirs)
        for a_ours, c_ours, a_theirs, c_theirs in zip(
            alone[ours], contested[ours], alone[theirs], contested[theirs], strict=True
        )
        if None not in (a_ours, c_ours, a_theirs, c_theirs)
    ]
    if not rounds:
        return

    def seconds(rows: list[Any], i: int) -> list[float]:
        return [float(row[i]["seconds"]) for row in rows]

    ratio(
        "graph_time",
        theirs,
        {**config, "competition": kind},
        paired_ratios(seconds(rounds, 3), seconds(rounds, 1)),
        slowdown={
            library_of(ours)[0]: slowdowns(seconds(rounds, 0), seconds(rounds, 1)),
            theirs: slowdowns(seconds(rounds, 2), seconds(rounds, 3)),
        },
        ratio_alone=spread(paired_ratios(seconds(rounds, 2), seconds(rounds, 0))),
        **extra,
    )


def emit_growth(contender: str, points: list[tuple[int, float]]) -> None:
    """Emit how a contender's graph memory grows with the prompt: the exponent `b` of
    `memory ∝ tokens^b` between consecutive lengths and from the first to the last
    (2 = quadratic)."""
    library, store = library_of(contender)
    pairs = list(zip(points, points[1:], strict=False))
    if len(points) > 2:
        pairs.append((points[0], points[-1]))
    for (n0, m0), (n1, m1) in pairs:
        if m0 > 0 and m1 > 0:
            emit(
                {
                    "name": "graph_memory_growth",
                    "library": library,
                    "config": {
                        "from_tokens": n0,
                        "to_tokens": n1,
                        "store": store,
                        "measure": "graph_peak_delta_mb",
                    },
                    "exponent": round(math.log(m1 / m0) / math.log(n1 / n0), 3),
                }
            )
