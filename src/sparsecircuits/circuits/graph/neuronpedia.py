"""Neuronpedia / Anthropic attribution-graph JSON: dataclasses, export, import, validation, and
`to_neuronpedia`; unknown keys survive in `extra` (node ids in docs/internals.md)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecircuits import __version__
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.files import atomic_write_text

if TYPE_CHECKING:
    from sparsecircuits.circuits.graph.build import AttributionGraph
    from sparsecircuits.circuits.graph.prune import PruneResult

FEATURE_TYPE_TRANSCODER = "cross layer transcoder"  # circuit-tracer's name for per-layer ones too
FEATURE_TYPE_ERROR = "mlp reconstruction error"
FEATURE_TYPE_EMBEDDING = "embedding"
FEATURE_TYPE_LOGIT = "logit"

SCHEMA_FILE = "neuronpedia-graph-schema.json"


@dataclass
class Generator:
    """`metadata.info.generator`: the program that made the graph."""

    name: str | None = None
    version: str | None = None
    url: str | None = None
    email: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphInfo:
    """`metadata.info`: free information shown to the user."""

    description: str | None = None
    creator_name: str | None = None
    creator_url: str | None = None
    source_urls: list[Any] | None = None
    generator: Generator | None = None
    create_time_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureDetails:
    """`metadata.feature_details`: where a viewer fetches feature dashboards."""

    feature_json_base_url: str | None = None
    neuronpedia_source_set: str | None = None
    neuronpedia_lorsa_source_set: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSettings:
    """`metadata.generation_settings`: how the graph was computed (information only)."""

    max_n_logits: int | None = None
    desired_logit_prob: float | None = None
    batch_size: int | None = None
    max_feature_nodes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruningSettings:
    """`metadata.pruning_settings`: thresholds used to prune (information only)."""

    node_threshold: float | None = None
    edge_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphMetadata:
    """`metadata`: the prompt and what model/dictionaries the graph belongs to."""

    slug: str
    scan: str
    prompt_tokens: list[str]
    prompt: str
    feature_details: FeatureDetails | None = None
    node_threshold: float | None = None
    info: GraphInfo | None = None
    generation_settings: GenerationSettings | None = None
    pruning_settings: PruningSettings | None = None
    transcoder_list: list[str] | None = None
    schema_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class QParams:
    """`qParams`: the saved viewer state (pinned subgraph, supernodes, clicked node)."""

    pinnedIds: list[str] | None = None  # noqa: N815 - JSON key
    supernodes: list[Any] | None = None
    linkType: str | None = None  # noqa: N815
    clickedId: str | None = None  # noqa: N815
    sg_pos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphNode:
    """One node: a transcoder feature, an MLP error, a token embedding or an output logit."""

    node_id: str
    feature: int | None
    layer: str | int
    ctx_idx: int
    feature_type: str
    jsNodeId: str  # noqa: N815
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None
    token_prob: float | None = None
    is_target_logit: bool | None = None
    run_idx: int | None = None
    reverse_ctx_idx: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphLink:
    """One edge: `weight` = direct effect of `source` on `target` (signed, unnormalised)."""

    source: str
    target: str
    weight: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NeuronpediaGraph:
    """A whole attribution graph as Neuronpedia's graph JSON holds it."""

    metadata: GraphMetadata
    qParams: QParams = field(default_factory=lambda: default_qparams())  # noqa: N815
    nodes: list[GraphNode] = field(default_factory=list)
    links: list[GraphLink] = field(default_factory=list)

    def save(self, path: str | Path, *, indent: int | None = None) -> Path:
        """Write the graph JSON to `path`; return the path."""
        return save_graph(self, path, indent=indent)


def default_qparams() -> QParams:
    """Return the qParams circuit-tracer writes for a fresh graph."""
    return QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")


# the nested objects, by the type name their fields are annotated with
_NESTED = {
    c.__name__: c
    for c in (Generator, GraphInfo, FeatureDetails, GenerationSettings, PruningSettings)
}
_ALWAYS_WRITTEN = {(GraphNode, "influence"), (GraphNode, "activation")}


