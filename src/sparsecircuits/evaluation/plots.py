"""Sparsity–faithfulness frontier plots (PNG, matplotlib)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

# Marker per kind (transcoders round, SAEs triangular); colour per series from the cycle.
KIND_MARKER = {"transcoder": "o", "skip_transcoder": "s", "clt": "D", "sae": "^"}


@contextmanager
def saved_figure(path: str | Path, *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """`(fig, axes)` of `plt.subplots(*args, **kwargs)`; on leaving the block the figure is laid
    out and written to `path` at its own dpi (parent folders created), then closed."""
    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_frontier(
    records: list[dict[str, Any]],
    path: str | Path,
    y: str = "ce_loss_spliced",
    title: str | None = None,
    clean_key: str | None = "ce_loss_clean",
) -> Path:
    """Draw L0 (x, log scale) against `y` for each (kind, architecture) series of `records`, with
    a dashed clean-model line when they hold `clean_key`; return the path."""
    path = Path(path)
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        series[(r["kind"], r["architecture"])].append((float(r["l0"]), float(r[y])))
    with saved_figure(path, figsize=(6.4, 4.4), dpi=120) as (_, ax):
        for (kind, arch), points in sorted(series.items()):
            points.sort()
            xs, ys = zip(*points, strict=True)
            linestyle = "-" if len(points) > 1 else "none"
            marker = KIND_MARKER.get(kind, "x")
            ax.plot(
                xs, ys, marker=marker, linestyle=linestyle, label=f"{kind} ({arch})", alpha=0.85
            )
        if clean_key and records and clean_key in records[0]:
            ax.axhline(
                float(records[0][clean_key]),
                color="black",
                linestyle="--",
                lw=1,
                label="clean model",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(y.replace("_", " "))
        ax.set_title(title or f"Sparsity vs {y.replace('_', ' ')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return path


def plot_roc(
    curves: dict[str, tuple[list[float], list[float]]], path: str | Path, title: str = "ROC"
) -> Path:
    """Draw ROC curves `{label: (fpr, tpr)}` with the chance diagonal; return the path."""
    path = Path(path)
    with saved_figure(path, figsize=(5.0, 5.0), dpi=120) as (_, ax):
        for label, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, label=label, alpha=0.85)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", lw=1, label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return path
