"""Evaluation: reconstruction and sparsity metrics, spliced next-token loss, frontier plots."""

from sparsecircuits.evaluation.evaluate import evaluate_dictionaries, harvest_pairs
from sparsecircuits.evaluation.metrics import reconstruction_metrics
from sparsecircuits.evaluation.plots import plot_frontier
from sparsecircuits.evaluation.splice import baseline_losses, spliced_losses

__all__ = [
    "evaluate_dictionaries",
    "harvest_pairs",
    "plot_frontier",
    "reconstruction_metrics",
    "baseline_losses",
    "spliced_losses",
]
