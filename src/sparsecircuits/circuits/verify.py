"""Check attributions by intervention: ablate each node, compare the target's change
(docs/internals.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from sparsecircuits.circuits.attribution import Target, attribute, target_rows
from sparsecircuits.circuits.nodes import EmbedNode, FeatureNode, HeadNode, Node
from sparsecircuits.circuits.paths import CircuitGraph, GraphNode
from sparsecircuits.circuits.replacement import Edits, ReplacementModel, ReplacementState


@dataclass
class VerificationRow:
    """One node: its attribution and the measured effect of ablating it (minus the target change)."""

    label: str
    attribution: float
    effect: float


@dataclass
class VerificationReport:
    """Attribution vs. ablation for a set of nodes, with Pearson r and max relative error."""

    target: str
    setting: str
    rows: list[VerificationRow] = field(default_factory=list)
    pearson: float = float("nan")
    max_rel_error: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        for key in ("pearson", "max_rel_error"):
            if math.isnan(data[key]):
                data[key] = None
        return data


def pearson(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Return Pearson's r of two equal-length sequences (nan when undefined)."""
    a = torch.as_tensor(x, dtype=torch.float64)
    b = torch.as_tensor(y, dtype=torch.float64)
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def max_relative_error(
    attributions: Sequence[float] | Tensor, effects: Sequence[float] | Tensor
) -> float:
    """Return `max |a - e| / max |e|` (nan for no rows)."""
    a = torch.as_tensor(attributions, dtype=torch.float64)
    e = torch.as_tensor(effects, dtype=torch.float64)
    if a.numel() == 0:
        return float("nan")
    scale = float(e.abs().max())
    return float((a - e).abs().max()) / max(scale, 1e-12)


def ablation_effects(
    model: ReplacementModel,
    state: ReplacementState,
    target: Target,
    nodes: Sequence[Node],
    row: int = 0,
    freeze: bool = True,
    features: Literal["frozen", "linear", "live"] = "linear",
) -> Tensor:
    """Return `[len(nodes)]`: minus the change of target row `row` when each node alone is ablated.

    One batched forward over copies of the prompt.
    """
    if not nodes:
        return torch.zeros(0)
    prompt = int(target.batch[row])
    copies = len(nodes)
    sub = state.select([prompt] * copies)
    edits = Edits()
    for k, node in enumerate(nodes):
        edits = edits + node.ablation(batch=k)
    rows_target = target_rows(target, row, copies)
    clean = rows_target.evaluate(model.run_with(sub, freeze=freeze, features=features))
    ablated = rows_target.evaluate(model.run_with(sub, edits, freeze=freeze, features=features))
    return (clean - ablated).detach().cpu()


def verify_nodes(
    model: ReplacementModel,
    state: ReplacementState,
    target: Target,
    nodes: Sequence[Node],
    attributions: Sequence[float] | None = None,
    row: int = 0,
    mode: Literal["frozen", "linear"] = "linear",
    freeze: bool = True,
) -> VerificationReport:
    """Compare attributions of `nodes` (exact ones from `attribute` when None) with ablations.

    The ablations run with `freeze` and features in `mode` ("live" when `freeze=False`).
    """
    if attributions is None:
        attr = attribute(model, state, target, mode=mode)
        attributions = [attr.node_value(node, row) for node in nodes]
    effects = ablation_effects(
        model, state, target, nodes, row, freeze=freeze, features=mode if freeze else "live"
    )
    rows = [
        VerificationRow(node.label, float(a), float(e))
        for node, a, e in zip(nodes, attributions, effects.tolist(), strict=False)
    ]
    setting = (
        f"{'frozen' if freeze else 'live'} attention/norms, {mode if freeze else 'live'} features"
    )
    return VerificationReport(
        target.label,
        setting,
        rows,
        pearson(attributions, effects),
        max_relative_error(attributions, effects),
    )


def graph_node_to_node(node: GraphNode) -> Node | None:
    """Return the ablatable node of a graph node (a head node covers every destination), else None."""
    if node.kind == "feature":
        return FeatureNode(int(node.layer), node.pos, int(node.index))  # type: ignore[arg-type]
    if node.kind == "head":
        return HeadNode(int(node.layer), int(node.index), dest=None, src=node.src)  # type: ignore[arg-type]
    if node.kind == "embed":
        return EmbedNode(node.pos)
    return None


@dataclass
class GraphVerification:
    """Three checks of a graph's top nodes: exact (frozen attribution vs frozen ablation), graph
    (path-sum contributions vs frozen ablation), live (frozen attribution vs unfrozen ablation)."""

    exact: VerificationReport
    graph: VerificationReport
    live: VerificationReport

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {key: getattr(self, key).to_dict() for key in ("exact", "graph", "live")}


def verify_graph(
    model: ReplacementModel,
    state: ReplacementState,
    target: Target,
    graph: CircuitGraph,
    top_n: int = 10,
    row: int | None = None,
) -> GraphVerification:
    """Ablate the graph's `top_n` feature / head / embedding nodes (all frozen, features linear)."""
    row = int(graph.meta.get("row", 0)) if row is None else row
    chosen = [(g, graph_node_to_node(g)) for g in graph.top_nodes(top_n)]
    pairs = [(g, n) for g, n in chosen if n is not None]
    nodes = [n for _, n in pairs]
    attr = attribute(model, state, target, mode="linear")
    exact_attr = [attr.node_value(n, row) for n in nodes]
    exact = verify_nodes(model, state, target, nodes, exact_attr, row, mode="linear")
    graph_report = verify_nodes(
        model, state, target, nodes, [g.contrib for g, _ in pairs], row, mode="linear"
    )
    graph_report.setting += " (graph path sums)"
    live = verify_nodes(model, state, target, nodes, exact_attr, row, freeze=False)
    return GraphVerification(exact, graph_report, live)
