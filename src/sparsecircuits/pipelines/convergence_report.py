"""The report of a transcoder-vs-SAE convergence sweep: per-configuration summaries with 95 %
Student-t intervals over seeds, matched-L0 pairs, a markdown table and a frontier plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sparsecircuits.circuits.identify.metrics import mean_ci
from sparsecircuits.evaluation.plots import KIND_MARKER, saved_figure
from sparsecircuits.pipelines.convergence import (
    KINDS,
    ConvergenceConfig,
    complete_seed_means,
    converged_at,
    iter_configs,
    relative_improvement,
    seed_means,
    stopped_at,
)

SUMMARY_METRICS = ("l0", "fvu", "ce_increase", "ce_loss_recovered", "kl_div", "ce_loss_spliced")


def summarise(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> list[dict[str, Any]]:
    """Return one summary per configuration at the budget where it stopped (it and its partner of
    the other kind had converged), else at its last budget every seed reached: `name, kind,
    layer, k, budget, converged` (whether its own rule had fired by then), `converged_at` (the
    budget where it did, None if not yet), `last_improvement` (the criterion's relative
    improvement over the doubling before it; None after one budget), `got_worse` (that doubling
    made the criterion worse),
    `last_increase_improvement` (the same for the CE increase, which falls faster in relative
    terms than the spliced CE), `trained_to` (the last budget every seed reached, past `budget`
    when a stricter sweep went on), `best_budget` (the complete budget with the lowest seed-mean
    criterion), `seeds`, and `{metric: {mean, low, high}}` (95 % Student-t interval over
    seeds)."""
    stops, own = stopped_at(rows, cfg), converged_at(rows, cfg)
    means = complete_seed_means(rows, cfg)
    summaries = []
    for name, config_rows in iter_configs(rows):
        budgets = sorted({r["budget"] for r in config_rows})
        # A budget counts once every seed reached it; report the furthest such budget.
        complete = [
            b for b in budgets if sum(r["budget"] == b for r in config_rows) >= len(cfg.seeds)
        ]
        # A configuration is reported where the rule stopped it (with its partner), even when a
        # sweep with a stricter rule trained it further (those budgets stay in the trajectory).
        budget = stops.get(name, (complete or budgets)[-1])
        at_budget = [r for r in config_rows if r["budget"] == budget]
        first = at_budget[0]
        earlier = [b for b in complete if b < budget]
        improvement = increase_improvement = None
        if earlier:
            improvement = relative_improvement(means[(name, earlier[-1])], means[(name, budget)])
            increase = seed_means(config_rows, "ce_increase")
            increase_improvement = relative_improvement(
                increase[(name, earlier[-1])], increase[(name, budget)]
            )
        summary: dict[str, Any] = {
            "name": name,
            "kind": first["kind"],
            "layer": first["layer"],
            "k": first["k"],
            "budget": budget,
            "converged": name in own and own[name] <= budget,
            "converged_at": own.get(name),
            "last_improvement": improvement,
            "got_worse": improvement is not None and improvement < 0,
            "last_increase_improvement": increase_improvement,
            "trained_to": (complete or budgets)[-1],
            "best_budget": min(
                (b for b in complete if (name, b) in means and b <= budget),
                key=lambda b: means[(name, b)],
                default=budget,
            ),
            "seeds": len(at_budget),
        }
        for metric in SUMMARY_METRICS:
            mean, _, low, high = mean_ci([float(r[metric]) for r in at_budget])
            summary[metric] = {"mean": mean, "low": low, "high": high}
        summaries.append(summary)
    return summaries


def matched_pairs(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> list[dict[str, Any]]:
    """Pair each layer's transcoder and SAE of the same k at their final budgets: the
    transcoder-minus-SAE difference of the CE increase and of KL over the seeds both have (a
    seed is one data order for both kinds), with its 95 % t-interval, and a verdict: `transcoder`
    or `sae` when the interval of the CE-increase difference excludes 0, else `tie`. `at_best`
    repeats the CE-increase difference and verdict with each side at its best budget up to its
    final one (an optimistic choice for both, made on the evaluation set itself: a check on a
    side that got worse, not the headline)."""
    summaries = {s["name"]: s for s in summarise(rows, cfg)}
    by_key = {(row["name"], row["budget"], row["seed"]): row for row in rows}
    pairs = []
    for tc in (s for s in summaries.values() if s["kind"] == "transcoder"):
        sae = summaries.get(tc["name"].replace("transcoder-", "sae-", 1))
        if sae is None:
            continue
        seeds, diffs = _paired_difference(by_key, tc, sae, "budget", ("ce_increase", "kl_div"))
        _, best = _paired_difference(by_key, tc, sae, "best_budget", ("ce_increase",))
        pairs.append(
            {
                "layer": tc["layer"],
                "k": tc["k"],
                "transcoder": tc,
                "sae": sae,
                "diff": diffs,
                "seeds": len(seeds),
                "better": _verdict(diffs["ce_increase"], len(seeds)),
                "at_best": {
                    "ce_increase": best["ce_increase"],
                    "better": _verdict(best["ce_increase"], len(seeds)),
                },
            }
        )
    return sorted(pairs, key=lambda p: (p["layer"], p["k"]))


def _paired_difference(
    by_key: dict[tuple[str, int, int], dict[str, Any]],
    tc: dict[str, Any],
    sae: dict[str, Any],
    budget_key: str,
    metrics: tuple[str, ...],
) -> tuple[list[int], dict[str, dict[str, float]]]:
    """`(seeds, {metric: {mean, low, high}})`: transcoder − SAE per seed, each side at its
    summary's `budget_key` budget, over the seeds evaluated there for both."""
    tc_at, sae_at = (tc["name"], tc[budget_key]), (sae["name"], sae[budget_key])
    seeds = sorted(
        seed
        for (name, budget, seed) in by_key
        if (name, budget) == tc_at and (*sae_at, seed) in by_key
    )
    diffs = {}
    for metric in metrics:
        values = [
            float(by_key[(*tc_at, s)][metric]) - float(by_key[(*sae_at, s)][metric]) for s in seeds
        ]
        mean, _, low, high = mean_ci(values)
        diffs[metric] = {"mean": mean, "low": low, "high": high}
    return seeds, diffs


