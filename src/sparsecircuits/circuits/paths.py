"""The paper's greedy path search and path -> graph merge (Dunefsky et al. 2024, App. D.5,
Alg. 1-2; docs/internals.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparsecircuits.circuits.attribution import (
    Decomposition,
    ResidVector,
    Target,
    decompose,
    pull_back_feature,
    pull_back_head,
)
from sparsecircuits.circuits.nodes import FeatureNode, HeadNode
from sparsecircuits.circuits.replacement import ReplacementModel, ReplacementState
from sparsecircuits.errors import SparseCircuitsError

EXPANDABLE = ("target", "feature", "head")


@dataclass
class PathNode:
    """One node of a path: `kind` target / feature / head / embed / skip, its graph `key`, and its
    contribution to the target along this path. `vector` (for expandable nodes) is the
    frozen-norm linear form whose value is `contrib`."""

    kind: str
    key: str
    contrib: float
    layer: int | None = None
    pos: int = 0
    index: int | None = None
    src: int | None = None
    dest: int | None = None
    activation: float | None = None
    vector: ResidVector | None = field(default=None, repr=False)


@dataclass
class Expansion:
    """What one expanded path prefix decomposed into besides its kept children."""

    contrib: float
    error: float
    bias: float


@dataclass
class PathSearchResult:
    """Paths per iteration (`paths[i]` have `i + 2` nodes, root first) and every expansion."""

    paths: list[list[list[PathNode]]]
    expansions: dict[tuple[str, ...], Expansion]
    target_label: str
    row: int
    prompt_index: int
    params: dict[str, Any]

    def all_paths(self) -> list[list[PathNode]]:
        """Return every kept path, shortest first."""
        return [p for level in self.paths for p in level]


def _children(
    state: ReplacementState,
    dec: Decomposition,
    k: int,
    rank: Literal["value", "abs"],
    ignore_bos: bool,
) -> list[PathNode]:
    """The `k` largest one-hop contributions of `dec` (features, heads, embedding, skips) as
    path nodes."""
    pos = int(dec.source.pos[0])
    batch = int(dec.source.batch[0])
    kinds = ("feature", "head", "embed", "skip")
    out = []
    for c in dec.top(k, by=rank, kinds=kinds, ignore_bos=ignore_bos):
        n = c.node
        if isinstance(n, FeatureNode):
            act = float(state.feature_acts[n.layer][batch, pos, n.feature])
            out.append(
                PathNode("feature", n.label, c.value, n.layer, pos, n.feature, activation=act)
            )
        elif isinstance(n, HeadNode):
            assert n.src is not None
            key = f"attn{n.layer}[{n.head}]@{n.src}"
            out.append(PathNode("head", key, c.value, n.layer, n.src, n.head, src=n.src, dest=pos))
        elif c.kind == "embed":
            out.append(PathNode("embed", f"embed@{pos}", c.value, None, pos))
        else:
            layer = int(c.label[4 : c.label.index("@")])
            out.append(PathNode("skip", c.label, c.value, layer, pos))
    return out


def _child_vector(
    model: ReplacementModel, state: ReplacementState, parent: ResidVector, child: PathNode
) -> ResidVector | None:
    if child.kind == "feature":
        return pull_back_feature(model, state, parent, child.layer, child.index)  # type: ignore[arg-type]
    if child.kind == "head":
        return pull_back_head(model, state, parent, child.layer, child.index, child.src)  # type: ignore[arg-type]
    return None


def search_paths(
    model: ReplacementModel,
    state: ReplacementState,
    target: Target,
    row: int = 0,
    num_iters: int = 3,
    num_branches: int = 15,
    min_contrib: float = 0.0,
    min_fraction: float = 0.0,
    ignore_bos: bool = True,
    cap: bool = False,
    rank: Literal["value", "abs"] = "value",
) -> PathSearchResult:
    """Run the greedy beam search for target row `row`; return the kept paths and expansions.

    `num_iters` path lengths beyond the root; `num_branches` children per node and paths kept per
    round; children below `min_contrib` or `min_fraction × |target|` are dropped. `rank="value"`
    (the paper) keeps positive contributions, "abs" negative ones too; `ignore_bos` skips position
    0; `cap` caps a child at the smallest feature contribution on its path (no longer additive).
    """
    if num_iters < 1 or num_branches < 1:
        raise SparseCircuitsError("num_iters and num_branches must be at least 1")
    if not 0 <= row < len(target):
        raise SparseCircuitsError(f"row {row} out of range; the target has {len(target)} rows")
    root_vec = target.resid_vector(model, state).row(row)
    value = float(target.evaluate(state)[row])
    pos = int(root_vec.pos[0])
    root = PathNode("target", "target", value, None, pos, vector=root_vec)
    threshold = max(min_contrib, min_fraction * abs(value))
    frontier: list[list[PathNode]] = [[root]]
    levels: list[list[list[PathNode]]] = []
    expansions: dict[tuple[str, ...], Expansion] = {}
    for _ in range(num_iters):
        candidates: list[list[PathNode]] = []
        for path in frontier:
            node = path[-1]
            assert node.vector is not None
            dec = decompose(model, state, node.vector)
            children = _children(state, dec, num_branches, rank, ignore_bos)
            expansions[tuple(p.key for p in path)] = Expansion(
                contrib=node.contrib,
                error=float(dec.error_total[0]),
                bias=float(dec.bias[0] + dec.constant[0]),
            )
            ceiling = min((p.contrib for p in path[1:] if p.kind == "feature"), default=None)
            for child in children:
                scale = 1.0
                if cap and ceiling is not None and ceiling > 0 and child.contrib > ceiling:
                    scale = ceiling / child.contrib
                    child.contrib = ceiling
                if abs(child.contrib) < threshold or (rank == "value" and child.contrib <= 0):
                    continue
                vec = _child_vector(model, state, node.vector, child)
                child.vector = None if vec is None else (vec if scale == 1.0 else vec.scaled(scale))
                candidates.append(path + [child])
        key_fn = (lambda p: p[-1].contrib) if rank == "value" else (lambda p: abs(p[-1].contrib))
        kept = sorted(candidates, key=key_fn, reverse=True)[:num_branches]
        if not kept:
            break
        levels.append(kept)
        frontier = [p for p in kept if p[-1].kind in EXPANDABLE]
        if not frontier:
            break
    params = {
        "num_iters": num_iters,
        "num_branches": num_branches,
        "min_contrib": min_contrib,
        "min_fraction": min_fraction,
        "ignore_bos": ignore_bos,
        "cap": cap,
        "rank": rank,
    }
    return PathSearchResult(levels, expansions, target.label, row, int(target.batch[row]), params)


@dataclass
class GraphNode:
    """A merged graph node: `contrib` is summed over the distinct path prefixes that end at it."""

    key: str
    kind: str
    contrib: float = 0.0
    layer: int | None = None
    pos: int = 0
    index: int | None = None
    src: int | None = None
    dests: list[int] = field(default_factory=list)
    activation: float | None = None
    parent: str | None = None


@dataclass
class CircuitGraph:
    """Nodes by key, edges `(child, parent) -> weight`, and metadata (prompt, tokens, target, params)."""

    nodes: dict[str, GraphNode]
    edges: dict[tuple[str, str], float]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Return `{"nodes": [...], "edges": [{"source", "target", "weight"}], "metadata": {...}}`."""
        return {
            "nodes": [asdict(n) for n in self.nodes.values()],
            "edges": [{"source": c, "target": p, "weight": w} for (c, p), w in self.edges.items()],
            "metadata": self.meta,
        }

    def save_json(self, path: str | Path) -> Path:
        """Write the graph JSON to `path` and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    def top_nodes(
        self, k: int = 10, kinds: Sequence[str] = ("feature", "head", "embed")
    ) -> list[GraphNode]:
        """Return the `k` nodes of `kinds` with the largest |contrib|."""
        nodes = [n for n in self.nodes.values() if n.kind in kinds]
        return sorted(nodes, key=lambda n: abs(n.contrib), reverse=True)[:k]


def paths_to_graph(result: PathSearchResult, meta: dict[str, Any] | None = None) -> CircuitGraph:
    """Merge the search's paths into a `CircuitGraph` (paper Alg. 2), with an error, a bias and a
    pruned-rest node under every expanded node."""
    nodes: dict[str, GraphNode] = {}
    edges: dict[tuple[str, str], float] = {}
    seen: set[tuple[str, ...]] = set()
    kept_children: dict[tuple[str, ...], float] = {}

    def node_for(p: PathNode) -> GraphNode:
        if p.key not in nodes:
            nodes[p.key] = GraphNode(
                p.key, p.kind, 0.0, p.layer, p.pos, p.index, p.src, [], p.activation
            )
        return nodes[p.key]

    all_paths = result.all_paths()
    if all_paths:
        root = node_for(all_paths[0][0])
        root.contrib = all_paths[0][0].contrib
    for path in all_paths:
        for i in range(1, len(path)):
            prefix = tuple(p.key for p in path[: i + 1])
            if prefix in seen:
                continue
            seen.add(prefix)
            child, parent = path[i], path[i - 1]
            g = node_for(child)
            g.contrib += child.contrib
            if child.dest is not None and child.dest not in g.dests:
                g.dests.append(child.dest)
            edges[(child.key, parent.key)] = edges.get((child.key, parent.key), 0.0) + child.contrib
            kept_children[prefix[:-1]] = kept_children.get(prefix[:-1], 0.0) + child.contrib
    for prefix, exp in result.expansions.items():
        parent_key = prefix[-1]
        if parent_key not in nodes:
            continue
        prune = exp.contrib - exp.error - exp.bias - kept_children.get(prefix, 0.0)
        for kind, value in (("err", exp.error), ("bias", exp.bias), ("prune", prune)):
            key = f"{kind}:{parent_key}"
            owner = nodes[parent_key]
            if key not in nodes:
                nodes[key] = GraphNode(key, kind, 0.0, owner.layer, owner.pos, parent=parent_key)
            nodes[key].contrib += value
            edges[(key, parent_key)] = edges.get((key, parent_key), 0.0) + value
    info = {
        "target": result.target_label,
        "row": result.row,
        "prompt_index": result.prompt_index,
        **result.params,
        **(meta or {}),
    }
    return CircuitGraph(nodes, edges, info)


def path_strings(result: PathSearchResult, limit: int | None = None) -> list[str]:
    """Return printable paths, newest node first: `mlp0tc[5]@3 (1.23) <- attn1[0]@3 (2.0) <- target (4.1)`."""
    lines = []
    for path in sorted(result.all_paths(), key=lambda p: -abs(p[-1].contrib))[:limit]:
        lines.append(" <- ".join(f"{p.key} ({p.contrib:.3g})" for p in reversed(path)))
    return lines


def _node_y(node: GraphNode, n_layers: int) -> float:
    if node.kind == "target":
        return 2 * n_layers + 0.5
    if node.kind == "embed":
        return -1.0
    if node.kind == "head":
        return 2.0 * (node.layer or 0)
    if node.kind in ("feature", "skip"):
        return 2.0 * (node.layer or 0) + 1
    return float("nan")


_NODE_COLORS = {
    "target": "black",
    "feature": "tab:orange",
    "head": "tab:green",
    "embed": "tab:purple",
    "skip": "tab:olive",
    "err": "tab:gray",
    "bias": "lightgray",
    "prune": "silver",
}


def plot_graph(
    graph: CircuitGraph,
    path: str | Path,
    tokens: Sequence[str] | None = None,
    n_layers: int | None = None,
    max_labels: int = 40,
) -> Path:
    """Draw the graph as a PNG: x = token position, y = layer (attention 2L, MLP 2L+1), error nodes
    beside their parent; edge width ∝ |weight|, blue positive, red negative. Returns the path."""
    from sparsecircuits.evaluation.plots import saved_figure

    n_layers = n_layers or int(
        graph.meta.get("n_layers", 1 + max((n.layer or 0) for n in graph.nodes.values()))
    )
    main = sorted(
        (n for n in graph.nodes.values() if n.parent is None), key=lambda n: -abs(n.contrib)
    )
    coords, centres, width = _layout(graph, main, tokens, n_layers)
    size = (min(40.0, max(8.0, 0.9 * width)), 1.0 * (2 * n_layers + 3))
    with saved_figure(path, figsize=size, dpi=110) as (_, ax):
        _draw_edges(ax, graph, coords)
        _draw_nodes(ax, graph, coords, labelled={n.key for n in main[:max_labels]})
        _label_axes(ax, n_layers, centres, tokens)
        ax.set_title(f"paths to {graph.meta.get('target', 'target')}", fontsize=9)
        ax.grid(alpha=0.2)
    return Path(path)


def _layout(
    graph: CircuitGraph,
    main: list[GraphNode],
    tokens: Sequence[str] | None,
    n_layers: int,
) -> tuple[dict[str, tuple[float, float]], list[float], float]:
    """`(coords {key: (x, y)}, column centre per position, total width)`: the `main` nodes
    (no parent) spread across their position's column, each error node just below its parent."""
    groups: dict[tuple[int, float], list[GraphNode]] = {}
    for node in main:
        groups.setdefault((node.pos, _node_y(node, n_layers)), []).append(node)
    n_pos = max([len(tokens or [])] + [n.pos + 1 for n in main])
    # each position gets a column as wide as its most crowded row, so nodes never overlap
    widths = [1.0] * n_pos
    for (pos, _), members in groups.items():
        widths[pos] = max(widths[pos], 0.55 * len(members))
    centres, left = [], 0.0
    for w in widths:
        centres.append(left + w / 2)
        left += w
    coords: dict[str, tuple[float, float]] = {}
    for (pos, y), members in groups.items():
        step = widths[pos] / max(len(members), 1)
        for i, node in enumerate(members):
            coords[node.key] = (centres[pos] - widths[pos] / 2 + step * (i + 0.5), y)
    for node in graph.nodes.values():
        if node.parent is not None and node.parent in coords:
            px, py = coords[node.parent]
            offset = {"err": -0.12, "bias": 0.0, "prune": 0.12}.get(node.kind, 0.0)
            coords[node.key] = (px + offset, py - 0.45)
    return coords, centres, left


