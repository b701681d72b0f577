"""Feature interpretation: dashboards (top examples, quantiles, histograms, logits, de-embeddings)."""

from __future__ import annotations

from sparsecircuits.interpret.dashboards import (
    DashboardConfig,
    FeatureDashboards,
    compute_dashboards,
    deembedding_tables,
    output_logit_tables,
)
from sparsecircuits.interpret.store import DashboardStore, load_dashboards, save_dashboards

__all__ = [
    "DashboardConfig",
    "DashboardStore",
    "FeatureDashboards",
    "compute_dashboards",
    "deembedding_tables",
    "load_dashboards",
    "output_logit_tables",
    "save_dashboards",
]
