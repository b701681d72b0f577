"""Feature interpretation: dashboards (top examples, quantiles, histograms, logits, de-embeddings).

dashboards = compute_dashboards(adapter, {"layer0": transcoder}, token_batches)
save_dashboards(dashboards, "out/dashboards")
store = load_dashboards("out/dashboards"); store.feature("layer0", 17)
"""

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
