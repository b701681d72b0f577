"""Cross-validated measurements of the greater-than case study (docs/internals.md).

The prompts are split into two disjoint halves (by distinct text). Features, heads, the
features-vs-neurons layer and its rankings are chosen on the selection half; every effect is
measured on the evaluation half in the real model (`circuits.real_model`: transcoders spliced
where an edit acts, errors fixed from the clean run, attention, norms and the other MLPs live),
with 95 % percentile bootstrap intervals over evaluation prompts. Random baselines draw features
at the same (layer, position) slots as the selected ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.attribution import Attribution, attribute
from sparsecircuits.circuits.edits import Edits, ErrorEdit, FeatureEdit
from sparsecircuits.circuits.nodes import FeatureNode, Node
from sparsecircuits.circuits.real_model import (
    CleanSplice,
    clean_splice,
    neuron_activations,
    neuron_logits,
    real_model_logits,
)
from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState
from sparsecircuits.circuits.verify import max_relative_error, pearson
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation.intervals import (
    bootstrap_indices,
    bootstrap_interval,
    percentile_interval,
    ratio_interval,
)
from sparsecircuits.tasks.common import TaskPrompts, logits_at_last
from sparsecircuits.tasks.greater_than import greater_than_prob_diff


def split_prompts(prompts: TaskPrompts, seed: int) -> tuple[list[int], list[int]]:
    """Return (selection, evaluation) prompt indices: the distinct texts shuffled (seeded) and
    halved, every copy of a text on the same side, so no prompt text is in both halves."""
    texts = list(dict.fromkeys(prompts.texts))
    if len(texts) < 4:
        raise SparseCircuitsError(
            f"cross-validation needs at least 4 distinct prompts, got {len(texts)}; raise --n-prompts"
        )
    random.Random(seed).shuffle(texts)
    selected = set(texts[: len(texts) // 2])
    selection = [i for i, t in enumerate(prompts.texts) if t in selected]
    evaluation = [i for i, t in enumerate(prompts.texts) if t not in selected]
    return selection, evaluation


def prob_diff(logits: Tensor, prompts: TaskPrompts) -> Tensor:
    """Per-prompt probability difference `[n]` from logits `[n, p, vocab]`."""
    assert prompts.yy is not None and prompts.year_ids is not None
    last = logits_at_last(logits, prompts.last_pos.to(logits.device))
    return greater_than_prob_diff(last, prompts.yy.to(logits.device), prompts.year_ids).cpu()


@dataclass
class EvalHalf:
    """The evaluation prompts with their clean run: `state` (replacement model), `clean` (real
    model, every transcoder layer recorded), per-prompt clean PD `pd_clean [n]` and the bootstrap
    resamples `boot [n_boot, n]` shared by every interval (paired comparisons)."""

    prompts: TaskPrompts
    state: ReplacementState
    clean: CleanSplice
    pd_clean: Tensor
    boot: Tensor

    def pd_with(self, model: ReplacementModel, edits: Edits) -> Tensor:
        """Per-prompt PD `[n]` in the real model with `edits`."""
        logits = real_model_logits(model, self.prompts.input_ids, edits, clean=self.clean)
        return prob_diff(logits, self.prompts)

    def drop(self, pd: Tensor) -> tuple[float, list[float]]:
        """Fraction of clean PD removed, `1 - mean(pd) / mean(pd_clean)`, and its interval."""
        kept, (low, high) = self.kept(pd)
        return 1 - kept, [1 - high, 1 - low]

    def kept(self, pd: Tensor) -> tuple[float, list[float]]:
        """Fraction of clean PD kept, `mean(pd) / mean(pd_clean)`, and its interval."""
        return float(pd.mean() / self.pd_clean.mean()), ratio_interval(pd, self.pd_clean, self.boot)


def eval_half(model: ReplacementModel, prompts: TaskPrompts, n_boot: int, seed: int) -> EvalHalf:
    """Run the evaluation prompts once (both models) and draw the bootstrap resamples."""
    ids = prompts.input_ids.to(model.device)
    state = model.run(ids)
    clean = clean_splice(model, ids, model.feature_layers)
    pd_clean = prob_diff(model.adapter.forward(ids), prompts)
    return EvalHalf(prompts, state, clean, pd_clean, bootstrap_indices(len(prompts), n_boot, seed))


def mean_with_ci(values: Tensor, half: EvalHalf) -> tuple[float, list[float]]:
    """Mean of per-prompt `values [n]` and its bootstrap interval."""
    return float(values.mean()), percentile_interval(values.double()[half.boot].mean(1))


# ------------------------------------------------------------------ random slot baselines


def slot_candidates(
    state: ReplacementState, nodes: Sequence[FeatureNode], active: bool
) -> dict[tuple[int, int], list[int]]:
    """Per (layer, position) slot of `nodes`: the features a baseline may draw there, those active
    at that slot in some prompt of `state` (`active`) or all of the layer's, minus the selected."""
    candidates: dict[tuple[int, int], list[int]] = {}
    for layer, pos in dict.fromkeys((n.layer, n.pos) for n in nodes):
        acts = state.feature_acts[layer][:, pos]  # [n, d_sae]
        pool = acts.ne(0).any(0).nonzero().flatten().tolist() if active else range(acts.shape[-1])
        chosen = {n.feature for n in nodes if (n.layer, n.pos) == (layer, pos)}
        candidates[(layer, pos)] = [f for f in pool if f not in chosen]
    return candidates


