"""Transcoder adapters for model diffing (Hu, Ward, Icard & Potts 2026).

A sparse ReLU branch beside every MLP of a frozen backbone (`model`), trained with the bridging
loss (`loss`, `train`) so that base + adapters reproduces a fine-tuned reference model; the
model pair comes from `pair` (a behaviour defined in `behaviour`), and `evaluate` measures
faithfulness, the behaviour gain recovered and feature ablations. Adapters are saved as
per-layer transcoders, so the dictionary loaders, dashboards and circuit code read them.
"""

from sparsecircuits.adapters.behaviour import Behaviour
from sparsecircuits.adapters.evaluate import EvalConfig, evaluate_adapters, load_adapters
from sparsecircuits.adapters.loss import LossWeights, bridging_loss
from sparsecircuits.adapters.model import (
    BACKBONES,
    attached,
    build_backbone,
    make_adapters,
    mlp_hooks,
)
from sparsecircuits.adapters.pair import FinetuneConfig, ensure_pair, finetune_pair
from sparsecircuits.adapters.train import AdapterTrainConfig, train_adapters

__all__ = [
    "BACKBONES",
    "AdapterTrainConfig",
    "Behaviour",
    "EvalConfig",
    "FinetuneConfig",
    "LossWeights",
    "attached",
    "bridging_loss",
    "build_backbone",
    "ensure_pair",
    "evaluate_adapters",
    "finetune_pair",
    "load_adapters",
    "make_adapters",
    "mlp_hooks",
    "train_adapters",
]
