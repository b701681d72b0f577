"""Training: many dictionaries from one activation stream, with checkpoints and resume."""

from sparsecircuits.training.checkpoints import latest_checkpoint
from sparsecircuits.training.config import TrainConfig
from sparsecircuits.training.trainer import Trainer, TrainingStopped, TrainResult

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingStopped", "latest_checkpoint"]
