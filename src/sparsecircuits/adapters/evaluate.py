"""Evaluate trained adapters: faithfulness to the reference model and the diffed behaviour.

Faithfulness, on held-out corpus contexts (same trigger mix as training): KL(p_ref ‖ p_adapt),
NMSE of every residual `h_0..h_L`, both bridging KLs at every cut, adapter L0 per layer. For the
same contexts the backbone without adapters gives the starting point (`kl_without_adapters`).

Behaviour, on held-out prompts (documents never used for training): with `m` the answer's
log-odds after the trigger, `gain_recovered = mean(m_adapt − m_base) / mean(m_ref −
m_base)`. Features are ranked by attribution (gradient × activation of Σ m, summed over
positions) on training-split prompts; ablating the top `n_ablate` removes
`top_ablation_drop = mean(m_adapt − m_ablated) / mean(m_adapt − m_base)` of the adapters' gain;
the same number of random features that fire on the held-out prompts (outside the top set)
gives `random_ablation_drop`; `ablation_curve` repeats both for several feature counts (random:
a few draws each). Intervals are 95 % bootstrap intervals over prompts (top) and
percentile intervals over random draws (random).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.adapters.behaviour import (
    Behaviour,
    Prompts,
    answer_log_odds,
    behaviour_prompts,
    corpus_tokens,
    training_contexts,
)
from sparsecircuits.adapters.loss import (
    kl_divergence,
    nmse,
    reference_run,
    residuals,
)
from sparsecircuits.adapters.model import attached, residual_from
from sparsecircuits.adapters.train import ADAPTERS_DIR, load_pair, read_run_config
from sparsecircuits.dictionaries import PerLayerTranscoders, load_transcoders
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation.intervals import (
    bootstrap_indices,
    percentile_interval,
    ratio_interval,
)
from sparsecircuits.models import ModelAdapter

EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation: contexts for faithfulness, prompts for the behaviour."""

    contexts: int = 32
    prompts: int = 128
    attribution_prompts: int = 64
    n_ablate: int = 10
    random_draws: int = 20
    curve: tuple[int, ...] = (1, 3, 10, 30, 100)
    curve_draws: int = 3
    bootstrap: int = 1000
    seed: int = 1


def load_adapters(folder: str | Path, device: str | torch.device) -> PerLayerTranscoders:
    """Return the adapter set saved under `folder/adapters`."""
    adapters = load_transcoders(Path(folder) / ADAPTERS_DIR, device=device)
    if not isinstance(adapters, PerLayerTranscoders):
        raise SparseCircuitsError(f"{folder}/{ADAPTERS_DIR} does not hold per-layer adapters")
    return adapters


@torch.no_grad()
def faithfulness(
    backbone: ModelAdapter, reference: ModelAdapter, adapters: PerLayerTranscoders, ids: Tensor
) -> dict[str, Any]:
    """Return KL, per-residual NMSE, per-cut bridging KLs and L0 of the adapted model on `ids`."""
    ref = reference_run(reference, ids)
    plain_logits, _ = residuals(backbone, ids)
    with attached(backbone, adapters) as run:
        logits, resid = residuals(backbone, ids)
        acts = dict(run.acts)
    n_layers = backbone.n_layers
    bridges: dict[str, dict[str, float]] = {"a2r": {}, "r2a": {}}
    for cut in range(n_layers + 1):
        if cut > 0:
            with residual_from(reference, cut, resid[cut]):
                bridges["a2r"][str(cut)] = float(kl_divergence(ref.logits, reference(ids)))
        if cut < n_layers:
            with attached(backbone, adapters), residual_from(backbone, cut, ref.resid[cut]):
                bridges["r2a"][str(cut)] = float(kl_divergence(ref.logits, backbone(ids)))
    l0_layers = {str(layer): float((a > 0).float().sum(-1).mean()) for layer, a in acts.items()}
    return {
        "kl": float(kl_divergence(ref.logits, logits)),
        "kl_without_adapters": float(kl_divergence(ref.logits, plain_logits)),
        "nmse_layers": [float(nmse(h, r)) for h, r in zip(resid, ref.resid, strict=True)],
        "bridging": bridges,
        "l0": sum(l0_layers.values()),
        "l0_layers": l0_layers,
    }


def attribution_scores(
    backbone: ModelAdapter, adapters: PerLayerTranscoders, prompts: Prompts
) -> dict[int, Tensor]:
    """Return `{layer: [d_sae]}` gradient × activation of Σ answer log-odds, summed over
    prompts and positions (padding after the trigger excluded by causality)."""
    with attached(backbone, adapters) as run:
        logits = backbone(prompts.input_ids)
        acts = dict(run.acts)
    for a in acts.values():
        a.retain_grad()
    answer_log_odds(logits, prompts).sum().backward()
    scores = {}
    for layer, a in acts.items():
        assert a.grad is not None
        mask = torch.arange(a.shape[1])[None, :] <= prompts.last_pos[:, None]
        scores[layer] = (a.grad * a * mask[..., None]).sum((0, 1)).detach()
    return scores


def top_features(scores: dict[int, Tensor], n: int) -> list[tuple[int, int, float]]:
    """Return the `n` `(layer, feature, score)` with the largest scores, largest first."""
    flat = [(layer, i, float(s)) for layer, v in scores.items() for i, s in enumerate(v.tolist())]
    return sorted(flat, key=lambda t: -t[2])[:n]


def _mask(adapters: PerLayerTranscoders, features: list[tuple[int, int]]) -> dict[int, Tensor]:
    masks = {
        layer: torch.zeros(adapters[layer].d_sae, dtype=torch.bool) for layer in adapters.layers
    }
    for layer, i in features:
        masks[layer][i] = True
    return masks


