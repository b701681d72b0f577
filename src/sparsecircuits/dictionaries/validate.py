"""Checks on a dictionary's parameters as read from disk, before they are loaded.

Shapes against the config are checked where the state dict is built (`io.load`); this module
checks the values: every floating tensor finite (a zero JumpReLU threshold, stored as
`log_threshold = -inf`, is the one allowed infinity), and SAELens JumpReLU thresholds not
negative. SAELens computes `ReLU(pre) * (pre > threshold)`, so a negative threshold acts exactly
as a zero one; it is raised to zero, with a warning, instead of becoming `log(negative) = NaN`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError

_log = logging.getLogger("sparsecircuits")


def check_parameters(tensors: dict[str, Tensor], where: str) -> None:
    """Validate (and, for negative SAELens thresholds, repair in place) the tensors read from
    `where`; raise `SparseCircuitsError` naming the first tensor with NaN or infinite values."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor)
        if name.endswith("log_threshold"):
            bad &= tensor != float("-inf")  # exp(-inf) = 0: a zero threshold
        if bool(bad.any()):
            count = int(bad.sum())
            raise SparseCircuitsError(
                f"{where}: {name} holds {count} NaN or infinite value(s) of {tensor.numel()}; "
                "the file is damaged or its training diverged: re-export or retrain it"
            )
    threshold = tensors.get("threshold")
    if threshold is not None and bool((threshold < 0).any()):
        negative = threshold < 0
        _log.warning(
            "%s: %d JumpReLU threshold(s) are negative (lowest %.4g); SAELens applies ReLU first, "
            "so they act as 0 and are loaded as 0",
            where,
            int(negative.sum()),
            float(threshold.min()),
        )
        tensors["threshold"] = threshold.clamp_min(0)
