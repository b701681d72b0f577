"""`identify`: circuit identification from discrete SAE codes, scored against patching ground truth.

One run for one task: build the positive/negative pairs, patch every head to get the ground
truth, compute per-head outputs once, then for each seed train the shared SAE and score heads
and head pairs; the two baselines run once (they are deterministic). Writes `summary.json`,
`roc.png` (heads) and `roc_edges.png` (head pairs) to the output folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sparsecircuits.circuits.identify.baselines import (
    attribution_patching,
    transcoder_head_attribution,
)
from sparsecircuits.circuits.identify.discrete import (
    CodeConfig,
    discrete_codes,
    sae_training_rows,
    train_shared_sae,
)
from sparsecircuits.circuits.identify.ground_truth import (
    CANONICAL_HEADS,
    PatchingResult,
    canonical_applies,
    canonical_mask,
    ground_truth_edges,
    ground_truth_heads,
    patch_heads,
)
from sparsecircuits.circuits.identify.head_outputs import head_label, head_outputs
from sparsecircuits.circuits.identify.metrics import mean_ci, ranking_metrics, roc_curve
from sparsecircuits.circuits.identify.scores import (
    edge_node_scores,
    edge_scores,
    layer_ordered_pairs,
    node_scores,
)
from sparsecircuits.circuits.identify.task_pairs import (
    METRIC_NAMES,
    TASKS,
    TaskPairs,
    make_task_pairs,
)
from sparsecircuits.dictionaries import Dictionary, TranscoderSet
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation.plots import plot_roc
from sparsecircuits.models import ModelAdapter

# O'Neill & Bui's L1 coefficient per task (per-element MSE scale).
DEFAULT_L1 = {"ioi": 0.02, "greater-than": 0.02, "docstring": 0.05}


@dataclass
class IdentifyConfig:
    """Settings of one `identify` run (defaults: the paper's, on 250 + 250 prompts)."""

    task: str = "ioi"
    model: str = "embedded"
    transcoders: str | None = "embedded"  # None: skip the transcoder baseline
    n_prompts: int = 250
    seeds: int = 10
    threshold: float = 0.05  # ground truth: normalised patching KL effect >= threshold
    n_train_prompts: int = 10
    n_latents: int = 200
    l1: float | None = None  # None: DEFAULT_L1[task]
    epochs: int = 500
    split: str = "dev"
    prompt_seed: int = 0
    device: str | None = None

    def check(self) -> None:
        """Raise a SparseCircuitsError for settings that cannot run."""
        if self.task not in TASKS:
            raise SparseCircuitsError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.seeds < 1 or self.n_prompts < 2 or self.n_train_prompts < 1:
            raise SparseCircuitsError("--seeds, --n-prompts and --train-prompts must be positive")
        if not 0 < self.threshold < 1:
            raise SparseCircuitsError("--threshold must lie strictly between 0 and 1")


def _edge_candidates(node: Tensor, pairs: Tensor) -> Tensor:
    """Edge scores of a node-only method: `|s_h1| · |s_h2|` per candidate pair, `[n_pairs]`."""
    return node.abs()[pairs[:, 0]] * node.abs()[pairs[:, 1]]


def _summarise_seeds(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        mean, std, low, high = mean_ci([r[key] for r in per_seed])
        out[key] = mean
        out[f"{key}_std"] = std
        out[f"{key}_ci"] = [low, high]
    return out


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def _curve(scores: Tensor, truth: Tensor) -> tuple[list[float], list[float]]:
    fpr, tpr = roc_curve(scores, truth)
    return fpr.tolist(), tpr.tolist()


Curves = dict[str, tuple[list[float], list[float]]]


@dataclass
class _Truth:
    """The patching ground truth: per-head effects, the heads at or above the threshold
    (bool `[layers · heads]`), the layer-ordered candidate pairs `[n_pairs, 2]` and which of them
    join two ground-truth heads (bool `[n_pairs]`)."""

    patching: PatchingResult
    heads: Tensor
    candidates: Tensor
    edges: Tensor


def _ground_truth(
    adapter: ModelAdapter,
    pairs: TaskPairs,
    task: str,
    threshold: float,
    say: Callable[[str], None],
) -> _Truth:
    """Patch every head and keep those whose normalised effect reaches `threshold`; raises a
    `SparseCircuitsError` naming the largest effects when that keeps no head or every head."""
    n_heads = adapter.n_heads
    say(f"{len(pairs)} {task} prompt pairs; patching {adapter.n_layers * n_heads} heads")
    patching = patch_heads(adapter, pairs)
    heads = ground_truth_heads(patching, threshold)
    if not bool(heads.any()) or bool(heads.all()):
        effects = patching.normalised_kl()
        top = torch.argsort(effects, descending=True)[:5].tolist()
        listed = ", ".join(f"{head_label(i, n_heads)}: {float(effects[i]):.3f}" for i in top)
        raise SparseCircuitsError(
            f"the patching ground truth at --threshold {threshold} holds "
            f"{int(heads.sum())} of {heads.numel()} heads; choose a --threshold that "
            f"separates heads (largest normalised effects: {listed})"
        )
    candidates = layer_ordered_pairs(adapter.n_layers, n_heads)
    edges = ground_truth_edges(heads, candidates)
    if not bool(edges.any()):
        say("the ground truth has no layer-ordered head pair: edge metrics will be NaN")
    say(f"ground truth: {int(heads.sum())} heads ({patching.seconds:.1f} s); head outputs")
    return _Truth(patching, heads, candidates, edges)


class _SeedScores(NamedTuple):
    """One seed's scores: heads `[layers · heads]`, heads from the pair scores, and the
    candidate pairs `[n_pairs]`."""

    nodes: Tensor
    edge_nodes: Tensor
    edges: Tensor


def _score_seed(
    seed: int,
    pool: Tensor,
    pos_out: Tensor,
    neg_out: Tensor,
    truth: _Truth,
    code_cfg: CodeConfig,
) -> tuple[dict[str, float], _SeedScores]:
    """Train the shared SAE of `seed` on rows of `pool` and score heads and head pairs by its
    codes: `(ranking metrics against the ground truth, the scores)`."""
    rows = sae_training_rows(len(pool), code_cfg.n_train_prompts, seed)
    sae = train_shared_sae(pool[rows], code_cfg, seed)
    pos_codes, neg_codes = discrete_codes(sae, pos_out), discrete_codes(sae, neg_out)
    pair_matrix = edge_scores(pos_codes, neg_codes)
    scores = _SeedScores(
        nodes=node_scores(pos_codes, neg_codes),
        edge_nodes=edge_node_scores(pair_matrix),
        edges=pair_matrix[truth.candidates[:, 0], truth.candidates[:, 1]],
    )
    metrics = {
        **_prefixed("node", ranking_metrics(scores.nodes, truth.heads)),
        **_prefixed("edge", ranking_metrics(scores.edges, truth.edges)),
        "edge_node_roc_auc": ranking_metrics(scores.edge_nodes, truth.heads)["roc_auc"],
        "distinct_codes": float(
            len(set(pos_codes.flatten().tolist()) | set(neg_codes.flatten().tolist()))
        ),
    }
    return metrics, scores


def _baselines(
    scorers: Mapping[str, Callable[[], Tensor]],
    truth: _Truth,
    n_heads: int,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], Curves, Curves]:
    """Run each head scorer (`[layers · heads]` scores) and rank heads by `|score|` and pairs by
    `|s1|·|s2|`: `({name: metrics and head scores}, node curves, edge curves)`."""
    results: dict[str, Any] = {}
    node_curves: Curves = {}
    edge_curves: Curves = {}
    for name, scorer in scorers.items():
        say(f"baseline {name}")
        t0 = time.perf_counter()
        values = scorer()
        seconds = time.perf_counter() - t0
        edge_values = _edge_candidates(values, truth.candidates)
        results[name] = {
            **_prefixed("node", ranking_metrics(values.abs(), truth.heads)),
            **_prefixed("edge", ranking_metrics(edge_values, truth.edges)),
            "seconds": seconds,
            "head_scores": {head_label(i, n_heads): float(v) for i, v in enumerate(values)},
        }
        label = name.replace("_", " ")
        node_curves[label] = _curve(values.abs(), truth.heads)
        edge_curves[label + " (|s1|·|s2|)"] = _curve(edge_values, truth.edges)
    return results, node_curves, edge_curves


def _truth_summary(truth: _Truth, task: str, threshold: float, n_heads: int) -> dict[str, Any]:
    """The `ground_truth` block of `summary.json`: criterion, heads, edges and every head's effect."""
    patching = truth.patching
    drop = patching.full_metric_drop
    return {
        "criterion": "per-head activation patching positive <- negative (z at every "
        "position); effect = mean KL(clean || patched) at the final position divided by "
        "the KL of the whole negative prompt",
        "threshold": threshold,
        "heads": [head_label(i, n_heads) for i in torch.nonzero(truth.heads).flatten().tolist()],
        "edges": "layer-ordered pairs (h1 in an earlier layer than h2) of ground-truth heads; "
        "candidates: every layer-ordered pair",
        "n_edges": int(truth.edges.sum()),
        "effects_kl": {
            head_label(i, n_heads): float(v) for i, v in enumerate(patching.normalised_kl())
        },
        "effects_metric": {
            head_label(i, n_heads): float(v / drop) if drop else float("nan")
            for i, v in enumerate(patching.metric_drop)
        },
        "task_metric": METRIC_NAMES[task],
        "clean_metric": patching.clean_metric,
        "full_corruption_metric_drop": drop,
        "full_corruption_kl": patching.full_kl,
        "seconds": patching.seconds,
    }


_METRIC_NOTES = {
    "roc_auc_ci": "95% Student-t interval of the mean over seeds (SAE init and training prompts)",
    "precision/recall/f1": "standard, for the top |G| candidates (G = ground truth)",
    "f1_specificity": "O'Neill & Bui's 'F1': harmonic mean of recall and specificity",
    "edge_node_roc_auc": "the paper's edge column: pair scores turned into head scores",
    "seconds": "per seed: head outputs (shared) + SAE training + scoring",
}


def run_identify(
    cfg: IdentifyConfig,
    out: str | Path,
    adapter: ModelAdapter | None = None,
    transcoders: TranscoderSet | Mapping[int, Dictionary] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the method and baselines for `cfg.task`; write and return the summary dict.

    `log(message)` receives one line per stage (None: silent).
    """
    say = log or (lambda _message: None)
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model

    cfg.check()
    started = time.perf_counter()
    out = Path(out)
    adapter = adapter or load_model(cfg.model, device=cfg.device)
    if transcoders is None and cfg.transcoders:
        transcoders = load_transcoders(cfg.transcoders, device=adapter.device)
    n_layers, n_heads = adapter.n_layers, adapter.n_heads
    pairs = make_task_pairs(cfg.task, adapter.tokenizer, cfg.n_prompts, cfg.prompt_seed, cfg.split)
    truth = _ground_truth(adapter, pairs, cfg.task, cfg.threshold, say)

    t0 = time.perf_counter()
    pos_out = head_outputs(adapter, pairs.positives)
    neg_out = head_outputs(adapter, pairs.negatives)
    outputs_seconds = time.perf_counter() - t0
    pool = torch.cat([pos_out, neg_out])
    code_cfg = CodeConfig(
        n_latents=cfg.n_latents,
        l1=DEFAULT_L1[cfg.task] if cfg.l1 is None else cfg.l1,
        epochs=cfg.epochs,
        n_train_prompts=cfg.n_train_prompts,
    )
    canonical = dict(CANONICAL_HEADS[cfg.task])
    canonical["applies_to_this_model"] = canonical_applies(cfg.task, cfg.model, n_layers, n_heads)
    canonical_truth = (
        canonical_mask(cfg.task, n_layers, n_heads) if canonical["applies_to_this_model"] else None
    )
    per_seed: list[dict[str, float]] = []
    curves: Curves = {}
    edge_curves: Curves = {}
    for seed in range(cfg.seeds):
        t0 = time.perf_counter()
        metrics, scores = _score_seed(seed, pool, pos_out, neg_out, truth, code_cfg)
        seconds = time.perf_counter() - t0
        metrics["seconds"] = seconds + outputs_seconds
        if canonical_truth is not None:
            canonical_auc = ranking_metrics(scores.nodes, canonical_truth)["roc_auc"]
            metrics["canonical_node_roc_auc"] = canonical_auc
        per_seed.append(metrics)
        say(f"seed {seed}: node ROC-AUC {metrics['node_roc_auc']:.3f} ({seconds:.1f} s)")
        if seed == 0:  # the plots show one seed's curves
            curves["SAE codes: node score (seed 0)"] = _curve(scores.nodes, truth.heads)
            curves["SAE codes: edge-derived node score (seed 0)"] = _curve(
                scores.edge_nodes, truth.heads
            )
            edge_curves["SAE codes: edge score (seed 0)"] = _curve(scores.edges, truth.edges)

    scorers: dict[str, Callable[[], Tensor]] = {
        "attribution_patching": lambda: attribution_patching(adapter, pairs)
    }
    if transcoders is not None:
        scorers["transcoder_attribution"] = lambda: transcoder_head_attribution(
            adapter, transcoders, pairs
        )
    baselines, node_curves, pair_curves = _baselines(scorers, truth, n_heads, say)
    curves |= node_curves
    edge_curves |= pair_curves

    summary: dict[str, Any] = {
        "task": cfg.task,
        "model": cfg.model,
        "n_pairs": len(pairs),
        "n_heads": n_layers * n_heads,
        "n_candidate_edges": int(truth.candidates.shape[0]),
        **_summarise_seeds(per_seed),
        "per_seed": per_seed,
        "baselines": baselines,
        "ground_truth": _truth_summary(truth, cfg.task, cfg.threshold, n_heads),
        "canonical_gpt2_heads": canonical,
        "settings": asdict(cfg) | {"l1": code_cfg.l1},
        "seconds_head_outputs": outputs_seconds,
        "seconds_total": time.perf_counter() - started,
        "metric_notes": _METRIC_NOTES,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    title = f"{cfg.task} on {cfg.model}: heads vs patching ground truth"
    plot_roc(curves, out / "roc.png", title=title)
    plot_roc(edge_curves, out / "roc_edges.png", title=f"{cfg.task}: head pairs")
    return summary
