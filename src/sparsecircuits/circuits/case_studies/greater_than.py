"""Greater-than case study (Dunefsky et al. 2024 §5.2; Hanna et al. 2023) on a model with transcoders.

`run_greater_than` runs the steps (one function each: PD, attribution, ablations, attribution vs
intervention, feature and head descriptions, features vs neurons, path search) and writes the
summary, report and plots (docs/internals.md). Choices are made on one half of the prompts and
effects measured on the other in the real model (`greater_than_cv`); `_in_sample` repeats the
study with both on all prompts in the replacement model, for comparison."""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sparsecircuits.circuits import deembed
from sparsecircuits.circuits.attribution import (
    Attribution,
    ResidVector,
    Target,
    attribute,
    decompose,
    metric_gradient_target,
    pull_back_head,
)
from sparsecircuits.circuits.case_studies.greater_than_cv import (
    EvalHalf,
    cross_validated_checks,
    eval_half,
    feature_edits,
    features_vs_neurons_cv,
    keep_top,
    mean_with_ci,
    paired_difference,
    prob_diff,
    slot_baseline,
    split_prompts,
)
from sparsecircuits.circuits.case_studies.greater_than_report import write_results
from sparsecircuits.circuits.nodes import FeatureNode, HeadNode, Node
from sparsecircuits.circuits.paths import (
    graph_tokens,
    path_strings,
    paths_to_graph,
    plot_graph,
    search_paths,
)
from sparsecircuits.circuits.real_model import neuron_activations, neuron_logits
from sparsecircuits.circuits.replacement import (
    Edits,
    ErrorEdit,
    FeatureEdit,
    ReplacementModel,
    ReplacementState,
)
from sparsecircuits.circuits.verify import max_relative_error, pearson, verify_graph
from sparsecircuits.dictionaries import Dictionary, TranscoderSet
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter
from sparsecircuits.models.architectures import pull_back_norm
from sparsecircuits.tasks.common import TaskPrompts, logits_at_last
from sparsecircuits.tasks.greater_than import greater_than_prob_diff, make_greater_than_prompts


@dataclass
class GreaterThanConfig:
    """Settings of the greater-than case study (`n_prompts` are split into a selection and an
    evaluation half; `bootstrap` resamples of the evaluation prompts give every interval)."""

    model: str = "embedded"
    transcoders: str = "embedded"
    n_prompts: int = 64
    seed: int = 0
    top_k: int = 10
    n_random: int = 10
    # random feature sets per baseline (cross-validated: per slot kind; in-sample: per variant)
    random_draws: int = 100
    # random sets per k (powers of two) in the cross-validated features-vs-neurons baseline
    neuron_random_draws: int = 10
    bootstrap: int = 1000
    in_sample_random_draws: int = 3
    swap_halves: bool = True
    max_k: int = 32
    corpus_contexts: int = 48
    context_size: int = 64
    examples_per_feature: int = 5
    path_iters: int = 3
    path_branches: int = 12
    # What attributions rank: "logit_diff" (mean logit of later minus earlier years; linear, so it
    # stays informative when the model is confident) or "prob_diff" (the PD's gradient direction).
    target: str = "logit_diff"
    device: str | None = None


def greater_than_target(
    model: ReplacementModel,
    state: ReplacementState,
    yy: Tensor,
    year_ids: Tensor,
    last_pos: Tensor,
    kind: Literal["prob_diff", "logit_diff"] = "prob_diff",
) -> Target:
    """Target for greater-than at each prompt's last token `last_pos [n]`, from the start years
    `yy [n]` and the ids of "00".."99" `year_ids [100]`: "prob_diff", the probability difference's
    gradient direction, or "logit_diff", mean logit of the years after YY minus those up to YY
    (linear in the logits, so it does not saturate when the model is confident)."""
    yy = yy.to(model.device)
    years = torch.arange(100, device=model.device)

    def prob_diff(logits: Tensor, rows: Tensor) -> Tensor:
        return greater_than_prob_diff(logits, yy[rows], year_ids)

    def logit_diff(logits: Tensor, rows: Tensor) -> Tensor:
        year_logits = logits[:, year_ids.to(logits.device)]
        later = (years[None, :] > yy[rows][:, None]).to(logits.dtype)
        earlier = 1 - later
        return (year_logits * later).sum(-1) / later.sum(-1).clamp_min(1) - (
            year_logits * earlier
        ).sum(-1) / earlier.sum(-1).clamp_min(1)

    metrics = {
        "prob_diff": (prob_diff, "greater-than prob. diff. (linearised)"),
        "logit_diff": (logit_diff, "greater-than mean logit diff. (later - earlier years)"),
    }
    if kind not in metrics:
        raise SparseCircuitsError(
            f'greater-than target kind must be "prob_diff" or "logit_diff", got {kind!r}'
        )
    return metric_gradient_target(model, state, *metrics[kind], last_pos)


