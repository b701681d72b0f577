"""Run the sparsecircuits benchmarks and print one JSON object per line.

    python benchmarks/run.py --json            # full suite (< 30 min on 2 CPU cores)
    python benchmarks/run.py --json --quick    # d_sae 4k, a 17-token graph (< 5 min)
    python benchmarks/run.py --json --only train_step,graph --device cuda --dtype bfloat16
    python benchmarks/run.py --json --only graph_scale   # GPT-2-small-sized graphs (hours)
    python benchmarks/run.py --json --quick --only train_step,graph --compete spin

Records: `{"name", "library", "config", "tokens_per_s" | "seconds", "peak_rss_mb", ...}`, then
`{"kind": "ratio", "what", "vs", "config", "ratio", "ratio_min", "ratio_max", "repeats"}`
lines (ours/theirs for speed, theirs/ours for memory: above 1 means sparsecircuits is ahead;
`ratio` is the median over at least 3 interleaved repetitions, each ratio taken within one
round). With `--compete KIND` the train-step and graph pairs are also measured beside one
competing CPU-bound process, in lines whose config carries `"competition": KIND` and that give
each side's `slowdown`. The first line describes the machine.
eai-sparsify, SAELens and circuit-tracer are compared when importable (`make bench-env`);
otherwise their lines say "skipped" and why. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Before torch: importing sparsecircuits sets the OpenMP wait policy (idle threads sleep) that
# torch's runtime reads when it loads, as under the sparsecircuits CLI. Every contender in this
# process shares that runtime, and worker processes (circuit-tracer's too) inherit the setting.
import sparsecircuits  # noqa: E402, F401, I001
import torch  # noqa: E402

from benchmarks import common

GROUPS = ("harvest", "train_step", "breakdown", "end_to_end", "graph", "graph_scale")
# graph_scale (GPT-2-small-sized graphs, ours and circuit-tracer's) takes an hour or more on 2
# cores, so it runs only when asked for: --only graph_scale
DEFAULT_GROUPS = GROUPS[:-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON lines only (the default format)")
    p.add_argument("--quick", action="store_true", help="d_sae 4k and a 17-token graph only")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_GROUPS),
        help=f"comma-separated subset of {GROUPS} (default: all but graph_scale)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA)")
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved timing rounds (at least 3)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core)",
    )
    p.add_argument(
        "--model",
        default="auto",
        help="'auto' (embedded model if installed, else a tiny GPT-2 of its shape), "
        "'embedded', 'tiny', or a local model folder",
    )
    p.add_argument("--graph-k", type=int, default=32, help="TopK k of the graph transcoders")
    p.add_argument(
        "--graph-d-sae", type=int, default=4096, help="features per graph transcoder (default 4096)"
    )
    p.add_argument(
        "--graph-lengths",
        default=None,
        help="comma-separated prompt lengths of the graph group (default 17,65,256; --quick 17)",
    )
    p.add_argument(
        "--graph-theirs-max",
        type=int,
        default=65,
        help="longest prompt circuit-tracer's graph is built for (default 65: its 256-token "
        "graph alone takes ~10 minutes on 2 cores; pass 256 to include it)",
    )
    p.add_argument(
        "--graph-theirs-batch-sizes",
        default=None,
        help="circuit-tracer attribute() batch sizes swept per prompt length; the fastest is "
        "compared (default 128,256,512,1024 for graph; 512 for graph_scale)",
    )
    p.add_argument(
        "--compete",
        choices=common.COMPETITOR_KINDS,
        default=None,
        help="also time each train-step and graph pair beside one competing CPU-bound process "
        "('spin': a Python busy loop; 'gemm': a 1-thread numpy matmul loop) and report the "
        "slowdown of each side",
    )
    p.add_argument(
        "--graph-scale-cases",
        default=None,
        help="graph_scale cases as TOKENS:MAX_FEATURE_NODES,... (0: every feature a target; "
        "default 32:0,32:8192,128:8192)",
    )
    p.add_argument(
        "--train-cases",
        default=None,
        help="train_step cases as ARCHITECTURE:D_SAE[:K],... (e.g. relu:4096,topk:16384:64; "
        "without K every k of the grid; default: the whole grid)",
    )
    p.add_argument(
        "--dead-frac",
        type=float,
        default=0.0,
        help="TopK train steps with this fraction of latents held dead (AuxK on, for us and "
        "sparsify at auxk_alpha 1/32, our coefficient; SAELens not run); default 0: none dead, "
        "as in a run's first steps",
    )
    p.add_argument("--workdir", default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    # internal: one graph measurement in a fresh process
    p.add_argument("--worker", choices=("graph", "graph_scale"), help=argparse.SUPPRESS)
    p.add_argument("--max-feature-nodes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--library", help=argparse.SUPPRESS)
    p.add_argument("--n-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--sweep-batch-sizes", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 3:
        p.error("--repeats must be at least 3 (every ratio line pairs at least 3 rounds)")
    if not 0.0 <= args.dead_frac < 1.0:
        p.error("--dead-frac must be at least 0 and below 1")
    return args


def batch_sizes(text: str | None) -> list[int] | None:
    """The integers of a comma-separated list (None for an empty one)."""
    if not text:
        return None
    return [int(item) for item in text.split(",") if item.strip()]


def options_from(args: argparse.Namespace) -> common.BenchOptions:
    """`BenchOptions` from the parsed flags."""
    opts = common.BenchOptions(
        quick=args.quick,
        device=args.device,
        dtype=args.dtype,
        tf32=args.tf32,
        model=args.model,
        threads=args.threads,
        compete=args.compete,
        train_cases=args.train_cases,
        dead_frac=args.dead_frac,
    )
    if args.repeats is not None:
        opts.repeats = args.repeats
    elif args.quick:
        opts.repeats, opts.min_time_s = 3, 0.25
    if args.workdir:
        opts.workdir = Path(args.workdir)
        opts.workdir.mkdir(parents=True, exist_ok=True)
    return opts


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmark groups; return the exit code."""
    args = parse_args(argv)
    options = options_from(args)
    common.apply_precision(options)
    from benchmarks import bench_graph

    bench_graph.D_SAE = args.graph_d_sae
    if args.worker == "graph":
        with common.redirect_library_output():
            result = bench_graph.worker(
                options,
                args.library,
                args.n_tokens,
                args.graph_k,
                batch_size=args.batch_size,
                sweep=batch_sizes(args.sweep_batch_sizes),
            )
        print(json.dumps(result), flush=True)
        return 0
    if args.worker == "graph_scale":
        from benchmarks import bench_graph_scale

        with common.redirect_library_output():
            result = bench_graph_scale.worker(
                options,
                args.library,
                args.n_tokens,
                args.max_feature_nodes or None,
                batch_size=args.batch_size,
                sweep=batch_sizes(args.sweep_batch_sizes),
            )
        print(json.dumps(result), flush=True)
        return 0

    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        print(f"error: unknown group(s) {unknown}; choose from {GROUPS}", file=sys.stderr)
        return 2
    out_file = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed below
    if out_file is not None:
        tee = _Tee(sys.stdout, out_file)
        common._JSON_OUT = tee  # type: ignore[assignment]
    start = time.perf_counter()
    with common.redirect_library_output():
        common.emit(
            {
                "name": "machine",
                "library": "-",
                "config": options.base_config(),
                "machine": common.machine_summary(),
                "versions": common.library_versions(),
                "quick": options.quick,
                "repeats": options.repeats,
                "compete": options.compete,
                "model": common.model_label(common.model_source(options)),
                "peak_rss_mb": round(common.peak_rss_mb(), 1),
            }
        )
        adapter = common.load_adapter(options)
        if "harvest" in groups:
            from benchmarks import bench_harvest

            bench_harvest.run(adapter, options)
        if "train_step" in groups:
            from benchmarks import bench_train_step

            bench_train_step.run(adapter, options)
        if "breakdown" in groups:
            from benchmarks import bench_breakdown

            bench_breakdown.run(adapter, options)
        if "end_to_end" in groups:
            from benchmarks import bench_end_to_end

            bench_end_to_end.run(adapter, options)
        if "graph" in groups:
            bench_graph.run(
                options,
                args.graph_k,
                adapter.max_context,
                args.graph_theirs_max,
                theirs_batch_sizes=batch_sizes(args.graph_theirs_batch_sizes),
                n_tokens_list=batch_sizes(args.graph_lengths),
            )
        if "graph_scale" in groups and not options.quick:
            from benchmarks import bench_graph_scale

            bench_graph_scale.run(
                options,
                cases=bench_graph_scale.parse_cases(args.graph_scale_cases),
                theirs_batch_sizes=batch_sizes(args.graph_theirs_batch_sizes),
            )
        common.emit(
            {
                "name": "total",
                "library": "-",
                "config": options.base_config(),
                "seconds": round(time.perf_counter() - start, 1),
                "peak_rss_mb": round(common.peak_rss_mb(), 1),
            }
        )
    if out_file is not None:
        out_file.close()
    return 0


class _Tee:
    """Write to two text streams."""

    def __init__(self, *streams: object):
        self.streams = streams

    def write(self, text: str) -> None:
        for stream in self.streams:
            stream.write(text)  # type: ignore[attr-defined]

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