@torch.no_grad()
def _metric(
    model: ModelAdapter,
    prompts: Prompts,
    adapters: PerLayerTranscoders | None = None,
    ablate: dict[int, Tensor] | None = None,
) -> Tensor:
    if adapters is None:
        return answer_log_odds(model(prompts.input_ids), prompts)
    with attached(model, adapters, ablate):
        return answer_log_odds(model(prompts.input_ids), prompts)


def behaviour_metrics(
    base: ModelAdapter,
    reference: ModelAdapter,
    backbone: ModelAdapter,
    adapters: PerLayerTranscoders,
    behaviour: Behaviour,
    dataset: str,
    cfg: EvalConfig,
) -> dict[str, Any]:
    """Return gain recovered and the top-/random-feature ablation drops (see module docstring)."""
    tokenizer, bos = backbone.tokenizer, backbone.bos_token_id
    assert bos is not None
    held_out = behaviour_prompts(
        corpus_tokens(tokenizer, dataset, "eval"), behaviour, tokenizer, bos, cfg.prompts, cfg.seed
    )
    attribution = behaviour_prompts(
        corpus_tokens(tokenizer, dataset, "train"),
        behaviour,
        tokenizer,
        bos,
        cfg.attribution_prompts,
        cfg.seed + 7,
    )
    m_base, m_ref = _metric(base, held_out), _metric(reference, held_out)
    m_adapt = _metric(backbone, held_out, adapters)
    gain, adapted_gain = m_ref - m_base, m_adapt - m_base

    ranked = top_features(
        attribution_scores(backbone, adapters, attribution), max(cfg.n_ablate, *cfg.curve)
    )

    def top_n(n: int) -> list[tuple[int, int]]:
        return [(layer, i) for layer, i, _ in ranked[:n]]

    top_set = top_n(cfg.n_ablate)
    m_top = _metric(backbone, held_out, adapters, _mask(adapters, top_set))
    with torch.no_grad(), attached(backbone, adapters) as run:
        backbone(held_out.input_ids)
        fired = [
            (layer, int(i))
            for layer, a in run.acts.items()
            for i in torch.nonzero((a > 0).flatten(0, 1).any(0)).flatten()
        ]
    rng = random.Random(cfg.seed)

    def random_drops(n: int, draws: int) -> Tensor:
        pool = sorted(set(fired) - set(top_n(n)))
        values = []
        for _ in range(draws):
            draw = rng.sample(pool, min(n, len(pool)))
            m_rand = _metric(backbone, held_out, adapters, _mask(adapters, draw))
            values.append(float((m_adapt - m_rand).mean() / adapted_gain.mean()))
        return torch.tensor(values)

    drops = random_drops(cfg.n_ablate, cfg.random_draws)
    curve = []
    for n in cfg.curve:
        m_n = _metric(backbone, held_out, adapters, _mask(adapters, top_n(n)))
        curve.append(
            {
                "n": n,
                "top_drop": float((m_adapt - m_n).mean() / adapted_gain.mean()),
                "random_drop": float(random_drops(n, cfg.curve_draws).mean()),
            }
        )
    resamples = bootstrap_indices(len(gain), cfg.bootstrap, cfg.seed)  # one draw for both ratios
    return {
        "answer_log_odds": {
            "base": float(m_base.mean()),
            "reference": float(m_ref.mean()),
            "adapted": float(m_adapt.mean()),
            "top_ablated": float(m_top.mean()),
        },
        "gain_recovered": float(adapted_gain.mean() / gain.mean()),
        "gain_recovered_ci": ratio_interval(adapted_gain, gain, resamples),
        "top_ablation_drop": float((m_adapt - m_top).mean() / adapted_gain.mean()),
        "top_ablation_drop_ci": ratio_interval(m_adapt - m_top, adapted_gain, resamples),
        "random_ablation_drop": float(drops.mean()),
        "random_ablation_drop_ci": percentile_interval(drops),
        "n_ablate": len(top_set),
        "ablation_curve": curve,
        "n_fired_on_prompts": len(fired),
        "top_features": [
            {"layer": layer, "feature": i, "score": s} for layer, i, s in ranked[: cfg.n_ablate]
        ],
        "n_prompts": cfg.prompts,
    }


def evaluate_adapters(folder: str | Path, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate the adapters trained into `folder`; write and return `folder/eval.json`."""
    cfg = cfg or EvalConfig()
    folder = Path(folder)
    run = read_run_config(folder)
    base, reference, backbone = load_pair(run)
    adapters = load_adapters(folder, backbone.device)
    torch.manual_seed(cfg.seed)
    behaviour = Behaviour.read(run.reference) if Path(run.reference).is_dir() else None
    tokenizer, bos = backbone.tokenizer, backbone.bos_token_id
    assert bos is not None
    ids, _ = training_contexts(
        corpus_tokens(tokenizer, run.dataset, "eval"),
        behaviour,
        tokenizer,
        bos,
        cfg.contexts,
        run.context_size,
        seed=cfg.seed,
        trigger_fraction=run.trigger_fraction,
    )
    result: dict[str, Any] = {
        "backbone": run.backbone,
        "d_sae": run.d_sae,
        **faithfulness(backbone, reference, adapters, ids.to(backbone.device)),
    }
    keys = ("gain_recovered", "top_ablation_drop", "random_ablation_drop")
    if behaviour is None:
        result.update(dict.fromkeys(keys))
    else:
        result.update(
            behaviour_metrics(base, reference, backbone, adapters, behaviour, run.dataset, cfg)
        )
    (folder / EVAL_FILE).write_text(json.dumps(result, indent=2))
    return result
