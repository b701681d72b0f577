"""Feature interventions on the replacement model: ablate, scale or set transcoder features
(modes and frozen/live propagation in docs/internals.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sparsecircuits.circuits.edits import Edits, FeatureEdit
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel

MAX_NEW_TOKENS = 128


@dataclass
class Prediction:
    """One candidate next token."""

    token: str
    token_id: int
    prob: float
    logit: float


@dataclass
class InterventionResult:
    """What the (edited) replacement model does with a prompt: `logits [T, vocab]`, the `top` next
    tokens, and the greedy (temperature 0) or sampled continuation."""

    logits: Tensor
    top: list[Prediction]
    continuation_ids: list[int] = field(default_factory=list)
    continuation: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict without the logits."""
        return {
            "top": [asdict(p) for p in self.top],
            "continuation": self.continuation,
            "continuation_ids": list(self.continuation_ids),
        }


def _check(rm: ReplacementModel, interventions: Sequence[FeatureEdit], n_prompt: int) -> None:
    for iv in interventions:
        if iv.layer not in rm.feature_layers:
            raise SparseCircuitsError(
                f"layer {iv.layer} has no transcoder; intervene on layers {rm.feature_layers}"
            )
        d_sae = rm.d_sae(iv.layer)
        features = [iv.feature] if isinstance(iv.feature, int) else list(iv.feature)
        if not all(0 <= feature < d_sae for feature in features):
            raise SparseCircuitsError(
                f"feature {iv.feature} is out of range for layer {iv.layer} (0..{d_sae - 1})"
            )
        if iv.pos is not None and not -n_prompt <= iv.pos < n_prompt:
            raise SparseCircuitsError(
                f"position {iv.pos} is outside the prompt ({n_prompt} tokens, BOS included at 0)"
            )


def edited_logits(
    rm: ReplacementModel,
    input_ids: Tensor,
    interventions: Sequence[FeatureEdit],
    n_prompt: int,
    freeze: bool = False,
) -> Tensor:
    """Logits `[b, T, vocab]` of `input_ids [b, T]` with `interventions` applied
    (docs/internals.md); a negative `pos` counts from the end of the `n_prompt`-token prompt."""
    state = rm.run(input_ids, freeze=freeze)
    if not interventions:
        return state.logits
    anchored = [
        iv if iv.pos is None else dataclasses.replace(iv, pos=iv.pos % n_prompt)
        for iv in interventions
    ]
    return rm.forward_with(state, Edits(features=anchored), freeze=freeze)


def intervene(
    rm: ReplacementModel,
    prompt: str | Tensor,
    interventions: Sequence[FeatureEdit] = (),
    *,
    n_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int = 10,
    seed: int = 0,
    freeze: bool = False,
) -> InterventionResult:
    """Run `prompt` through the replacement model `rm` with `interventions`: its logits, the `top_k`
    next tokens and `n_tokens` generated ones (greedy at temperature 0, else sampled with `seed`;
    each step reruns the whole sequence)."""
    tokenizer = rm.adapter.tokenizer
    input_ids = (
        rm.tokenize(prompt) if isinstance(prompt, str) else prompt.reshape(1, -1).to(rm.device)
    )
    n_prompt = int(input_ids.shape[1])
    if n_tokens < 0 or n_tokens > MAX_NEW_TOKENS:
        raise SparseCircuitsError(f"n_tokens must lie in 0..{MAX_NEW_TOKENS}")
    if temperature < 0:
        raise SparseCircuitsError("temperature must be >= 0 (0 = greedy)")
    _check(rm, interventions, n_prompt)
    generator = torch.Generator().manual_seed(seed)
    logits = edited_logits(rm, input_ids, interventions, n_prompt, freeze)[0]
    last = logits[-1].double()
    probs = torch.softmax(last, dim=-1)
    best = probs.topk(min(top_k, probs.numel()))
    top = [
        Prediction(tokenizer.decode([i]), int(i), float(p), float(last[i]))
        for i, p in zip(best.indices.tolist(), best.values.tolist(), strict=True)
    ]
    generated: list[int] = []
    ids = input_ids
    next_logits = last
    max_len = rm.adapter.max_context
    for step in range(n_tokens):
        if ids.shape[1] >= max_len:
            break
        if step > 0:
            next_logits = edited_logits(rm, ids, interventions, n_prompt, freeze)[0, -1].double()
        if temperature == 0:
            token = int(next_logits.argmax())
        else:
            token = int(
                torch.multinomial(
                    torch.softmax(next_logits / temperature, -1).cpu(), 1, generator=generator
                )
            )
        generated.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
    return InterventionResult(
        logits=logits.detach().cpu(),
        top=top,
        continuation_ids=generated,
        continuation=tokenizer.decode(generated) if generated else "",
    )


class InterventionEngine:
    """Answers the viewer's POST /api/intervene requests with a `ReplacementModel`."""

    def __init__(self, rm: ReplacementModel, max_prompt_tokens: int = 256) -> None:
        self.rm = rm
        self.max_prompt_tokens = max_prompt_tokens

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """`{prompt, interventions: [{layer, position, feature, mode, value}], n_tokens, temperature,
        top_k, seed, freeze}` -> `{prompt_tokens, baseline, intervened}` (each `{top, continuation}`)."""
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise SparseCircuitsError("request needs a non-empty 'prompt' string")
        raw = request.get("interventions") or []
        if not isinstance(raw, list):
            raise SparseCircuitsError(
                "'interventions' must be a list of {layer, position, feature, mode, value}"
            )
        try:
            interventions = [
                FeatureEdit(
                    layer=int(item["layer"]),
                    pos=None if item.get("position") is None else int(item["position"]),
                    feature=int(item["feature"]),
                    mode=str(item.get("mode", "set")),
                    value=float(item.get("value", 0.0)),
                )
                for item in raw
            ]
            kwargs: dict[str, Any] = {
                "n_tokens": int(request.get("n_tokens", 8)),
                "temperature": float(request.get("temperature", 0.0)),
                "top_k": max(1, min(int(request.get("top_k", 10)), 50)),
                "seed": int(request.get("seed", 0)),
                "freeze": bool(request.get("freeze", False)),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise SparseCircuitsError(
                f"bad intervention request ({exc}); give integers for layer/position/feature"
            ) from None
        input_ids = self.rm.tokenize(prompt)
        if input_ids.shape[1] > self.max_prompt_tokens:
            raise SparseCircuitsError(
                f"prompt is {input_ids.shape[1]} tokens; the viewer accepts {self.max_prompt_tokens}"
            )
        baseline = intervene(self.rm, input_ids, [], **kwargs)
        edited = intervene(self.rm, input_ids, interventions, **kwargs)
        tokenizer = self.rm.adapter.tokenizer
        return {
            "prompt_tokens": [tokenizer.decode([i]) for i in input_ids[0].tolist()],
            "baseline": baseline.to_json(),
            "intervened": edited.to_json(),
        }
