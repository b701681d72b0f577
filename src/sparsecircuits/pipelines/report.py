"""The report of evaluated dictionaries: `metrics.json`, `frontier.png` and `summary.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsecircuits.evaluation import plot_frontier


def _hooks_cell(record: dict[str, Any]) -> str:
    """`hook_in → hook_out`; a CLT's templates shown over its layer range (`blocks.{0..3}.…`)."""
    hooks = f"{record['hook_in']} → {record['hook_out']}"
    n_layers = record.get("n_layers")
    return hooks.replace("{layer}", f"{{0..{n_layers - 1}}}") if n_layers else hooks


def write_report(out: Path, records: list[dict[str, Any]], title: str, extra_md: str = "") -> None:
    """Write `metrics.json`, `frontier.png` and `summary.md` for evaluated dictionaries (a
    cross-layer transcoder: its totals, then a table of its layers)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(records, indent=2))
    plot_frontier(records, out / "frontier.png", title=title)
    lines = [
        f"# {title}",
        "",
        "| name | kind | arch | hook in → out | d_sae | L0 | FVU | CE clean | CE spliced | CE zero-abl. | CE recovered | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['architecture']} | {_hooks_cell(r)} | "
            f"{r['d_sae']} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['ce_loss_clean']:.3f} | "
            f"{r['ce_loss_spliced']:.3f} | {r['ce_loss_zero_ablated']:.3f} | "
            f"{100 * r['ce_loss_recovered']:.1f}% | {r['kl_div']:.4f} |"
        )
    for r in records:
        if not r.get("layers"):
            continue
        lines += [
            "",
            f"## {r['name']} by layer (spliced at every layer at once)",
            "",
            "| layer | hook in → out | L0 | FVU | cos sim | dead | dense |",
            "|---|---|---|---|---|---|---|",
        ]
        for layer in r["layers"]:
            lines.append(
                f"| {layer['layer']} | {layer['hook_in']} → {layer['hook_out']} | {layer['l0']:.1f} | "
                f"{layer['fvu']:.3f} | {layer['cossim']:.3f} | {100 * layer['dead_frac']:.1f}% | "
                f"{100 * layer['dense_frac']:.1f}% |"
            )
    (out / "summary.md").write_text("\n".join(lines) + "\n\n" + extra_md)
