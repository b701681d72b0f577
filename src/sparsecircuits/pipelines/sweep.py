"""The dictionary sweep: every activation family at several sparsities on one layer, trained
from one activation stream, and its report (frontier plots, a table, matched-L0 pairs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsecircuits.dictionaries.activations import ACTIVATIONS
from sparsecircuits.evaluation import plot_frontier

SWEEP_LAYER = 1
D_SAE = 1024


def default_grid(layer: int = SWEEP_LAYER, d_sae: int = D_SAE) -> list[dict[str, Any]]:
    """Return the default sweep: each activation family at a few sparsities, as transcoder and SAE,
    plus a TopK skip transcoder. TopK-like families are set by k; ReLU and JumpReLU start at
    `init_l0` 16 or 32, with a coefficient that holds them there (in a 300k-token run the
    coefficient alone cannot move L0 from its init)."""
    per_kind: list[dict[str, Any]] = []
    per_kind += [{"architecture": "topk", "k": k} for k in (16, 32)]
    # A 73-step run: the default threshold EMA (0.01) would average over the whole run while
    # activation scales still move (eval L0 0.5-2x k); 0.1 follows the end of training.
    per_kind += [{"architecture": "batchtopk", "k": k, "threshold_lr": 0.1} for k in (16, 32)]
    per_kind += [{"architecture": "abstopk", "k": k} for k in (16, 32)]
    per_kind += [{"architecture": "topafa", "k": k} for k in (32, 64)]
    # Inference stops after k steps too (the adaptive stop alone would run up to d_in steps).
    per_kind += [{"architecture": "mp", "k": k, "mp_max_iterations": k} for k in (8, 16)]
    per_kind += [{"architecture": "relu", "l1_coefficient": 1.0, "init_l0": n} for n in (16, 32)]
    per_kind += [
        {"architecture": "jumprelu", "l0_coefficient": 0.3, "init_l0": n} for n in (16, 32)
    ]
    grid = []
    for kind in ("transcoder", "sae"):
        for spec in per_kind:
            if kind != "sae" and ACTIVATIONS[spec["architecture"]].sae_only:
                continue
            grid.append({"kind": kind, "layer": layer, "d_sae": d_sae, **spec})
    grid.append(
        {"kind": "skip_transcoder", "architecture": "topk", "k": 32, "layer": layer, "d_sae": d_sae}
    )
    for spec in grid:
        sparsity = spec["k"] if "k" in spec else f"l0init{spec['init_l0']}"
        spec["name"] = f"{spec['kind']}-{spec['architecture']}-{sparsity}"
    return grid


SWEEP_RUN: dict[str, Any] = {
    "model": "embedded",
    "dataset": "embedded",
    "context_size": 128,
    "dictionaries": default_grid(),
    "train": {"total_tokens": 300_000, "batch_tokens": 4096, "lr": 3e-3, "warmup_steps": 10},
    "eval_contexts": 48,
    "data_epochs": 2,
}


def matched_l0_comparison(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair each TopK transcoder with the TopK SAE of the same k: spliced CE loss side by side."""
    saes = {r["k"]: r for r in records if r["kind"] == "sae" and r["architecture"] == "topk"}
    rows = []
    for tc in records:
        if tc["kind"] == "transcoder" and tc["architecture"] == "topk" and tc["k"] in saes:
            sae = saes[tc["k"]]
            rows.append(
                {
                    "k": tc["k"],
                    "transcoder_l0": tc["l0"],
                    "sae_l0": sae["l0"],
                    "transcoder_ce_spliced": tc["ce_loss_spliced"],
                    "sae_ce_spliced": sae["ce_loss_spliced"],
                    "transcoder_ce_recovered": tc["ce_loss_recovered"],
                    "sae_ce_recovered": sae["ce_loss_recovered"],
                    "transcoder_kl": tc["kl_div"],
                    "sae_kl": sae["kl_div"],
                    "transcoder_better": tc["ce_loss_spliced"] < sae["ce_loss_spliced"],
                }
            )
    return sorted(rows, key=lambda r: r["k"])


def write_sweep_report(out: Path, records: list[dict[str, Any]], seconds: float) -> None:
    """Write frontier.json, frontier_{fvu,ce}_{transcoders,saes}.png and table.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(records, indent=2))
    groups = {
        "transcoders": [r for r in records if r["kind"] != "sae"],
        "saes": [r for r in records if r["kind"] == "sae"],
    }
    for label, group in groups.items():
        if not group:
            continue
        for short, y, what in (
            ("fvu", "fvu", "FVU"),
            ("ce", "ce_loss_recovered", "CE loss recovered"),
        ):
            path = out / f"frontier_{short}_{label}.png"
            plot_frontier(group, path, y=y, clean_key=None, title=f"L0 vs {what} ({label})")
    lines = [
        "| name | kind | architecture | L0 | FVU | CE spliced | CE increase | KL | CE recovered | dead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(records, key=lambda r: (r["kind"], r["architecture"], r["l0"])):
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['architecture']} | {r['l0']:.1f} | {r['fvu']:.3f} | "
            f"{r['ce_loss_spliced']:.3f} | {r['ce_loss_spliced'] - r['ce_loss_clean']:.4f} | "
            f"{r['kl_div']:.4f} | {100 * r['ce_loss_recovered']:.1f}% | {100 * r['dead_frac']:.0f}% |"
        )
    pairs = matched_l0_comparison(records)
    if pairs:
        lines += [
            "",
            "Matched L0 (TopK, same k): spliced CE loss, transcoder vs SAE on the MLP output.",
            "",
            "| k | transcoder CE | SAE CE | transcoder KL | SAE KL | transcoder recovered | "
            "SAE recovered | transcoder better |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in pairs:
            lines.append(
                f"| {p['k']} | {p['transcoder_ce_spliced']:.3f} | {p['sae_ce_spliced']:.3f} | "
                f"{p['transcoder_kl']:.4f} | {p['sae_kl']:.4f} | "
                f"{100 * p['transcoder_ce_recovered']:.1f}% | {100 * p['sae_ce_recovered']:.1f}% | "
                f"{'yes' if p['transcoder_better'] else 'no'} |"
            )
    lines += ["", f"{len(records)} dictionaries, {seconds:.0f} s wall clock."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
