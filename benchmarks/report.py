"""Turn `run.py --json` output into the Markdown tables of docs/performance.md.

python benchmarks/report.py out/bench/results.jsonl > table.md
"""

from __future__ import annotations

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


def tables(records: list[dict[str, Any]]) -> str:
    """Markdown: measurements, then ratios, then skipped measurements."""
    lines = [
        "| benchmark | library | config | tokens/s | seconds | peak RSS MiB | extra |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if (
            r.get("kind") == "ratio"
            or "skipped" in r
            or r["name"] in ("machine", "total", "train_step_breakdown", "kernel_alternative")
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
        lines.append(
            f"| {r['name']} | {r['library']} | {_cfg(r['config'])} | "
            f"{_fmt(r.get('tokens_per_s'))} | {_fmt(r.get('seconds'))} | "
            f"{_fmt(r.get('peak_rss_mb'))} | {_cfg(extra)} |"
        )
    lines += ["", "| what | vs | config | ratio (>1: sparsecircuits ahead) |", "|---|---|---|---|"]
    for r in records:
        if r.get("kind") == "ratio":
            lines.append(f"| {r['what']} | {r['vs']} | {_cfg(r['config'])} | {r['ratio']:.2f} |")
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
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/report.py RESULTS.jsonl", file=sys.stderr)
        return 2
    sys.stdout.write(tables(load(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