def draw_at_slots(
    nodes: Sequence[FeatureNode], candidates: dict[tuple[int, int], list[int]], rng: random.Random
) -> list[FeatureNode]:
    """One random feature per node at the node's slot (distinct within a slot), or fewer where a
    slot has fewer candidates."""
    drawn: list[FeatureNode] = []
    for (layer, pos), pool in candidates.items():
        need = sum(1 for n in nodes if (n.layer, n.pos) == (layer, pos))
        drawn += [FeatureNode(layer, pos, f) for f in rng.sample(pool, min(need, len(pool)))]
    return drawn


def feature_edits(nodes: Sequence[FeatureNode]) -> Edits:
    """Zero each node's feature at its position in every prompt."""
    return Edits(features=[FeatureEdit(n.layer, n.pos, n.feature) for n in nodes])


def baseline_drops(
    model: ReplacementModel, half: EvalHalf, draws: list[list[FeatureNode]], seed: int = 0
) -> dict[str, Any]:
    """Mean PD drop over random feature sets `draws` in the real model, with a bootstrap interval
    over evaluation prompts and draws jointly, and each draw's drop. Also returns the per-draw
    per-prompt PDs `pds [draws, n]` for paired comparisons."""
    pds = torch.stack([half.pd_with(model, feature_edits(d)) for d in draws])  # [draws, n]
    drops = 1 - pds.mean(1) / half.pd_clean.mean()
    generator = torch.Generator().manual_seed(seed)  # which draws each resample takes
    pick = torch.randint(0, len(draws), (len(half.boot), len(draws)), generator=generator)
    boot = torch.stack(
        [
            (1 - pds[d][:, rows].mean(1) / half.pd_clean[rows].mean()).mean()
            for rows, d in zip(half.boot, pick, strict=True)
        ]
    )
    return {
        "drop": float(drops.mean()),
        "drop_ci": percentile_interval(boot),
        "drops": drops.tolist(),
        "pds": pds,
    }


