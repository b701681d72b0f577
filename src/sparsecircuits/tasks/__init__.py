"""Circuit tasks (greater-than, IOI, docstring): prompt generators, metrics and `run_tasks`.

Everything works with any Hugging Face causal LM and tokenizer whose vocabulary has the task
words as single tokens; `model_forward(input_ids [b, p]) -> logits [b, p, vocab]`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.tokens import bos_token_id
from sparsecircuits.tasks.common import TaskPrompts, logits_at_last
from sparsecircuits.tasks.docstring import (
    docstring_accuracy,
    docstring_logit_diff,
    make_docstring_prompts,
)
from sparsecircuits.tasks.greater_than import greater_than_prob_diff, make_greater_than_prompts
from sparsecircuits.tasks.ioi import ioi_logit_diff, make_ioi_prompts

__all__ = [
    "TaskPrompts",
    "answer_logits",
    "docstring_accuracy",
    "docstring_logit_diff",
    "greater_than_prob_diff",
    "ioi_logit_diff",
    "make_docstring_prompts",
    "make_greater_than_prompts",
    "make_ioi_prompts",
    "prose_contexts",
    "prose_loss",
    "run_tasks",
]

ModelForward = Callable[[torch.Tensor], torch.Tensor]


def _device_of(model_forward: ModelForward) -> torch.device | None:
    owner = getattr(model_forward, "__self__", None)
    params = getattr(owner, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return None


@torch.no_grad()
def answer_logits(
    model_forward: ModelForward, prompts: TaskPrompts, batch_size: int = 64
) -> torch.Tensor:
    """Run the prompts through the model; return float logits at each `last_pos`, `[n, vocab]`."""
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = prompts.input_ids[start : start + batch_size]
        last = prompts.last_pos[start : start + batch_size]
        width = int(last.max()) + 1
        logits = model_forward(ids[:, :width])
        out.append(logits_at_last(logits, last.to(logits.device)).float().cpu())
    return torch.cat(out)


def prose_contexts(
    tokenizer: Any, n_contexts: int = 200, context: int = 128, path: Path | None = None
) -> torch.Tensor:
    """Return `[k, context]` contexts (BOS + context-1 tokens) packed from the held-out prose.

    `path` defaults to the shipped `heldout.jsonl`; k <= n_contexts when the text runs out.
    """
    if path is None:
        from sparsecircuits.models.embedded import embedded_dir

        path = embedded_dir() / "heldout.jsonl"
    if not path.exists():
        raise SparseCircuitsError(
            f"held-out prose {path} is missing; rebuild with scripts/embedded/build_all.py"
        )
    start = bos_token_id(tokenizer)
    sep = [start] if start is not None else []
    stream: list[int] = []
    need = n_contexts * (context - len(sep))
    with open(path, encoding="utf-8") as f:
        for line in f:
            stream += tokenizer.encode(json.loads(line)["text"], add_special_tokens=False) + sep
            if len(stream) >= need:
                break
    span = context - len(sep)
    k = min(n_contexts, len(stream) // span)
    body = torch.tensor(stream[: k * span], dtype=torch.long).view(k, span)
    if sep:
        body = torch.cat([torch.full((k, 1), sep[0], dtype=torch.long), body], dim=1)
    return body


@torch.no_grad()
def prose_loss(model_forward: ModelForward, contexts: torch.Tensor, batch_size: int = 16) -> float:
    """Return the mean next-token cross-entropy (nats) over `contexts [k, context]`."""
    total, count = 0.0, 0
    for start in range(0, contexts.shape[0], batch_size):
        ids = contexts[start : start + batch_size]
        logits = model_forward(ids).float().cpu()
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(ce)
        count += ids[:, 1:].numel()
    return total / max(count, 1)


def run_tasks(
    model_forward: ModelForward,
    tokenizer: Any,
    n: int = 200,
    seed: int | None = None,
    split: str = "dev",
    prose_contexts: int = 200,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate the three circuit tasks on `split` ("dev" or "test"; `seed` None: the split's
    documented seed) and the held-out prose loss: `{"greater_than": {"prob_diff", "n"}, "ioi":
    {"logit_diff", "accuracy", "n"}, "docstring": {"accuracy", "n"}, "prose_loss"}` (inputs move
    to the device of a module's bound `model_forward`)."""
    device = _device_of(model_forward)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model_forward(ids.to(device) if device is not None else ids)

    gt = make_greater_than_prompts(tokenizer, n, seed=seed, split=split)
    assert gt.yy is not None and gt.year_ids is not None
    pd = greater_than_prob_diff(answer_logits(forward, gt, batch_size), gt.yy, gt.year_ids)
    io = make_ioi_prompts(tokenizer, n, seed=seed, split=split)
    assert io.io_ids is not None and io.s_ids is not None
    ld = ioi_logit_diff(answer_logits(forward, io, batch_size), io.io_ids, io.s_ids)
    ds = make_docstring_prompts(tokenizer, n, seed=seed, split=split)
    assert ds.correct_ids is not None
    acc = docstring_accuracy(answer_logits(forward, ds, batch_size), ds.correct_ids)
    contexts = globals()["prose_contexts"](tokenizer, n_contexts=prose_contexts)
    return {
        "greater_than": {"prob_diff": float(pd.mean()), "n": n},
        "ioi": {"logit_diff": float(ld.mean()), "accuracy": float((ld > 0).float().mean()), "n": n},
        "docstring": {"accuracy": float(acc.mean()), "n": n},
        "prose_loss": prose_loss(forward, contexts, batch_size=16),
    }
