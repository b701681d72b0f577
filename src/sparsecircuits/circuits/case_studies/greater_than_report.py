"""What the greater-than case study writes: summary.json, a markdown report and three plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsecircuits.evaluation.plots import saved_figure


def write_results(summary: dict[str, Any], profiles: dict[str, dict[str, Any]], out: Path) -> None:
    """Write `out`/summary.json (NaN as null), the plots and `out`/report.md."""
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1))
    neurons = {int(k): v for k, v in summary["features_vs_neurons"].items()}
    _plot_features_vs_neurons(
        neurons, summary["features_vs_neurons_layer"], out / "features_vs_neurons.png"
    )
    _plot_top(summary["top_features"], summary["top_heads"], out / "top_attributions.png")
    _plot_year_profiles(profiles, out / "year_profiles.png")
    (out / "report.md").write_text(report_markdown(summary))


def report_markdown(summary: dict[str, Any]) -> str:
    """Return the markdown report of a study summary (it links the PNGs written beside it)."""
    sections = (
        _prob_diff_section,
        _attribution_section,
        _features_and_heads_section,
        _neurons_and_paths_section,
    )
    return "\n".join(line for section in sections for line in section(summary))


def _prob_diff_section(s: dict[str, Any]) -> list[str]:
    """The title and the probability-difference / ablation section (held-out, real model)."""
    cfg, ins = s["config"], s["in_sample"]
    return [
        "# Greater-than circuit with transcoders",
        "",
        f"Model `{s['model']}`, transcoders at layers {s['transcoder_layers']}, {s['n_prompts']} held-out prompts "
        f'(e.g. "{s["example_prompt"]}") split into {s["n_selection_prompts"]} selection and '
        f"{s['n_evaluation_prompts']} evaluation prompts with no text in both. Runtime {s['runtime_s']:.0f} s.",
        "",
        "Features and heads are chosen on the selection half; every effect below is measured on the "
        "evaluation half in the real model (transcoders spliced where an edit acts, their error terms "
        "fixed from the clean run; attention, norms and the other MLPs live). Brackets: 95 % "
        f"percentile bootstrap intervals over evaluation prompts ({cfg['bootstrap']} resamples).",
        "",
        "## Probability difference",
        "",
        f"* clean model: **{s['prob_diff_clean']:.4f}** {_ci(s['prob_diff_clean_ci'], '.4f')}",
        f"* all MLPs replaced by transcoders (no error terms): **{s['prob_diff_replacement']:.4f}** "
        f"{_ci(s['prob_diff_replacement_ci'], '.4f')}",
        f"* zeroing the {cfg['top_k']} features with the largest mean attribution on the selection half "
        f"removes **{s['top10_ablation_drop']:.1%}** {_ci(s['top10_ablation_drop_ci'])} of the clean PD",
        f"* {cfg['top_k']} random features at the same (layer, position) slots, active there in the selection "
        f"half: **{s['random10_ablation_drop']:.1%}** {_ci(s['random10_ablation_drop_ci'])} (mean of "
        f"{len(s['random10_drops'])} draws; {s['random10_at_least_top10']:.0%} of draws remove as much as "
        "the top features)",
        f"* any feature of those layers at those slots: {s['random10_uniform_ablation_drop']:.1%} "
        f"{_ci(s['random10_uniform_ablation_drop_ci'])}",
        f"* top minus random (paired over prompts): {s['top10_minus_random10_drop']:.1%} "
        f"{_ci(s['top10_minus_random10_drop_ci'])}",
        *_swapped_lines(s),
        "",
        "| ranking target | top features zeroed in every prompt |",
        "|---|---|",
        *[
            f"| {kind} | {v['same_features_every_prompt']:.1%} {_ci(v['same_features_every_prompt_ci'])} |"
            for kind, v in s["ablation_variants"]["top10_by_target"].items()
        ],
        "",
        f"In-sample, for comparison ({ins['n_prompts']} prompts both choosing and measuring, replacement "
        f"model with errors fixed): clean PD {ins['prob_diff_clean']:.4f}, top-{cfg['top_k']} removes "
        f"{ins['top10_ablation_drop']:.1%}, {cfg['n_random']} random active features per prompt "
        f"{ins['random10_ablation_drop']:.1%}.",
        "",
    ]


def _swapped_lines(s: dict[str, Any]) -> list[str]:
    """The second fold (halves swapped), if it ran."""
    fold = s.get("swapped_halves")
    if not fold:
        return []
    return [
        f"* halves swapped: top removes {fold['top10_ablation_drop']:.1%} "
        f"{_ci(fold['top10_ablation_drop_ci'])}, random at the same slots "
        f"{fold['random10_ablation_drop']:.1%} {_ci(fold['random10_ablation_drop_ci'])}",
    ]


def _attribution_section(s: dict[str, Any]) -> list[str]:
    """Attribution against intervention on the top nodes."""
    return [
        "## Attribution vs intervention (top nodes, each ablated on every prompt)",
        "",
        f"Attribution target: {s['target']}.",
        "",
        "Nodes chosen on the selection half; attributions and ablations (replacement model) on the "
        "evaluation half.",
        "",
        f"* frozen attention/norms/errors, linear features, same target: Pearson r = "
        f"{_fmt(s['attribution_vs_intervention']['pearson'])}, max relative error = "
        f"{s['attribution_vs_intervention']['max_rel_error']:.2e} "
        f"{_ci(s['attribution_vs_intervention']['max_rel_error_ci'], '.2e')}",
        f"* live model (attention, norms and features recomputed), same target: Pearson r = "
        f"{_fmt(s['attribution_vs_live']['pearson'])} {_ci(s['attribution_vs_live']['pearson_ci'], '.3f')}",
        f"* live model, true PD: Pearson r = {_fmt(s['attribution_vs_live_pd']['pearson'])} "
        f"{_ci(s['attribution_vs_live_pd']['pearson_ci'], '.3f')} (PD effects are in probability units "
        "and saturate: PD is near 1)",
        "",
        "| node | attribution | frozen effect | live effect | live PD effect |",
        "|---|---|---|---|---|",
        *[
            f"| {row['node']} | {row['attribution']:.4f} | {row['frozen_effect']:.4f} | "
            f"{row['live_effect']:.4f} | {row['live_pd_effect']:.4f} |"
            for row in s["node_checks"]
        ],
        "",
        "![top attributions](top_attributions.png)",
        "",
    ]


def _features_and_heads_section(s: dict[str, Any]) -> list[str]:
    """The top features (de-embeddings, logits, examples) and the top heads."""
    lines = ["## Top features", ""]
    for f in s["top_features"]:
        lines += [
            f"### {f['node']} (mean attribution {f['attribution']:.4f}, mean activation {f['mean_activation']:.3f})",
            "",
            f"* de-embedding (top tokens): {', '.join(repr(t) for t, _ in f['deembedding']['top'][:8])}",
            f"* output logits (top tokens): {', '.join(repr(t) for t, _ in f['logits']['top'][:8])}",
            f"* year-token logits correlate with YY order: r = {_fmt(f['year_logit_trend'])}",
            *[
                f"* held-out example ({ex['activation']:.2f}): `{ex['text']}`"
                for ex in f["examples"][:3]
            ],
            "",
        ]
    lines += ["![year profiles](year_profiles.png)", "", "## Top heads", ""]
    for h in s["top_heads"]:
        srcs = ", ".join(f"{t!r}@{p} ({v:.3f})" for p, t, v in h["top_sources"])
        lines.append(f"* {h['node']}: attribution {h['attribution']:.4f}; main sources {srcs}")
        for f in h["source_features"][:3]:
            lines.append(
                f"  * reads {f['node']} ({f['contribution']:.4f} directly to the target), "
                f"de-embedding {', '.join(repr(t) for t in f['deembedding'])}"
            )
    return lines


def _neurons_and_paths_section(s: dict[str, Any]) -> list[str]:
    """Features against neurons, and the path search of prompt 0."""
    fvn, check = s["features_vs_neurons"], s["graph_verification"]
    return [
        "",
        f"## Features vs neurons (layer {s['features_vs_neurons_layer']})",
        "",
        "Keep the top-k (by variance over the selection half) transcoder features or MLP neurons at the "
        "answer position, set the rest to their selection-half means (the transcoder's error removed "
        "there), both in the real model; fraction of clean PD kept on the evaluation half. Random: k "
        "random features active at that slot in the selection half, or k random neurons.",
        "",
        "| k | features | neurons | random features | random neurons |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {_kept(fvn[str(k)], 'features')} | {_kept(fvn[str(k)], 'neurons')} | "
            f"{_kept(fvn[str(k)], 'random_features')} | {_kept(fvn[str(k)], 'random_neurons')} |"
            for k in (1, 2, 4, 8, 16, 32)
            if str(k) in fvn
        ],
        "",
        "![features vs neurons](features_vs_neurons.png)",
        "",
        "## Path search (prompt 0)",
        "",
        f"Graph: `graph.json`, ![graph](graph.png). Top-node verification (exact frozen): max rel. error "
        f"{_fmt(check['exact']['max_rel_error'])}; path-sum vs ablation Pearson "
        f"{_fmt(check['graph']['pearson'])}; live Pearson {_fmt(check['live']['pearson'])}.",
        "",
        "```",
        *s["top_paths"],
        "```",
        "",
    ]


def _kept(row: dict[str, Any], key: str) -> str:
    """`value [low, high]` of one features-vs-neurons entry, or "-" when not measured."""
    if key not in row:
        return "-"
    return f"{row[key]:.3f} {_ci(row[f'{key}_ci'], '.3f')}"


def _ci(interval: list[float | None], spec: str = ".1%") -> str:
    """An interval as `[low, high]` in format `spec`."""
    low, high = interval
    if low is None or high is None or low != low or high != high:
        return "[n/a]"
    return f"[{low:{spec}}, {high:{spec}}]"


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _plot_features_vs_neurons(results: dict[int, dict[str, Any]], layer: int, path: Path) -> None:
    ks = sorted(results)
    with saved_figure(path, figsize=(6, 4), dpi=110) as (_, ax):
        features = [results[k]["features"] for k in ks]
        ax.plot(ks, features, marker="o", label=f"transcoder {layer} features")
        ax.plot(ks, [results[k]["neurons"] for k in ks], marker="s", label=f"MLP {layer} neurons")
        for arm, marker in (("features", "^"), ("neurons", "v")):
            rows = [(k, results[k]) for k in ks if f"random_{arm}" in results[k]]
            if rows:
                ax.plot(
                    [k for k, _ in rows],
                    [r[f"random_{arm}"] for _, r in rows],
                    marker=marker,
                    linestyle=":",
                    label=f"random {arm}",
                )
        for arm in ("features", "neurons"):
            if all(f"{arm}_ci" in results[k] for k in ks):
                low = [results[k][f"{arm}_ci"][0] for k in ks]
                high = [results[k][f"{arm}_ci"][1] for k in ks]
                ax.fill_between(ks, low, high, alpha=0.15)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel("k kept (rest mean-ablated at the answer position)")
        ax.set_ylabel("fraction of clean prob. diff. (held-out)")
        ax.set_title("greater-than: features vs neurons")
        ax.legend()


def _plot_top(features: list[dict[str, Any]], heads: list[dict[str, Any]], path: Path) -> None:
    labels = [f["node"] for f in features] + [h["node"] for h in heads]
    values = [f["attribution"] for f in features] + [h["attribution"] for h in heads]
    colors = ["tab:orange"] * len(features) + ["tab:green"] * len(heads)
    with saved_figure(path, figsize=(7, 0.3 * len(labels) + 1.5), dpi=110) as (_, ax):
        ax.barh(range(len(labels))[::-1], values, color=colors)
        ax.set_yticks(range(len(labels))[::-1])
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("mean attribution to the linearised prob. diff.")
        ax.set_title("top features (orange) and heads (green)")


def _plot_year_profiles(profiles: dict[str, dict[str, Any]], path: Path) -> None:
    items = list(profiles.items())[:3]
    size = (9, 2.4 * len(items))
    with saved_figure(path, len(items), 2, figsize=size, dpi=110, squeeze=False) as (_, axes):
        for row, (label, prof) in enumerate(items):
            axes[row][0].scatter(prof["yy"], prof["activation"], s=10)
            axes[row][0].set_title(f"{label}: activation vs start year YY", fontsize=8)
            axes[row][1].bar(range(100), prof["year_logits"], width=1.0)
            axes[row][1].set_title(f"{label}: direct logit effect on '00'..'99'", fontsize=8)


def _json_safe(value: Any) -> Any:
    """`value` with NaN floats replaced by None, so the JSON is standard."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