def slot_baseline(
    model: ReplacementModel,
    half: EvalHalf,
    selection: ReplacementState,
    nodes: Sequence[FeatureNode],
    n_draws: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Random baselines at the selected nodes' slots: features active there in the selection half
    ("active") and any feature of the layer ("uniform"), `n_draws` sets each (`baseline_drops`)."""
    out: dict[str, dict[str, Any]] = {}
    for offset, kind in enumerate(("active", "uniform")):
        candidates = slot_candidates(selection, nodes, active=kind == "active")
        rng = random.Random(seed + offset)
        draws = [draw_at_slots(nodes, candidates, rng) for _ in range(n_draws)]
        out[kind] = baseline_drops(model, half, draws, seed)
    return out


def paired_difference(half: EvalHalf, top: Tensor, random_pds: Tensor) -> tuple[float, list[float]]:
    """Top-minus-random drop (`top [n]`, `random_pds [draws, n]` per-prompt PDs) and its interval
    over the same prompt resamples (random draws averaged)."""

    def diff(rows: Tensor) -> Tensor:
        clean = half.pd_clean[rows].mean()
        return random_pds[:, rows].mean() / clean - top[rows].mean() / clean

    return float(diff(torch.arange(len(top)))), bootstrap_interval(diff, half.boot)


# ------------------------------------------------------------------ attribution vs intervention


def node_effects(
    model: ReplacementModel, half: EvalHalf, attr: Attribution, nodes: Sequence[Node]
) -> dict[str, Tensor]:
    """Per node and evaluation prompt (`[nodes, n]`): attribution, and the target's change under the
    node's ablation in the replacement model, frozen (linear features; exact) and live, and the
    live change of the PD."""
    target, state = attr.target, half.state
    clean = target.evaluate(state)
    rows = range(len(target))
    keys = ("attribution", "frozen_effect", "live_effect", "live_pd_effect")
    values: dict[str, list[Tensor]] = {key: [] for key in keys}
    for node in nodes:
        values["attribution"].append(torch.tensor([attr.node_value(node, r) for r in rows]))
        frozen = model.run_with(state, node.ablation(), freeze=True, features="linear")
        live = model.run_with(state, node.ablation(), freeze=False)
        values["frozen_effect"].append((clean - target.evaluate(frozen)).cpu())
        values["live_effect"].append((clean - target.evaluate(live)).cpu())
        values["live_pd_effect"].append(half.pd_clean - prob_diff(live.logits, half.prompts))
    return {key: torch.stack(v).double() for key, v in values.items()}


def agreement_with_ci(
    effects: dict[str, Tensor], key: str, boot: Tensor
) -> dict[str, float | list[float]]:
    """Pearson r and max relative error between mean attribution and mean `key` effect over
    nodes, each with its interval over prompt resamples."""

    def stats(rows: Tensor) -> tuple[float, float]:
        a = effects["attribution"][:, rows].mean(1).tolist()
        e = effects[key][:, rows].mean(1).tolist()
        return pearson(a, e), max_relative_error(a, e)

    r, err = stats(torch.arange(effects["attribution"].shape[1]))
    resampled = torch.tensor([stats(rows) for rows in boot], dtype=torch.float64)
    return {
        "pearson": r,
        "pearson_ci": percentile_interval(resampled[:, 0]),
        "max_rel_error": err,
        "max_rel_error_ci": percentile_interval(resampled[:, 1]),
    }


def cross_validated_checks(
    model: ReplacementModel, half: EvalHalf, target: Any, nodes: Sequence[Node]
) -> dict[str, Any]:
    """Attribution vs intervention on the evaluation half for nodes chosen on the selection half:
    `attribution_vs_intervention` (frozen), `attribution_vs_live` and `attribution_vs_live_pd`,
    with intervals, and the per-node means `node_checks`."""
    attr = attribute(model, half.state, target, mode="linear", patterns=True, batch_size=16)
    effects = node_effects(model, half, attr, nodes)
    rows = [
        {"node": node.label, **{k: float(v[i].mean()) for k, v in effects.items()}}
        for i, node in enumerate(nodes)
    ]
    return {
        "attribution_vs_intervention": agreement_with_ci(effects, "frozen_effect", half.boot),
        "attribution_vs_live": agreement_with_ci(effects, "live_effect", half.boot),
        "attribution_vs_live_pd": agreement_with_ci(effects, "live_pd_effect", half.boot),
        "node_checks": rows,
    }


# ------------------------------------------------------------------ features vs neurons


def keep_top(values: Tensor, means: Tensor, keep: Tensor, pos: int) -> Tensor:
    """`values [b, p, d]` with, at position `pos`, the units outside `keep` set to `means [d]`."""
    values = values.clone()
    mask = torch.zeros(values.shape[-1], dtype=torch.bool, device=values.device)
    mask[keep.to(values.device)] = True
    values[:, pos] = torch.where(mask, values[:, pos], means.to(values))
    return values


@dataclass
class UnitStats:
    """Selection-half statistics of one kind of unit at the answer position: `means [d]`, `order`
    (units by decreasing variance) and the `pool` random keeps draw from."""

    means: Tensor
    order: Tensor
    pool: Tensor


def unit_stats(acts: Tensor, active_only: bool) -> UnitStats:
    """`UnitStats` of activations `[n, d]`; the pool is the units nonzero in some prompt when
    `active_only`, else all."""
    pool = acts.ne(0).any(0).nonzero().flatten() if active_only else torch.arange(acts.shape[-1])
    return UnitStats(acts.mean(0), torch.argsort(acts.var(0), descending=True), pool)


def feature_keep_pd(
    model: ReplacementModel, half: EvalHalf, layer: int, stats: UnitStats, keep: Tensor
) -> Tensor:
    """Per-prompt PD `[n]` with only features `keep` of `layer` live at the answer position (the
    rest at their selection-half mean) and that layer's error removed there: the MLP output at the
    answer position is the transcoder's alone. Real model, everything else live."""
    last = int(half.prompts.last_pos[0])
    edits = Edits(
        feature_fns={layer: lambda a: keep_top(a, stats.means, keep, last)},
        errors=[ErrorEdit(layer, pos=last)],
    )
    return half.pd_with(model, edits)


def neuron_keep_pd(
    model: ReplacementModel, half: EvalHalf, layer: int, stats: UnitStats, keep: Tensor
) -> Tensor:
    """Per-prompt PD `[n]` with only neurons `keep` of MLP `layer` live at the answer position (the
    rest at their selection-half mean). Real model, everything else live."""
    last = int(half.prompts.last_pos[0])
    fn: Callable[[Tensor], Tensor] = lambda h: keep_top(h, stats.means, keep, last)  # noqa: E731
    logits = neuron_logits(model.adapter, half.prompts.input_ids, {layer: fn})
    return prob_diff(logits, half.prompts)


def random_keeps(
    stats: UnitStats, k: int, n_draws: int, generator: torch.Generator
) -> list[Tensor]:
    """`n_draws` random sets of `k` units from `stats.pool` (all of it when smaller)."""
    size = min(k, len(stats.pool))
    return [
        stats.pool[torch.randperm(len(stats.pool), generator=generator)[:size]]
        for _ in range(n_draws)
    ]


def features_vs_neurons_cv(
    model: ReplacementModel,
    half: EvalHalf,
    selection: tuple[ReplacementState, TaskPrompts],
    layer: int,
    max_k: int,
    n_draws: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Fraction of clean PD kept on the evaluation half, k = 1..max_k, keeping the top-k (by
    variance on the selection half) features or neurons of `layer` at the answer position, the rest
    at their selection-half means, both in the real model; and, at powers of two, the same for
    `n_draws` random sets (features active at that slot in the selection half, any neuron)."""
    state, prompts = selection
    last = int(prompts.last_pos[0])
    arms = {
        "features": (unit_stats(state.feature_acts[layer][:, last].cpu(), True), feature_keep_pd),
        "neurons": (
            unit_stats(
                neuron_activations(model.adapter, prompts.input_ids, layer)[:, last].float().cpu(),
                False,
            ),
            neuron_keep_pd,
        ),
    }
    generator = torch.Generator().manual_seed(seed)
    results: dict[str, dict[str, Any]] = {}
    for k in range(1, max_k + 1):
        row: dict[str, Any] = {}
        for arm, (stats, measure) in arms.items():
            row[arm], row[f"{arm}_ci"] = half.kept(
                measure(model, half, layer, stats, stats.order[:k])
            )
            if k & (k - 1) == 0 and n_draws > 0:
                pds = torch.stack(
                    [
                        measure(model, half, layer, stats, keep)
                        for keep in random_keeps(stats, k, n_draws, generator)
                    ]
                )
                row[f"random_{arm}"] = float(pds.mean() / half.pd_clean.mean())
                row[f"random_{arm}_ci"] = ratio_interval(pds.mean(0), half.pd_clean, half.boot)
        results[str(k)] = row
    return results
