"""Turn `run.py --json` output into the Markdown tables of docs/performance.md.

python benchmarks/report.py out/bench/results.jsonl > table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load(path: str | Path) -> list[dict[str, Any]]:
    """The JSON records of a results file (non-JSON lines ignored)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return str(value)


def _cfg(config: dict[str, Any], skip: tuple[str, ...] = ("device", "dtype", "tf32")) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in skip and v is not None)


def ratio_cell(record: dict[str, Any]) -> str:
    """A ratio record's value as "median [min, max]" (just the value for a single sample)."""
    low, high = record.get("ratio_min"), record.get("ratio_max")
    if low is None or high is None:
        return f"{record['ratio']:.2f}"
    return f"{record['ratio']:.2f} [{low:.2f}, {high:.2f}]"


def _spread_cell(stats: dict[str, float]) -> str:
    return f"{stats['median']:.2f} [{stats['min']:.2f}, {stats['max']:.2f}]"


def tables(records: list[dict[str, Any]]) -> str:
    """Markdown: measurements, ratios (median [min, max] over the interleaved repetitions),
    ratios beside a competing process, circuit-tracer's batch sweeps, skipped measurements."""
    lines = [
        "| benchmark | library | config | tokens/s | seconds | peak RSS MiB | extra |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if (
            r.get("kind") == "ratio"
            or "skipped" in r
            or r["name"]
            in (
                "machine",
                "total",
                "train_step_breakdown",
                "kernel_alternative",
                "graph_batch_sweep",
            )
        ):
            continue
        extra: dict[str, Any] = {
            k: r[k]
            for k in (
                "step_peak_delta_mb",
                "graph_peak_delta_mb",
                "n_features",
                "n_nodes",
                "tflops",
                "exponent",
            )
            if k in r
        }
        if "variants_tokens_per_s" in r:
            extra["variants tok/s"] = "; ".join(
                f"{name} {_fmt(float(v))}" for name, v in r["variants_tokens_per_s"].items()
            )
        lines.append(
            f"| {r['name']} | {r.get('library', '-')} | {_cfg(r['config'])} | "
            f"{_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('seconds'))} | "
            f"{_fmt(r.get('peak_rss_mb'))} | {_cfg(extra)} |"
        )
    lines += [
        "",
        "| what | vs | config | ratio (>1: sparsecircuits ahead), median [min, max] | n |",
        "|---|---|---|---|---|",
    ]
    ratios = [r for r in records if r.get("kind") == "ratio"]
    for r in ratios:
        if "competition" in r["config"]:
            continue
        note = {k: r[k] for k in ("ceiling", "ceiling_precision", "theirs_batch_size") if k in r}
        cfg = ", ".join(filter(None, [_cfg(r["config"]), _cfg(note)]))
        lines.append(
            f"| {r['what']} | {r['vs']} | {cfg} | {ratio_cell(r)} | {r.get('repeats', 1)} |"
        )
    contested = [r for r in ratios if "competition" in r["config"]]
    if contested:
        lines += [
            "",
            "Beside one competing CPU-bound process (slowdown = seconds beside it / seconds "
            "alone, per round; median [min, max]):",
            "",
            "| what | vs | config | ratio beside it | ratio alone | slowdown ours | "
            "slowdown theirs |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in contested:
            slow = r.get("slowdown", {})
            ours = next((v for k, v in slow.items() if k == "sparsecircuits"), None)
            theirs = next((v for k, v in slow.items() if k != "sparsecircuits"), None)
            lines.append(
                f"| {r['what']} | {r['vs']} | {_cfg(r['config'])} | {ratio_cell(r)} | "
                f"{_spread_cell(r['ratio_alone']) if 'ratio_alone' in r else '–'} | "
                f"{_spread_cell(ours) if ours else '–'} | "
                f"{_spread_cell(theirs) if theirs else '–'} |"
            )
    sweeps = [r for r in records if r.get("name") == "graph_batch_sweep" and "skipped" not in r]
    if sweeps:
        lines += [
            "",
            "| circuit-tracer batch sweep | seconds by batch size | best |",
            "|---|---|---|",
        ]
        for r in sweeps:
            by_size = ", ".join(f"{b}: {sec:g}" for b, sec in r["seconds_by_batch_size"].items())
            lines.append(f"| {_cfg(r['config'])} | {by_size} | {r['best_batch_size']} |")
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += ["", "| skipped | library | config | why |", "|---|---|---|---|"]
        for r in skipped:
            lines.append(f"| {r['name']} | {r['library']} | {_cfg(r['config'])} | {r['skipped']} |")
    alternatives = [r for r in records if r.get("name") == "kernel_alternative"]
    if alternatives:
        lines += ["", "| kernel family | d_sae | k | candidates (ms) |", "|---|---|---|---|"]
        for r in alternatives:
            c = r["config"]
            ms = ", ".join(f"{name} {value:g}" for name, value in r["ms"].items())
            lines.append(f"| {c['family']} | {c['d_sae']} | {c['k']} | {ms} |")
    for r in records:
        if r.get("name") == "train_step_breakdown":
            c = r["config"]
            lines += [
                "",
                f"Step breakdown, {c['kind']} {c['architecture']} d_sae={c['d_sae']} "
                f"k={c['k']} (self time per step):",
                "",
                "| op | ms | share |",
                "|---|---|---|",
            ]
            for op in r["top_ops"]:
                ms = op["self_device_ms"] or op["self_cpu_ms"]
                lines.append(f"| {op['op']} | {ms:.2f} | {100 * op['share']:.1f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the tables for the results file named on the command line."""
    parser = argparse.ArgumentParser(description="Markdown tables of a `run.py --json` file.")
    parser.add_argument("results", type=Path, help="a results .jsonl file")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"{args.results} is not a file: give the .jsonl that run.py --json wrote")
    sys.stdout.write(tables(load(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