def _to_mapping(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        value = getattr(obj, f.name)
        if (
            value is None
            and (type(obj), f.name) not in _ALWAYS_WRITTEN
            and f.default is not dataclasses.MISSING
        ):
            continue
        if dataclasses.is_dataclass(value):
            value = _to_mapping(value)
        out[f.name] = value
    out.update(obj.extra)
    return out


def _from_mapping(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SparseCircuitsError(
            f"graph JSON: {where} must be an object; fix or regenerate the file"
        )
    names = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
    missing = [
        n
        for n, f in names.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and n not in data
    ]
    if missing:
        raise SparseCircuitsError(f"graph JSON: {where} lacks required key(s) {', '.join(missing)}")
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            extra[key] = value
            continue
        annotated = str(names[key].type).split(" | ")[0]  # "float", "Generator", "list[str]", ...
        if annotated in _NESTED and value is not None:
            value = _from_mapping(_NESTED[annotated], value, f"{where}.{key}")
        elif annotated == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs, extra=extra)


def export_graph(graph: NeuronpediaGraph) -> dict[str, Any]:
    """Return `graph` as a JSON-ready dict in Neuronpedia's graph schema."""
    return {
        "metadata": _to_mapping(graph.metadata),
        "qParams": _to_mapping(graph.qParams),
        "nodes": [_to_mapping(n) for n in graph.nodes],
        "links": [_to_mapping(link) for link in graph.links],
    }


def import_graph(data: dict[str, Any]) -> NeuronpediaGraph:
    """Return the `NeuronpediaGraph` held by a graph JSON dict (unknown keys kept in `extra`)."""
    if not isinstance(data, dict):
        raise SparseCircuitsError(
            "graph JSON must be an object with metadata, qParams, nodes, links"
        )
    missing = [k for k in ("metadata", "qParams", "nodes", "links") if k not in data]
    if missing:
        raise SparseCircuitsError(
            f"graph JSON lacks {', '.join(missing)}; is this an attribution graph file?"
        )
    if not isinstance(data["nodes"], list) or not isinstance(data["links"], list):
        raise SparseCircuitsError("graph JSON: nodes and links must be lists")
    return NeuronpediaGraph(
        metadata=_from_mapping(GraphMetadata, data["metadata"], "metadata"),
        qParams=_from_mapping(QParams, data["qParams"], "qParams"),
        nodes=[_from_mapping(GraphNode, n, f"nodes[{i}]") for i, n in enumerate(data["nodes"])],
        links=[_from_mapping(GraphLink, e, f"links[{i}]") for i, e in enumerate(data["links"])],
    )


def save_graph(graph: NeuronpediaGraph, path: str | Path, *, indent: int | None = None) -> Path:
    """Write `graph` as JSON to `path` (parent folders created) atomically: a reader such as the
    viewer sees the previous file or the whole new one, never a part; return the path."""
    return atomic_write_text(path, json.dumps(export_graph(graph), indent=indent, allow_nan=False))


def load_graph(path: str | Path, *, validate: bool = False) -> NeuronpediaGraph:
    """Read a graph JSON file; with `validate=True` check it against the schema first."""
    path = Path(path)
    if not path.is_file():
        raise SparseCircuitsError(f"graph file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SparseCircuitsError(
            f"graph file {path} is not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if validate:
        validate_graph_json(data)
    return import_graph(data)


@lru_cache(maxsize=1)
def graph_schema() -> dict[str, Any]:
    """Return Neuronpedia's graph JSON schema (draft-07) shipped with the package."""
    return json.loads((Path(__file__).parent / "schema" / SCHEMA_FILE).read_text())


def validate_graph_json(data: dict[str, Any]) -> None:
    """Raise `SparseCircuitsError` naming the first violation if `data` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft7Validator(graph_schema())
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise SparseCircuitsError(
            f"graph JSON breaks Neuronpedia's schema at {where}: {error.message}"
        )


def with_subgraph(data: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of graph JSON `data` carrying a saved subgraph `state` the way Neuronpedia
    stores one: `qParams` gets its `pinnedIds`, `supernodes` (`[label, node_id, ...]` lists) and
    `clickedId`, and every feature node whose `"<layer>_<feature>"` key has a label in
    `state["clerps"]` gets it as its `clerp`."""
    out = json.loads(json.dumps(data))
    out["qParams"] = {
        **out.get("qParams", {}),
        "pinnedIds": list(state.get("pinnedIds", [])),
        "supernodes": [list(group) for group in state.get("supernodes", [])],
        "linkType": "both",
        "clickedId": str(state.get("clickedId", "") or ""),
        "sg_pos": "",
    }
    labels = state.get("clerps", {})
    for node in out["nodes"]:
        layer, _, rest = str(node.get("node_id", "")).partition("_")
        key = f"{layer}_{rest.split('_')[0]}" if rest else ""
        if key in labels:
            node["clerp"] = labels[key]
    return out


def cantor_pair(layer: int, feature: int) -> int:
    """Return Neuronpedia's `feature` number for (layer, feature index): (l+f)(l+f+1)/2 + f."""
    s = layer + feature
    return s * (s + 1) // 2 + feature


def _node(
    node_id: str,
    feature: int,
    layer: str,
    pos: int,
    feature_type: str,
    js_node_id: str,
    clerp: str,
    **fields: Any,
) -> GraphNode:
    """A node with circuit-tracer's defaults for one run (`fields` override them)."""
    defaults: dict[str, Any] = {
        "activation": None,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
    }
    return GraphNode(
        node_id, feature, layer, pos, feature_type, js_node_id, clerp, **(defaults | fields)
    )


def feature_node(
    layer: int,
    feature: int,
    pos: int,
    n_pos: int,
    *,
    activation: float | None,
    influence: float | None,
    clerp: str = "",
) -> GraphNode:
    """Return the node of transcoder feature `feature` of `layer` at prompt position `pos`."""
    return _node(
        f"{layer}_{feature}_{pos}",
        cantor_pair(layer, feature),
        str(layer),
        pos,
        FEATURE_TYPE_TRANSCODER,
        f"{layer}_{feature}-0",
        clerp,
        influence=influence,
        activation=activation,
        reverse_ctx_idx=n_pos - 1 - pos,
    )


def error_node(
    layer: int, pos: int, n_pos: int, token: str, *, influence: float | None
) -> GraphNode:
    """Return the node of the MLP reconstruction error of `layer` at position `pos`."""
    return _node(
        f"{layer}_-1_{pos}",
        -1,
        str(layer),
        pos,
        FEATURE_TYPE_ERROR,
        f"{layer}_-1-{pos}",
        f'Err: mlp "{token}"',
        influence=influence,
        reverse_ctx_idx=n_pos - 1 - pos,
    )


def token_node(
    token_id: int, pos: int, n_pos: int, token: str, *, influence: float | None
) -> GraphNode:
    """Return the node of the token embedding at position `pos`."""
    return _node(
        f"E_{token_id}_{pos}",
        pos,
        "E",
        pos,
        FEATURE_TYPE_EMBEDDING,
        f"E_{token_id}-{pos}",
        f'Emb: "{token}"',
        influence=influence,
        reverse_ctx_idx=n_pos - 1 - pos,
    )


def logit_node(
    vocab_idx: int, pos: int, n_layers: int, token: str, prob: float, *, is_target: bool
) -> GraphNode:
    """Return the output-logit node of token `vocab_idx` at the last position `pos`; the Anthropic
    frontend parses token and probability out of its clerp `Output "<tok>" (p=0.123)`."""
    return _node(
        f"{n_layers + 1}_{vocab_idx}_{pos}",
        vocab_idx,
        str(n_layers + 1),
        pos,
        FEATURE_TYPE_LOGIT,
        f"L_{vocab_idx}-{pos}",
        f'Output "{token}" (p={prob:.3f})',
        influence=None,
        token_prob=prob,
        is_target_logit=is_target,
        reverse_ctx_idx=0,
    )


def to_neuronpedia(
    graph: AttributionGraph,
    pruned: PruneResult | None = None,
    *,
    slug: str = "graph",
    scan: str = "",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    info: dict[str, Any] | None = None,
    max_links: int | None = -1,
) -> NeuronpediaGraph:
    """Return the pruned `graph` in Neuronpedia's graph JSON model (pruned with the thresholds
    when `pruned` is not given): the kept nodes with a kept link, every token and logit node, and
    the kept links between them, at most `max_links` of them (default `graph.config.max_links`;
    None: all), the strongest by `|normalised weight| x (target influence + logit weight)`; the
    metadata records `graph.config`, the thresholds and the link cap."""
    pruned = pruned or graph.prune(node_threshold, edge_threshold)
    cap = graph.config.max_links if max_links == -1 else max_links
    nodes = _kept_nodes(graph, pruned)
    n_kept = int(pruned.edge_mask.sum())
    links, connected = _kept_links(graph, pruned, nodes, cap)
    used = [
        node
        for i, node in sorted(nodes.items())
        if i in connected or node.feature_type in (FEATURE_TYPE_EMBEDDING, FEATURE_TYPE_LOGIT)
    ]
    gen = graph.config
    metadata = GraphMetadata(
        slug=slug,
        scan=scan,
        prompt_tokens=list(graph.prompt_tokens),
        prompt=graph.prompt,
        node_threshold=node_threshold,
        info=GraphInfo(
            generator=Generator(name="sparsecircuits", version=__version__),
            create_time_ms=float(int(time.time() * 1000)),
            extra=dict(info or {}),
        ),
        generation_settings=GenerationSettings(
            max_n_logits=gen.max_n_logits,
            desired_logit_prob=gen.desired_logit_prob,
            batch_size=gen.batch_size,
            max_feature_nodes=graph.config.max_feature_nodes,
            extra={
                "row_mass": gen.row_mass,
                "max_edges_per_row": gen.max_edges_per_row,
                "edge_budget": gen.edge_budget,
                "skip_bos": gen.skip_bos,
                "store": gen.store,
                "n_active_features": graph.n_active_features,
                "n_feature_nodes": graph.n_features,
            },
        ),
        pruning_settings=PruningSettings(
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            extra={"max_links": cap, "links_before_cap": n_kept, "links_written": len(links)},
        ),
        schema_version=1,
    )
    return NeuronpediaGraph(metadata=metadata, qParams=default_qparams(), nodes=used, links=links)


def _kept_nodes(graph: AttributionGraph, pruned: PruneResult) -> dict[int, GraphNode]:
    """`{node index: node}` of the nodes `pruned` keeps (see `AttributionGraph` for the order)."""
    n_feat, n_err, n_pos = graph.n_features, graph.n_errors, graph.n_pos
    cumulative = pruned.cumulative_scores.tolist()
    nodes: dict[int, GraphNode] = {}
    for i in pruned.node_mask.nonzero(as_tuple=True)[0].tolist():
        if i < n_feat:
            layer, pos, feat = graph.active_features[i].tolist()
            nodes[i] = feature_node(
                layer,
                feat,
                pos,
                n_pos,
                activation=float(graph.activations[i]),
                influence=cumulative[i],
            )
        elif i < n_feat + n_err:
            layer, pos = divmod(i - n_feat, n_pos)
            nodes[i] = error_node(
                layer, pos, n_pos, graph.prompt_tokens[pos], influence=cumulative[i]
            )
        elif i < n_feat + n_err + n_pos:
            pos = i - n_feat - n_err
            nodes[i] = token_node(
                int(graph.input_ids[pos]),
                pos,
                n_pos,
                graph.prompt_tokens[pos],
                influence=cumulative[i],
            )
        else:
            k = i - n_feat - n_err - n_pos
            nodes[i] = logit_node(
                int(graph.logit_ids[k]),
                n_pos - 1,
                graph.n_layers,
                graph.logit_tokens[k],
                float(graph.logit_probs[k]),
                is_target=k == 0,
            )
    return nodes


def _kept_links(
    graph: AttributionGraph, pruned: PruneResult, nodes: dict[int, GraphNode], cap: int | None
) -> tuple[list[GraphLink], set[int]]:
    """The links of the edges `pruned` keeps between `nodes` (the `cap` strongest), and the
    node indices they touch."""
    adj = graph.adjacency
    kept = pruned.edge_mask.nonzero(as_tuple=True)[0]
    if cap is not None and kept.numel() > cap:
        t = adj.targets[kept].long()
        reach = pruned.node_influence.clone()
        n_logits = int(graph.logit_probs.numel())
        reach[reach.numel() - n_logits :] += graph.logit_probs.double()
        score = adj.weights[kept].abs().double() / adj.row_abs_sums[t].clamp_min(1e-10) * reach[t]
        kept = kept[score.topk(cap).indices.sort().values]
    links = []
    connected: set[int] = set()
    for t, s, w in zip(
        adj.targets[kept].tolist(),
        adj.sources[kept].tolist(),
        adj.weights[kept].tolist(),
        strict=True,
    ):
        if t in nodes and s in nodes:
            links.append(
                GraphLink(source=nodes[s].node_id, target=nodes[t].node_id, weight=float(w))
            )
            connected.update((t, s))
    return links, connected