def _verdict(diff: dict[str, float], n_seeds: int) -> str:
    """`transcoder` / `sae` when the difference's interval excludes 0 (with one seed: its sign),
    else `tie`."""
    if n_seeds < 2:
        return "transcoder" if diff["mean"] < 0 else "sae" if diff["mean"] > 0 else "tie"
    return "transcoder" if diff["high"] < 0 else "sae" if diff["low"] > 0 else "tie"


def _ci(stat: dict[str, float], fmt: str, scale: float = 1.0) -> str:
    mean, low, high = (scale * stat[key] for key in ("mean", "low", "high"))
    if low == high:
        return format(mean, fmt)
    return f"{format(mean, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def table_markdown(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> str:
    """Return the report table: one line per (layer, k) with both kinds' budget, the budget where
    each side's own rule fired (a side that converged first trains on with its partner), the
    criterion's and the CE increase's improvement over the doubling before the reported budget,
    L0, CE increase, KL and CE recovered (mean [95 % t-interval over seeds]) and the verdict."""
    criterion = "spliced CE" if cfg.criterion == "ce" else "CE increase"
    extra = cfg.criterion == "ce"  # the CE increase's own column, unless it is the criterion
    lines = [
        f"| layer | k | kind | budget (tokens) | converged at | {criterion}, last doubling | "
        + ("CE increase, last doubling | " if extra else "")
        + "L0 | CE increase (nats) | KL | CE recovered | FVU |",
        "|---|---|---|---|---|---|" + ("---|" if extra else "") + "---|---|---|---|---|",
    ]
    for s in summarise(rows, cfg):
        status = "no" if s["converged_at"] is None else f"{s['converged_at']:,}"
        improvement = s["last_improvement"]
        cell = "–" if improvement is None else f"{100 * improvement:+.1f} %"
        if s["got_worse"]:  # the last doubling made it worse: say where it was best
            cell += f" (best at {s['best_budget']:,})"
        increase = s["last_increase_improvement"]
        increase_cell = "–" if increase is None else f"{100 * increase:+.1f} %"
        lines.append(
            f"| {s['layer']} | {s['k']} | {s['kind']} | {s['budget']:,} | {status} | {cell} | "
            + (f"{increase_cell} | " if extra else "")
            + f"{s['l0']['mean']:.1f} | {_ci(s['ce_increase'], '.4f')} | "
            f"{_ci(s['kl_div'], '.4f')} | {_ci(s['ce_loss_recovered'], '.1f', 100)} % | "
            f"{s['fvu']['mean']:.3f} |"
        )
    lines += [
        "",
        "| layer | k | transcoder − SAE: CE increase | transcoder − SAE: KL | seeds | lower loss "
        "| each at its best budget: CE increase | lower loss there |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in matched_pairs(rows, cfg):
        lines.append(
            f"| {p['layer']} | {p['k']} | {_ci(p['diff']['ce_increase'], '+.4f')} | "
            f"{_ci(p['diff']['kl_div'], '+.4f')} | {p['seeds']} | {p['better']} | "
            f"{_ci(p['at_best']['ce_increase'], '+.4f')} | {p['at_best']['better']} |"
        )
    return "\n".join(lines + ["", trajectory_markdown(rows, cfg)])


def trajectory_markdown(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> str:
    """Return a table of the seed-mean stopping criterion of every configuration at every budget
    every seed was evaluated at, with the relative improvement over the budget before."""
    means = complete_seed_means(rows, cfg)
    budgets = sorted({budget for _, budget in means})
    what = "CE increase" if cfg.criterion == "ce_increase" else "spliced CE"
    lines = [
        f"Seed-mean {what} per budget (tokens), and its improvement on the budget before:",
        "",
        "| configuration | " + " | ".join(f"{b:,}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for name, _ in iter_configs(rows):
        cells, previous = [], None
        for budget in budgets:
            value = means.get((name, budget))
            if value is None:
                cells.append("")
                continue
            cell = f"{value:.4f}"
            if previous is not None:
                cell += f" ({100 * relative_improvement(previous, value):+.1f} %)"
            cells.append(cell)
            previous = value
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_matched_frontier(rows: list[dict[str, Any]], cfg: ConvergenceConfig, path: Path) -> Path:
    """Draw, per layer (columns), L0 against the CE increase (top) and KL (bottom) for the
    transcoders and the SAEs at their final budgets, with 95 % t-intervals over seeds."""
    summaries = summarise(rows, cfg)
    layers = sorted({s["layer"] for s in summaries})
    with saved_figure(
        path, 2, len(layers), figsize=(3.2 * len(layers) + 0.6, 5.8), dpi=120, squeeze=False
    ) as (fig, axes):
        seeds = max(s["seeds"] for s in summaries)
        fig.suptitle(
            f"mean of {seeds} seeds, 95 % t-interval",
            fontsize=8,
        )
        for col, layer in enumerate(layers):
            for row_i, (metric, label) in enumerate(
                (("ce_increase", "CE increase (nats)"), ("kl_div", "KL(clean ‖ spliced)"))
            ):
                ax = axes[row_i][col]
                for kind in KINDS:
                    points = sorted(
                        (s for s in summaries if s["layer"] == layer and s["kind"] == kind),
                        key=lambda s: s["l0"]["mean"],
                    )
                    if not points:
                        continue
                    # matched L0 puts both kinds at one x: nudge them apart to see both bars
                    nudge = 0.96 if kind == "transcoder" else 1.04
                    xs = [s["l0"]["mean"] * nudge for s in points]
                    ys = [s[metric]["mean"] for s in points]
                    err = [
                        [s[metric]["mean"] - s[metric]["low"] for s in points],
                        [s[metric]["high"] - s[metric]["mean"] for s in points],
                    ]
                    ax.errorbar(xs, ys, yerr=err, marker=KIND_MARKER[kind], capsize=3, label=kind)
                ax.set_xscale("log", base=2)
                ticks = sorted({s["k"] for s in summaries})
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.minorticks_off()
                ax.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
                ax.grid(True, which="both", alpha=0.3)
                if row_i == 0:
                    ax.set_title(f"layer {layer}")
                else:
                    ax.set_xlabel("L0 (= k)")
                if col == 0:
                    ax.set_ylabel(label)
                    ax.legend(fontsize=8)
    return path


def set_log_or_symlog_y(ax: Any, lows: list[float], means: list[float]) -> None:
    """Give `ax` a log y-axis, or a symmetric-log one (linear below the decade of the smallest
    positive mean) when an interval or a mean reaches zero or below, which a log axis would hide."""
    lowest = min((lo for lo in lows if not math.isnan(lo)), default=math.inf)
    if lowest > 0:
        ax.set_yscale("log")
        return
    positive = [m for m in means if m > 0]
    linthresh = 10.0 ** math.floor(math.log10(min(positive))) if positive else 1e-3
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhline(0.0, color="0.5", linewidth=0.6)
    ax.set_ylim(bottom=lowest - 0.5 * linthresh if lowest > -linthresh else None)


def plot_budget_curves(rows: list[dict[str, Any]], cfg: ConvergenceConfig, path: Path) -> Path:
    """Draw, per layer, the CE increase against training tokens for every configuration (mean
    over seeds with its 95 % t-interval, budgets every seed reached): how far from flat each is."""
    complete = complete_seed_means(rows, cfg)
    layers = sorted({r["layer"] for r in rows})
    with saved_figure(
        path, 1, len(layers), figsize=(3.4 * len(layers) + 0.6, 3.4), dpi=120, squeeze=False
    ) as (_, axes):
        for col, layer in enumerate(layers):
            ax = axes[0][col]
            lows, means = [], []
            for name, config_rows in iter_configs([r for r in rows if r["layer"] == layer]):
                budgets = sorted({b for (n, b) in complete if n == name})
                stats = [
                    mean_ci([r["ce_increase"] for r in config_rows if r["budget"] == b])
                    for b in budgets
                ]
                lows += [lo for _, _, lo, _ in stats]
                means += [m for m, _, _, _ in stats]
                kind = config_rows[0]["kind"]
                ax.errorbar(
                    budgets,
                    [m for m, _, _, _ in stats],
                    yerr=[[m - lo for m, _, lo, _ in stats], [hi - m for m, _, _, hi in stats]],
                    marker=KIND_MARKER[kind],
                    capsize=3,
                    label=f"{kind} k={config_rows[0]['k']}",
                )
            ax.set_xscale("log", base=2)
            set_log_or_symlog_y(ax, lows, means)
            ax.set_title(f"layer {layer}")
            ax.set_xlabel("training tokens")
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel("CE increase (nats)")
                ax.legend(fontsize=7)
    return path


def write_report(out: Path, rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> None:
    """Write `summary.json` (summaries and pairs), `table.md`, `frontier.png` and `budgets.png`
    into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "stopping_rule": (
            f"a configuration stops at the first budget where the seed-mean "
            f"{'CE increase (spliced − clean)' if cfg.criterion == 'ce_increase' else 'spliced CE'} "
            f"improved by less than {100 * cfg.tolerance:g} % of the previous budget's"
        ),
        "intervals": "95% Student-t interval of the mean over seeds",
        "summaries": summarise(rows, cfg),
        "pairs": matched_pairs(rows, cfg),
    }
    (out / "summary.json").write_text(json.dumps(record, indent=2))
    (out / "table.md").write_text(table_markdown(rows, cfg))
    plot_matched_frontier(rows, cfg, out / "frontier.png")
    plot_budget_curves(rows, cfg, out / "budgets.png")