def _draw_edges(ax: Any, graph: CircuitGraph, coords: dict[str, tuple[float, float]]) -> None:
    """One line per edge between placed nodes: width ∝ |weight|, blue positive, red negative."""
    max_w = max((abs(w) for w in graph.edges.values()), default=1.0) or 1.0
    for (child, parent), w in graph.edges.items():
        if child not in coords or parent not in coords:
            continue
        (x0, y0), (x1, y1) = coords[child], coords[parent]
        ax.plot(
            [x0, x1],
            [y0, y1],
            color="tab:blue" if w >= 0 else "tab:red",
            alpha=0.6,
            linewidth=0.4 + 5 * abs(w) / max_w,
            zorder=1,
        )


def _draw_nodes(
    ax: Any, graph: CircuitGraph, coords: dict[str, tuple[float, float]], labelled: set[str]
) -> None:
    """Main nodes as circles sized by |contrib|, error nodes as small squares; `labelled` keys
    get their key and contribution written beside them."""
    max_c = max((abs(n.contrib) for n in graph.nodes.values()), default=1.0) or 1.0
    for node in graph.nodes.values():
        if node.key not in coords:
            continue
        x, y = coords[node.key]
        size = 12 if node.parent is not None else 30 + 300 * abs(node.contrib) / max_c
        ax.scatter(
            [x],
            [y],
            s=size,
            marker="s" if node.parent is not None else "o",
            color=_NODE_COLORS.get(node.kind, "gray"),
            zorder=2,
            edgecolors="black",
            linewidths=0.3,
        )
        if node.key in labelled:
            ax.annotate(
                f"{node.key} ({node.contrib:.2g})",
                (x, y),
                fontsize=6,
                ha="left",
                va="bottom",
                rotation=35,
                xytext=(2, 4),
                textcoords="offset points",
            )


def _label_axes(ax: Any, n_layers: int, centres: list[float], tokens: Sequence[str] | None) -> None:
    """Layer names on the y axis, the prompt's tokens (when given) on the x axis."""
    ax.set_yticks(
        [-1]
        + [2 * i for i in range(n_layers)]
        + [2 * i + 1 for i in range(n_layers)]
        + [2 * n_layers + 0.5]
    )
    ax.set_yticklabels(
        ["embed"]
        + [f"attn{i}" for i in range(n_layers)]
        + [f"mlp{i}" for i in range(n_layers)]
        + ["target"]
    )
    if tokens is not None:
        ax.set_xticks(centres[: len(tokens)])
        ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=60, fontsize=7)


def graph_tokens(model: ReplacementModel, state: ReplacementState, prompt_index: int) -> list[str]:
    """Return the decoded tokens of one prompt (for plot axes and metadata)."""
    tokenizer = model.adapter.tokenizer
    return [tokenizer.decode([int(t)]) for t in state.input_ids[prompt_index]]
