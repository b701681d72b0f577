"""Train transcoder adapters through the frozen backbone with the bridging loss.

AdamW on the adapter weights only, linear warmup then cosine decay, gradient clipping at 1.0,
one bridging cut sampled uniformly from `0..n_layers` per step. Batches are corpus contexts, a
fraction ending in the behaviour's trigger and answer when the reference model carries one
(the fine-tuning distribution, as the paper trains on the fine-tuned model's own data).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.adapters.behaviour import Behaviour, corpus_tokens, training_contexts
from sparsecircuits.adapters.loss import LossWeights, bridging_loss, reference_run
from sparsecircuits.adapters.model import build_backbone, init_from_inputs, make_adapters
from sparsecircuits.dictionaries import PerLayerTranscoders, save_dictionary
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter, load_model

ADAPTERS_DIR = "adapters"
RUN_FILE = "adapters.json"


@dataclass(frozen=True)
class AdapterTrainConfig:
    """Everything `train_adapters` needs; written to `DIR/adapters.json`."""

    base: str = "embedded"
    reference: str = ""
    backbone: str = "target"
    dataset: str = "embedded"
    d_sae: int = 128
    steps: int = 300
    batch: int = 8
    context_size: int = 32
    lr: float = 3e-3
    warmup_fraction: float = 0.05
    l1: float = 7e-3
    init_l0: float = 4.0
    kl: float = 1.0
    nmse: float = 1.0
    bridge: float = 2.0
    trigger_fraction: float = 0.5
    seed: int = 0
    device: str = "cpu"

    def weights(self) -> LossWeights:
        """The loss weights."""
        return LossWeights(kl=self.kl, nmse=self.nmse, bridge=self.bridge, l1=self.l1)


def learning_rate(cfg: AdapterTrainConfig, step: int) -> float:
    """The learning rate at `step`: linear warmup over `warmup_fraction`, then cosine to 0."""
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def load_pair(cfg: AdapterTrainConfig) -> tuple[ModelAdapter, ModelAdapter, ModelAdapter]:
    """Return `(base, reference, backbone)` models for `cfg`."""
    if not cfg.reference:
        raise SparseCircuitsError("give the fine-tuned model to diff with --reference")
    base = load_model(cfg.base, device=cfg.device)
    reference = load_model(cfg.reference, device=cfg.device)
    return base, reference, build_backbone(base, reference, cfg.backbone)


def train_adapters(
    cfg: AdapterTrainConfig, out: str | Path, quiet: bool = False
) -> PerLayerTranscoders:
    """Train adapters for `cfg`; save them under `out/adapters/blocks.L/` and the run's config
    and loss log to `out/adapters.json`. Return the trained set."""
    out = Path(out)
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    _, reference, backbone = load_pair(cfg)
    adapters = make_adapters(backbone, cfg.d_sae, seed=cfg.seed, init_l0=cfg.init_l0)
    params = [
        p for layer in adapters.layers for p in adapters[layer].parameters() if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    tokenizer = backbone.tokenizer
    bos = backbone.bos_token_id
    if bos is None:
        raise SparseCircuitsError("the model's tokenizer has no BOS/EOS token")
    behaviour = Behaviour.read(cfg.reference) if Path(cfg.reference).is_dir() else None
    tokens = corpus_tokens(tokenizer, cfg.dataset, "train")
    rng = random.Random(cfg.seed)
    log: list[dict[str, Any]] = []
    if cfg.init_l0 > 0:
        first, _ = training_contexts(
            tokens, behaviour, tokenizer, bos, 4 * cfg.batch, cfg.context_size, seed=cfg.seed - 1
        )
        init_from_inputs(backbone, adapters, first.to(backbone.device))
    for step in range(cfg.steps):
        ids, _ = training_contexts(
            tokens,
            behaviour,
            tokenizer,
            bos,
            cfg.batch,
            cfg.context_size,
            seed=cfg.seed * 1_000_003 + step,
            trigger_fraction=cfg.trigger_fraction,
        )
        ids = ids.to(backbone.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        cut = rng.randint(0, backbone.n_layers)
        loss, parts = bridging_loss(
            backbone, reference, adapters, ids, cut, cfg.weights(), reference_run(reference, ids)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log.append({"step": step, "cut": cut, **parts})
        if not quiet and (step % 25 == 0 or step == cfg.steps - 1):
            print(
                f"adapters step {step:4d}  loss {parts['loss']:.4f}  kl {parts['kl']:.4f}  "
                f"nmse {parts['nmse']:.4f}  L0 {parts['l0']:.1f}",
                flush=True,
            )
    for layer in adapters.layers:
        adapters[layer].eval()
        save_dictionary(adapters[layer], out / ADAPTERS_DIR / f"blocks.{layer}")
    (out / RUN_FILE).write_text(
        json.dumps(
            {"config": asdict(cfg), "seconds": time.perf_counter() - start, "log": log}, indent=1
        )
    )
    return adapters


def read_run_config(folder: str | Path) -> AdapterTrainConfig:
    """Return the `AdapterTrainConfig` saved in `folder/adapters.json`."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise SparseCircuitsError(
            f"{folder} has no {RUN_FILE}; pass a folder written by `sparsecircuits adapters train`"
        )
    return AdapterTrainConfig(**json.loads(path.read_text())["config"])
