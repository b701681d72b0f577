"""`sparsecircuits trace`: the attribution graph of one prompt, as Neuronpedia graph JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import sys
import time
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsecircuits.circuits.graph.build import GraphConfig
from sparsecircuits.cli.common import (
    add_overwrite_argument,
    check_prompt,
    config_from_args,
    port_number,
    prepare_out,
)
from sparsecircuits.cli.targets import GRAPH_TARGET_HELP, graph_target_from_spec

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel

DEFAULT_OUT = "runs/trace"
SUMMARY_KEYS = (
    "n_tokens",
    "seconds",
    "peak_rss_mb",
    "n_nodes",
    "n_edges",
    "replacement_score",
    "completeness_score",
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `trace` subcommand: its own flags plus one per `GraphConfig` field."""
    p = sub.add_parser(
        "trace",
        help="build the attribution graph of a prompt (Neuronpedia graph JSON)",
        description="Trace a prompt through the model's transcoders: direct effects among all active features, "
        "errors, token embeddings and the top output logits, pruned by influence. Writes OUT/graph.json "
        "and OUT/trace.json (time, memory, sizes, replacement/completeness scores).",
    )
    p.add_argument("prompt", help="the prompt (a BOS token is prepended)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument(
        "--model",
        default="embedded",
        help='hub id, hf://ORG/REPO[/SUBPATH], local model folder, or "embedded" (default)',
    )
    p.add_argument(
        "--transcoders",
        default="embedded",
        help="folder of per-layer transcoders or a cross-layer transcoder, hf://ORG/REPO[/SUBPATH], "
        'a preset (sparsecircuits presets), or "embedded"',
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default="fp32",
        help="compute dtype of the model, transcoders and graph: fp32, bf16 or fp16 (default fp32)",
    )
    p.add_argument(
        "--target",
        action="append",
        default=None,
        help="what the graph explains instead of the most likely next tokens (repeatable): "
        + GRAPH_TARGET_HELP,
    )
    p.add_argument("--slug", help="graph name inside the JSON (default: from the prompt)")
    add_config_flags(p, GraphConfig)
    p.add_argument("--port", type=port_number, default=8041, help="port printed in the viewer URL")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def add_config_flags(p: argparse.ArgumentParser, config_class: type) -> None:
    """Add one flag per field of the dataclass `config_class`: `--field-name` with the field's
    type, default, `help` and `choices` (from its metadata); a bool field gives
    `--field-name / --no-field-name`."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        kind = hints[f.name]
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None
        kwargs: dict[str, Any] = {"type": kind, "choices": f.metadata.get("choices")}
        if kind is bool:
            kwargs = {"action": argparse.BooleanOptionalAction}
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=f.default,
            help=f.metadata.get("help", "").replace("%", "%%") + " (default: %(default)s)",
            **kwargs,
        )


def slugify(text: str) -> str:
    """A short file-system and URL safe name for a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:48].rstrip("-") or "graph"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_replacement(
    model: str, transcoders: str, device: str | None, dtype: str
) -> ReplacementModel:
    """The replacement model of `model` and `transcoders`, all weights in `dtype` (a name of
    the project's dtype table, e.g. "bf16")."""
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.config import torch_dtype
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.models import load_model

    compute = torch_dtype(dtype)
    adapter = load_model(model, device=device, dtype=compute)
    tc_set = load_transcoders(transcoders, device=adapter.device)
    modules = tc_set.values() if isinstance(tc_set, Mapping) else [tc_set]
    for module in modules:
        module.to(compute)
    return ReplacementModel(adapter, tc_set, dtype=compute)


def run(args: argparse.Namespace) -> int:
    """Trace, write graph.json + trace.json, print a summary and the viewer URL."""
    from sparsecircuits.hub import model_id

    check_prompt(args.prompt)  # the input and --out are checked before the model loads
    config = config_from_args(args, GraphConfig)
    config.check()
    prepare_out(args.out, ("graph.json", "trace.json"), args.overwrite)
    start = time.perf_counter()
    from sparsecircuits.circuits.graph.build import build_graph
    from sparsecircuits.circuits.graph.neuronpedia import save_graph, to_neuronpedia

    replacement = load_replacement(args.model, args.transcoders, args.device, args.dtype)
    adapter = replacement.adapter
    loaded = time.perf_counter()
    targets = None
    if args.target:
        state = replacement.run(replacement.tokenize(args.prompt))
        targets = [graph_target_from_spec(replacement, state, spec) for spec in args.target]
    graph = build_graph(replacement, args.prompt, config, targets)
    built = time.perf_counter()
    pruned = graph.prune(config.node_threshold, config.edge_threshold)
    replacement_score, completeness_score = graph.scores()
    model = to_neuronpedia(
        graph,
        pruned,
        slug=args.slug or slugify(args.prompt),
        scan=model_id(adapter.name),
        node_threshold=config.node_threshold,
        edge_threshold=config.edge_threshold,
    )
    out = Path(args.out)
    save_graph(model, out / "graph.json")
    done = time.perf_counter()
    report: dict[str, Any] = {
        "prompt": args.prompt,
        "n_tokens": graph.n_pos,
        "seconds": round(done - start, 3),
        "seconds_load": round(loaded - start, 3),
        "seconds_graph": round(done - loaded, 3),
        "seconds_build": round(built - loaded, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "n_nodes": len(model.nodes),
        "n_edges": len(model.links),
        "n_nodes_unpruned": graph.n_nodes,
        "n_active_features": graph.n_active_features,
        "n_feature_nodes": graph.n_features,
        "n_edges_stored": graph.adjacency.nnz,
        "replacement_score": replacement_score,
        "completeness_score": completeness_score,
        "device": str(adapter.device),
        "timings": {k: round(v, 3) for k, v in graph.timings.items()},
        "config": vars(config),
    }
    if adapter.device.type == "cuda":
        import torch

        report["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(adapter.device) / 2**20, 1)
    report["dtype"] = str(replacement.dtype).removeprefix("torch.")
    (out / "trace.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in SUMMARY_KEYS}))
    print(f"wrote {out / 'graph.json'}")
    print(f"view: sparsecircuits serve {out} --port {args.port}  (open the URL it prints)")
    return 0