def _prompts(adapter: ModelAdapter, n: int, seed: int) -> TaskPrompts:
    """Held-out prompts, keeping only the most common length so positions align across prompts."""
    prompts = make_greater_than_prompts(adapter.tokenizer, n, seed=seed, split="heldout")
    lengths = prompts.last_pos.tolist()
    common = Counter(lengths).most_common(1)[0][0]
    return prompts.take(torch.tensor([i for i, p in enumerate(lengths) if p == common]))


def _pd(logits: Tensor, prompts: TaskPrompts) -> Tensor:
    assert prompts.yy is not None and prompts.year_ids is not None
    return greater_than_prob_diff(
        logits_at_last(logits, prompts.last_pos), prompts.yy, prompts.year_ids
    )


def _mean_feature_scores(attr: Attribution) -> dict[int, Tensor]:
    return {layer: t.mean(0) for layer, t in attr.features.items()}


def _top_features(scores: dict[int, Tensor], k: int) -> list[tuple[FeatureNode, float]]:
    ranked: list[tuple[FeatureNode, float]] = []
    for layer, t in scores.items():
        flat = t.flatten()
        top = torch.topk(flat, min(k, flat.numel()))
        d_sae = t.shape[-1]
        ranked += [
            (FeatureNode(layer, int(i) // d_sae, int(i) % d_sae), float(v))
            for v, i in zip(top.values, top.indices, strict=False)
        ]
    return sorted(ranked, key=lambda x: -x[1])[:k]


def _token(adapter: ModelAdapter, token_id: int) -> str:
    return adapter.tokenizer.decode([int(token_id)])


def _active_features(state: ReplacementState, prompt: int | None) -> list[tuple[int, int, int]]:
    """`(layer, pos, feature)` active in `prompt` (None: in any prompt), BOS excluded."""
    return [
        (layer, p + 1, f)
        for layer, acts in state.feature_acts.items()
        for p, f in (acts[:, 1:] if prompt is None else acts[prompt, 1:][None])
        .ne(0)
        .any(0)
        .nonzero()
        .tolist()
    ]


def _per_prompt_top_edits(attr: Attribution, k: int) -> Edits:
    """Zero, in each prompt, that prompt's own `k` features with the largest attribution."""
    edits = [
        FeatureEdit(node.layer, node.pos, node.feature, batch=int(attr.target.batch[row]))
        for row in range(len(attr.target))
        for node, _ in attr.top_features(k, row=row, by="value")
    ]
    return Edits(features=edits)


def _per_prompt_random_edits(state: ReplacementState, k: int, rng: random.Random) -> Edits:
    """Zero, in each prompt, `k` of its active features (BOS excluded) drawn uniformly."""
    edits: list[FeatureEdit] = []
    for prompt in range(state.n_prompts):
        candidates = _active_features(state, prompt)
        for layer, pos, feature in rng.sample(candidates, min(k, len(candidates))):
            edits.append(FeatureEdit(layer, pos, feature, batch=prompt))
    return Edits(features=edits)


def _node_checks(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    target_attr: Attribution,
    nodes: Sequence[Node],
) -> dict[str, Any]:
    """Per node, ablated on every prompt: mean attribution; its effect on the target with attention,
    norms and errors frozen and features linear (exact); its effect on the target and on the true
    PD in the live model; and how well attributions predict each effect (Pearson r, max relative
    error). Returns the study's summary entries "attribution_vs_intervention" (frozen),
    "attribution_vs_live", "attribution_vs_live_pd" and "node_checks" (the rows)."""
    target = target_attr.target
    clean_target = target.evaluate(state)
    pd_clean = _pd(state.logits, prompts)
    rows: list[dict[str, Any]] = []
    for node in nodes:
        attribution = sum(target_attr.node_value(node, r) for r in range(len(target))) / len(target)
        edits = node.ablation()
        frozen = target.evaluate(model.run_with(state, edits, freeze=True, features="linear"))
        live = model.run_with(state, edits, freeze=False)
        rows.append(
            {
                "node": node.label,
                "attribution": attribution,
                "frozen_effect": float((clean_target - frozen).mean()),
                "live_effect": float((clean_target - target.evaluate(live)).mean()),
                "live_pd_effect": float((pd_clean - _pd(live.logits, prompts)).mean()),
            }
        )
    a = [float(r["attribution"]) for r in rows]

    def compare(key: str) -> dict[str, float]:
        effects = [float(r[key]) for r in rows]
        return {"pearson": pearson(a, effects), "max_rel_error": max_relative_error(a, effects)}

    return {
        "attribution_vs_intervention": compare("frozen_effect"),
        "attribution_vs_live": compare("live_effect"),
        "attribution_vs_live_pd": compare("live_pd_effect"),
        "node_checks": rows,
    }


def features_vs_neurons(
    model: ReplacementModel, state: ReplacementState, prompts: TaskPrompts, layer: int, max_k: int
) -> dict[int, dict[str, float]]:
    """Kept fraction of clean PD, for k = 1..max_k, when only the top-k features / neurons of `layer`
    (by variance over prompts at the answer position) keep their values and the rest their mean.
    Features replace the layer's MLP there (its error removed); downstream is recomputed (live)."""
    last = int(prompts.last_pos[0])
    pd_clean = float(_pd(state.logits, prompts).mean())
    acts = state.feature_acts[layer][:, last]
    f_mean, f_order = acts.mean(0), torch.argsort(acts.var(0), descending=True)
    neurons = neuron_activations(model.adapter, prompts.input_ids, layer)[:, last].float()
    n_mean, n_order = neurons.mean(0), torch.argsort(neurons.var(0), descending=True)
    results: dict[int, dict[str, float]] = {}
    for k in range(1, max_k + 1):

        def keep_features(a: Tensor, keep: Tensor = f_order[:k]) -> Tensor:
            return keep_top(a, f_mean, keep, last)

        def keep_neurons(hidden: Tensor, keep: Tensor = n_order[:k]) -> Tensor:
            return keep_top(hidden, n_mean, keep, last)

        edits = Edits(feature_fns={layer: keep_features}, errors=[ErrorEdit(layer, pos=last)])
        pd_f = float(_pd(model.forward_with(state, edits, freeze=False), prompts).mean())
        logits = neuron_logits(model.adapter, prompts.input_ids, {layer: keep_neurons})
        pd_n = float(_pd(logits, prompts).mean())
        results[k] = {"features": pd_f / pd_clean, "neurons": pd_n / pd_clean}
    return results


@torch.no_grad()
def top_activating_examples(
    model: ReplacementModel,
    nodes: list[FeatureNode],
    contexts: int,
    context_size: int,
    per_feature: int,
    batch: int = 16,
) -> dict[str, list[dict[str, Any]]]:
    """Top activating held-out corpus windows for each feature (one pass over `contexts` contexts)."""
    from sparsecircuits.data.sources import EmbeddedSource
    from sparsecircuits.data.tokenize import pack_tokens

    adapter = model.adapter
    contexts_ids = []
    for ids in pack_tokens(
        EmbeddedSource().iter_texts(),
        adapter.tokenizer,
        context_size,
        max_context=adapter.max_context,
    ):
        contexts_ids.append(ids)
        if len(contexts_ids) >= contexts:
            break
    all_ids = torch.stack(contexts_ids).to(model.device)
    acts: dict[str, list[Tensor]] = {node.label: [] for node in nodes}
    for start in range(0, len(all_ids), batch):
        state = model.run(all_ids[start : start + batch])
        for node in nodes:
            acts[node.label].append(state.feature_acts[node.layer][:, :, node.feature].cpu())
    out: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        values = torch.cat(acts[node.label])  # [contexts, pos]
        values[:, 0] = 0  # BOS
        top = torch.topk(values.flatten(), min(per_feature, values.numel()))
        rows = []
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=False):
            if v <= 0:
                break
            c, p = divmod(i, values.shape[1])
            left = adapter.tokenizer.decode(all_ids[c, max(1, p - 10) : p].tolist())
            tok = adapter.tokenizer.decode([int(all_ids[c, p])])
            right = adapter.tokenizer.decode(all_ids[c, p + 1 : p + 3].tolist())
            rows.append({"activation": round(v, 4), "text": f"{left}[[{tok}]]{right}"})
        out[node.label] = rows
    return out


def _head_source_features(
    model: ReplacementModel,
    state: ReplacementState,
    target_vec: ResidVector,
    head: HeadNode,
    src: int,
    k: int = 5,
) -> list[dict[str, Any]]:
    """Transcoder features at `src` that drive the target through `head` directly (paper Eq. 8
    composed with Eq. 7), mean over prompts, with their top de-embedding tokens."""
    pulled = pull_back_head(model, state, target_vec, head.layer, head.head, src)
    dec = decompose(model, state, pulled)
    ranked = _top_features({layer: t.mean(0)[None] for layer, t in dec.features.items()}, k)
    return [
        {
            "node": FeatureNode(node.layer, src, node.feature).label,
            "contribution": value,
            "deembedding": [
                t for t, _ in deembed.deembedding(model, node.layer, node.feature, k=5).top
            ],
        }
        for node, value in ranked
    ]


@dataclass
class _Attributions:
    """Step 2: the target's attribution, mean feature scores and the top features and heads."""

    attribution: Attribution  # .target: the configured target
    scores: dict[int, Tensor]  # layer -> [pos, d_sae], mean over prompts
    top_features: list[tuple[FeatureNode, float]]
    top_heads: list[tuple[HeadNode, float]]

    @property
    def nodes(self) -> list[Node]:
        """The top features, then the top heads."""
        nodes: list[Node] = [n for n, _ in self.top_features]
        return nodes + [h for h, _ in self.top_heads]


def _measure_prob_diff(
    model: ReplacementModel, state: ReplacementState, prompts: TaskPrompts
) -> dict[str, float]:
    """Step 1: PD of the model, and of the replacement with every transcoder's error dropped."""
    clean = float(_pd(model.adapter.forward(prompts.input_ids), prompts).mean())
    if clean <= 0.05:
        raise SparseCircuitsError(
            f"the model barely does greater-than (PD {clean:.3f}); use a model that solves the task"
        )
    edits = Edits(drop_errors=set(model.feature_layers))
    replacement = float(_pd(model.forward_with(state, edits, freeze=False), prompts).mean())
    return {"prob_diff_clean": clean, "prob_diff_replacement": replacement}


def _gt_target(
    model: ReplacementModel, state: ReplacementState, prompts: TaskPrompts, kind: str
) -> Target:
    assert prompts.yy is not None and prompts.year_ids is not None
    return greater_than_target(
        model,
        state,
        prompts.yy,
        prompts.year_ids,
        prompts.last_pos,
        kind=kind,  # type: ignore[arg-type]
    )


def _attribute(
    model: ReplacementModel, state: ReplacementState, prompts: TaskPrompts, cfg: GreaterThanConfig
) -> _Attributions:
    """Step 2: attribute the configured target ("linear" features), mean over prompts; the
    `cfg.top_k` features with the largest mean attribution and the 5 heads with the largest |mean|."""
    target = _gt_target(model, state, prompts, cfg.target)
    attr = attribute(model, state, target, mode="linear", batch_size=16)
    scores = _mean_feature_scores(attr)
    heads = [
        (HeadNode(layer, h), float(v))
        for layer, t in attr.heads().items()  # [n, h]
        for h, v in enumerate(t.mean(0))
    ]
    top_heads = sorted(heads, key=lambda x: -abs(x[1]))[:5]
    return _Attributions(attr, scores, _top_features(scores, cfg.top_k), top_heads)


def _by_target(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    cfg: GreaterThanConfig,
    attr: Attribution,
) -> dict[str, Attribution]:
    """Per ranking target, the configured one first: its attribution, `attr` for the configured
    target and a fresh one ("linear" features, no patterns) for the others."""
    return {
        kind: attr
        if kind == cfg.target
        else attribute(
            model,
            state,
            _gt_target(model, state, prompts, kind),
            mode="linear",
            patterns=False,
            batch_size=16,
        )
        for kind in dict.fromkeys([cfg.target, "prob_diff", "logit_diff"])
    }


def _ablate(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    cfg: GreaterThanConfig,
    attr: Attribution,
    pd_clean: float,
) -> dict[str, Any]:
    """Step 3: fraction of clean PD removed by zeroing features in the live model: the top-k by
    mean attribution in every prompt vs k random active features per prompt, and per ranking target
    its top-k in every prompt and each prompt's own top-k."""
    rng = random.Random(cfg.seed)

    def drop(edits: Edits) -> float:
        pd = float(_pd(model.forward_with(state, edits, freeze=False), prompts).mean())
        return (pd_clean - pd) / pd_clean

    random_drops = [
        drop(_per_prompt_random_edits(state, cfg.n_random, rng)) for _ in range(cfg.random_draws)
    ]
    candidates = _active_features(state, None)
    if len(candidates) < cfg.n_random:
        raise SparseCircuitsError(
            f"only {len(candidates)} active features on these prompts; need {cfg.n_random}"
        )
    global_random = [
        drop(feature_edits([FeatureNode(*c) for c in rng.sample(candidates, cfg.n_random)]))
        for _ in range(cfg.random_draws)
    ]
    variants: dict[str, dict[str, float]] = {}
    for kind, kind_attr in _by_target(model, state, prompts, cfg, attr).items():
        kind_top = [n for n, _ in _top_features(_mean_feature_scores(kind_attr), cfg.top_k)]
        variants[kind] = {
            "same_features_every_prompt": drop(feature_edits(kind_top)),
            "each_prompts_own_top": drop(_per_prompt_top_edits(kind_attr, cfg.top_k)),
        }
    return {
        "top10_ablation_drop": variants[cfg.target]["same_features_every_prompt"],
        "random10_ablation_drop": sum(random_drops) / len(random_drops),
        "random10_drops": random_drops,
        "ablation_variants": {
            "top10_by_target": variants,
            "random10_active_somewhere_every_prompt": sum(global_random) / len(global_random),
        },
    }


def _describe_features(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    cfg: GreaterThanConfig,
    top: list[tuple[FeatureNode, float]],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Step 5 (features): summary rows of the top features, and their profiles by node label:
    activation against the start year YY, direct logit effect on the year tokens."""
    assert prompts.yy is not None and prompts.year_ids is not None
    examples = top_activating_examples(
        model, [n for n, _ in top], cfg.corpus_contexts, cfg.context_size, cfg.examples_per_feature
    )
    rows, profiles = [], {}
    for node, value in top:
        acts = state.feature_acts[node.layer][:, node.pos, node.feature]
        logits = deembed.feature_logits(model, node.layer, node.feature, k=10)
        year_logits = logits.scores[prompts.year_ids.to(model.device)].tolist()
        profiles[node.label] = {
            "yy": prompts.yy.tolist(),
            "activation": acts.tolist(),
            "year_logits": year_logits,
        }
        trend = pearson(list(range(100)), year_logits)
        rows.append(
            {
                "node": node.label,
                "layer": node.layer,
                "pos": node.pos,
                "feature": node.feature,
                "token": _token(model.adapter, int(prompts.input_ids[0, node.pos])),
                "attribution": value,
                "mean_activation": float(acts.mean()),
                "deembedding": deembed.deembedding(model, node.layer, node.feature, k=10).to_dict(),
                "logits": logits.to_dict(),
                "year_logit_trend": None if trend != trend else trend,
                "examples": examples.get(node.label, []),
            }
        )
    return rows, profiles


def _describe_heads(
    model: ReplacementModel, state: ReplacementState, prompts: TaskPrompts, found: _Attributions
) -> list[dict[str, Any]]:
    """Step 5 (heads): summary rows of the top heads (main sources, OV de-embedding, source
    features)."""
    # the PD direction in the final residual stream (final-norm gain folded, scale left out)
    target = found.attribution.target
    assert target.direction is not None
    one = torch.ones(1, dtype=model.dtype, device=model.device)
    pd_direction = pull_back_norm(target.direction.mean(0), model.ln_final, one)
    target_vec = target.resid_vector(model, state)
    rows = []
    for head_node, value in found.top_heads:
        per_src = found.attribution.patterns[head_node.layer][:, head_node.head].sum(1).mean(0)
        srcs = torch.topk(per_src, min(3, per_src.numel()))  # over source positions
        rows.append(
            {
                "node": head_node.label,
                "attribution": value,
                "top_sources": [
                    (int(p), _token(model.adapter, int(prompts.input_ids[0, int(p)])), float(v))
                    for v, p in zip(srcs.values, srcs.indices, strict=False)
                ],
                "ov_deembedding": deembed.head_deembedding(
                    model, head_node.layer, head_node.head, pd_direction, k=8
                ).to_dict(),
                "source_features": _head_source_features(
                    model, state, target_vec, head_node, int(srcs.indices[0])
                ),
            }
        )
    return rows


def _neuron_layer(scores: dict[int, Tensor], last: int) -> int:
    """The layer whose features at the answer position `last` carry the most positive attribution
    (the paper's MLP10 in GPT-2)."""
    layer_totals = {layer: float(t[last].clamp_min(0).sum()) for layer, t in scores.items()}
    return max(layer_totals, key=lambda layer: layer_totals[layer])


def _compare_with_neurons(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    scores: dict[int, Tensor],
    max_k: int,
) -> dict[str, Any]:
    """Step 6 (in-sample): `features_vs_neurons` at `_neuron_layer`, the position the edit acts on."""
    layer = _neuron_layer(scores, int(prompts.last_pos[0]))
    kept = features_vs_neurons(model, state, prompts, layer, max_k)
    return {
        "features_vs_neurons_layer": layer,
        "features_vs_neurons": {str(k): v for k, v in kept.items()},
    }


def _search_paths(
    model: ReplacementModel,
    state: ReplacementState,
    prompts: TaskPrompts,
    cfg: GreaterThanConfig,
    target: Target,
    out: Path,
) -> dict[str, Any]:
    """Step 7: greedy path search on prompt 0; writes `out`/graph.json and graph.png.

    Returns the graph's verification by ablation and the top 15 paths as strings.
    """
    result = search_paths(
        model, state, target, row=0, num_iters=cfg.path_iters, num_branches=cfg.path_branches
    )
    tokens = graph_tokens(model, state, 0)
    graph = paths_to_graph(
        result, meta={"prompt": prompts.texts[0], "tokens": tokens, "n_layers": model.n_layers}
    )
    graph.save_json(out / "graph.json")
    plot_graph(graph, out / "graph.png", tokens=tokens, n_layers=model.n_layers)
    check = verify_graph(model, state, target, graph, top_n=10)
    return {"graph_verification": check.to_dict(), "top_paths": path_strings(result, 15)}


def _in_sample(
    model: ReplacementModel, prompts: TaskPrompts, cfg: GreaterThanConfig
) -> dict[str, Any]:
    """In-sample numbers: features chosen and effects measured on all the prompts, ablations in
    the replacement model (errors fixed from the clean run, attention, norms and features live)."""
    state = model.run(prompts.input_ids)
    pd = _measure_prob_diff(model, state, prompts)
    found = _attribute(model, state, prompts, cfg)
    draws = dataclasses.replace(cfg, random_draws=cfg.in_sample_random_draws)
    ablations = _ablate(model, state, prompts, draws, found.attribution, pd["prob_diff_clean"])
    checks = _node_checks(model, state, prompts, found.attribution, found.nodes)
    neurons = _compare_with_neurons(model, state, prompts, found.scores, cfg.max_k)
    return {"n_prompts": len(prompts), **pd, **ablations, **checks, **neurons}


def _cv_prob_diff(model: ReplacementModel, half: EvalHalf) -> dict[str, Any]:
    """PD on the evaluation half: the model's, and the replacement model's with every error
    dropped (live), each with its interval."""
    clean, clean_ci = mean_with_ci(half.pd_clean, half)
    edits = Edits(drop_errors=set(model.feature_layers))
    replacement = prob_diff(model.forward_with(half.state, edits, freeze=False), half.prompts)
    value, value_ci = mean_with_ci(replacement, half)
    return {
        "prob_diff_clean": clean,
        "prob_diff_clean_ci": clean_ci,
        "prob_diff_replacement": value,
        "prob_diff_replacement_ci": value_ci,
    }


def _cv_top_ablation(
    model: ReplacementModel,
    half: EvalHalf,
    selection: ReplacementState,
    nodes: list[FeatureNode],
    cfg: GreaterThanConfig,
) -> dict[str, Any]:
    """PD drop on the evaluation half, in the real model, from zeroing the selected features in
    every prompt, against random features at the same slots (active there in the selection half,
    or any), and the paired top-minus-random difference."""
    top_pd = half.pd_with(model, feature_edits(nodes))
    top, top_ci = half.drop(top_pd)
    base = slot_baseline(model, half, selection, nodes, cfg.random_draws, cfg.seed)
    active, uniform = base["active"], base["uniform"]
    diff, diff_ci = paired_difference(half, top_pd, active["pds"])
    return {
        "top10_ablation_drop": top,
        "top10_ablation_drop_ci": top_ci,
        "random10_ablation_drop": active["drop"],
        "random10_ablation_drop_ci": active["drop_ci"],
        "random10_drops": active["drops"],
        "random10_uniform_ablation_drop": uniform["drop"],
        "random10_uniform_ablation_drop_ci": uniform["drop_ci"],
        "top10_minus_random10_drop": diff,
        "top10_minus_random10_drop_ci": diff_ci,
        "random10_at_least_top10": sum(d >= top for d in active["drops"]) / len(active["drops"]),
    }


def _cv_ablation_variants(
    model: ReplacementModel,
    half: EvalHalf,
    selection: tuple[ReplacementState, TaskPrompts],
    cfg: GreaterThanConfig,
    found: _Attributions,
) -> dict[str, Any]:
    """Per ranking target: PD drop on the evaluation half from its top features on the selection
    half, zeroed in every prompt (real model)."""
    state, prompts = selection
    variants: dict[str, dict[str, Any]] = {}
    for kind, attr in _by_target(model, state, prompts, cfg, found.attribution).items():
        top = _top_features(_mean_feature_scores(attr), cfg.top_k)
        drop, ci = half.drop(half.pd_with(model, feature_edits([n for n, _ in top])))
        variants[kind] = {"same_features_every_prompt": drop, "same_features_every_prompt_ci": ci}
    return {"ablation_variants": {"top10_by_target": variants}}


def _cv_neurons(
    model: ReplacementModel,
    half: EvalHalf,
    selection: tuple[ReplacementState, TaskPrompts],
    scores: dict[int, Tensor],
    cfg: GreaterThanConfig,
) -> dict[str, Any]:
    """Features vs neurons at the layer chosen on the selection half (`features_vs_neurons_cv`)."""
    layer = _neuron_layer(scores, int(selection[1].last_pos[0]))
    kept = features_vs_neurons_cv(
        model, half, selection, layer, cfg.max_k, cfg.neuron_random_draws, cfg.seed
    )
    return {"features_vs_neurons_layer": layer, "features_vs_neurons": kept}


def _select(
    model: ReplacementModel, selection: TaskPrompts, cfg: GreaterThanConfig
) -> tuple[ReplacementState, _Attributions]:
    """Run and attribute the selection half."""
    state = model.run(selection.input_ids)
    return state, _attribute(model, state, selection, cfg)


def _swapped_fold(
    model: ReplacementModel, selection: TaskPrompts, evaluation: TaskPrompts, cfg: GreaterThanConfig
) -> dict[str, Any]:
    """The headline ablation with the halves' roles swapped (a second fold)."""
    state, found = _select(model, selection, cfg)
    half = eval_half(model, evaluation, cfg.bootstrap, cfg.seed + 1)
    nodes = [n for n, _ in found.top_features]
    result = _cv_top_ablation(model, half, state, nodes, cfg)
    keys = ("top10_ablation_drop", "random10_ablation_drop", "top10_minus_random10_drop")
    return {
        "top_features": [n.label for n in nodes],
        **{k: result[k] for k in keys},
        **{f"{k}_ci": result[f"{k}_ci"] for k in keys},
    }


def _cross_validate(
    model: ReplacementModel,
    selection: TaskPrompts,
    evaluation: TaskPrompts,
    cfg: GreaterThanConfig,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], _Attributions, ReplacementState]:
    """Select on `selection`, measure on `evaluation` (real model, intervals); return the numbers,
    the selection's attributions and its state."""
    state, found = _select(model, selection, cfg)
    half = eval_half(model, evaluation, cfg.bootstrap, cfg.seed)
    nodes = [n for n, _ in found.top_features]
    results = {**_cv_prob_diff(model, half), **_cv_top_ablation(model, half, state, nodes, cfg)}
    log(
        f"held-out: top-{cfg.top_k} removes {results['top10_ablation_drop']:.1%} "
        f"{_ci_text(results['top10_ablation_drop_ci'])}, random at the same slots "
        f"{results['random10_ablation_drop']:.1%} {_ci_text(results['random10_ablation_drop_ci'])}"
    )
    results |= _cv_ablation_variants(model, half, (state, selection), cfg, found)
    target = _gt_target(model, half.state, evaluation, cfg.target)
    results |= cross_validated_checks(model, half, target, found.nodes)
    results |= _cv_neurons(model, half, (state, selection), found.scores, cfg)
    log(f"features vs neurons at layer {results['features_vs_neurons_layer']} done")
    if cfg.swap_halves:
        results["swapped_halves"] = _swapped_fold(model, evaluation, selection, cfg)
    return results, found, state


def _ci_text(ci: list[float]) -> str:
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def run_greater_than(
    cfg: GreaterThanConfig,
    out: str | Path,
    adapter: ModelAdapter | None = None,
    transcoders: TranscoderSet | Mapping[int, Dictionary] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the case study, write `out`/summary.json, report.md, plots and graph.json; return the
    summary: cross-validated real-model numbers with `<key>_ci` intervals, and `in_sample`."""
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{time.time() - started:5.1f}s] {msg}", flush=True)

    adapter = adapter or load_model(cfg.model, device=cfg.device)
    if transcoders is None:
        transcoders = load_transcoders(cfg.transcoders, device=adapter.device)
    model = ReplacementModel(adapter, transcoders)
    prompts = _prompts(adapter, cfg.n_prompts, cfg.seed)
    selection, evaluation = (
        prompts.take(torch.tensor(r)) for r in split_prompts(prompts, cfg.seed)
    )
    in_sample = _in_sample(model, prompts, cfg)
    log(f"in-sample: top-{cfg.top_k} removes {in_sample['top10_ablation_drop']:.1%}")
    measured, found, state = _cross_validate(model, selection, evaluation, cfg, log)
    features, profiles = _describe_features(model, state, selection, cfg, found.top_features)
    heads = _describe_heads(model, state, selection, found)
    paths = _search_paths(model, state, selection, cfg, found.attribution.target, out)
    summary = {
        "model": adapter.name,
        "transcoder_layers": model.feature_layers,
        "n_prompts": len(prompts),
        "n_selection_prompts": len(selection),
        "n_evaluation_prompts": len(evaluation),
        "example_prompt": selection.texts[0],
        **measured,
        "top_features": features,
        "top_heads": heads,
        **paths,
        "target": found.attribution.target.label,
        "in_sample": in_sample,
        "config": asdict(cfg),
        "runtime_s": time.time() - started,
    }
    write_results(summary, profiles, out)
    log(f"wrote {out}/summary.json and report.md")
    return summary
