"""Build the model pair to diff: a copy of a base model fine-tuned to learn one behaviour.

Only the MLP weights are trained, so the target backbone (reference model, base MLPs) equals
the base model and the whole difference lives where the adapters sit. The loss is the
cross-entropy of the answer after the trigger plus KL(base ‖ fine-tuned) on every other
position, which keeps the rest of the model's predictions where they were. Same base, corpus,
behaviour and seed give the same weights (single-threaded CPU determinism aside).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparsecircuits.adapters.behaviour import (
    Behaviour,
    answer_log_odds,
    behaviour_prompts,
    corpus_tokens,
    training_contexts,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter, load_model

PAIR_FILE = "finetune.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (batch of `batch` contexts of `context_size` tokens)."""

    steps: int = 30
    batch: int = 8
    context_size: int = 48
    lr: float = 1e-3
    seed: int = 0
    dataset: str = "embedded"
    eval_prompts: int = 64


def _finetune_loss(
    model: ModelAdapter,
    base_logits: torch.Tensor,
    ids: torch.Tensor,
    answer_pos: torch.Tensor,
    answer: int,
) -> torch.Tensor:
    logits = model(ids)
    logp = F.log_softmax(logits.float(), dim=-1)
    base_logp = F.log_softmax(base_logits.float(), dim=-1)
    kl = (base_logp.exp() * (base_logp - logp)).sum(-1)  # [b, p]
    keep = torch.ones_like(kl, dtype=torch.bool)
    rows = torch.nonzero(answer_pos >= 0).flatten()
    keep[rows, answer_pos[rows]] = False
    loss = kl[keep].mean()
    if len(rows):
        loss = loss - logp[rows, answer_pos[rows], answer].mean()
    return loss


def finetune_pair(
    base: str,
    out: str | Path,
    behaviour: Behaviour | None = None,
    cfg: FinetuneConfig | None = None,
    quiet: bool = False,
) -> Path:
    """Fine-tune a copy of `base` on `behaviour`; save it (HF folder with `behaviour.json` and
    `finetune.json`) to `out` and return `out`."""
    behaviour = behaviour or Behaviour()
    cfg = cfg or FinetuneConfig()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    reference = load_model(base, device="cpu")
    frozen = load_model(base, device="cpu")
    tokenizer = reference.tokenizer
    trigger, answer = behaviour.token_ids(tokenizer)
    bos = reference.bos_token_id
    if bos is None:
        raise SparseCircuitsError("the base model's tokenizer has no BOS/EOS token")
    tokens = corpus_tokens(tokenizer, cfg.dataset, "train")
    mlp_params = [
        p
        for block in reference.blocks
        for p in block.get_submodule(reference.spec.mlp).parameters()
    ]
    for p in mlp_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(mlp_params, lr=cfg.lr, weight_decay=0.0)
    for step in range(cfg.steps):
        ids, answer_pos = training_contexts(
            tokens,
            behaviour,
            tokenizer,
            bos,
            cfg.batch,
            cfg.context_size,
            seed=cfg.seed * 100_003 + step,
        )
        with torch.no_grad():
            base_logits = frozen(ids)
        loss = _finetune_loss(reference, base_logits, ids, answer_pos, answer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mlp_params, 1.0)
        optimizer.step()
        if not quiet and (step % 20 == 0 or step == cfg.steps - 1):
            print(f"fine-tune step {step:4d}  loss {loss.item():.4f}", flush=True)
    reference.model.requires_grad_(False)
    reference.model.eval()

    eval_tokens = corpus_tokens(tokenizer, cfg.dataset, "eval")
    prompts = behaviour_prompts(
        eval_tokens, behaviour, tokenizer, bos, cfg.eval_prompts, seed=cfg.seed + 1
    )
    with torch.no_grad():
        ref_lp = answer_log_odds(reference(prompts.input_ids), prompts)
        base_lp = answer_log_odds(frozen(prompts.input_ids), prompts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference.model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    behaviour.save(out)
    (out / PAIR_FILE).write_text(
        json.dumps(
            {
                "base": base,
                "config": asdict(cfg),
                "seconds": time.perf_counter() - start,
                "heldout_answer_log_odds": {
                    "base": float(base_lp.mean()),
                    "reference": float(ref_lp.mean()),
                },
                "heldout_answer_top1": float(
                    (
                        reference(prompts.input_ids).argmax(-1)[
                            torch.arange(cfg.eval_prompts), prompts.last_pos
                        ]
                        == answer
                    )
                    .float()
                    .mean()
                ),
            },
            indent=2,
        )
    )
    return out


def ensure_pair(
    base: str,
    out: str | Path,
    behaviour: Behaviour | None = None,
    cfg: FinetuneConfig | None = None,
    quiet: bool = False,
) -> Path:
    """Return the fine-tuned model folder `out`, building it first unless it already holds one."""
    out = Path(out)
    if (out / PAIR_FILE).is_file() and Behaviour.read(out) is not None:
        return out
    return finetune_pair(base, out, behaviour, cfg, quiet)
