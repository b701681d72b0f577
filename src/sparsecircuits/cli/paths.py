"""`sparsecircuits paths`: the transcoder paper's greedy path search from a target, as a graph."""

from __future__ import annotations

import argparse
import json

import torch

from sparsecircuits.cli.common import add_overwrite_argument, at_least, check_prompt, prepare_out
from sparsecircuits.cli.targets import TARGET_SPEC_HELP, parse_target_spec, target_from_spec


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `paths` subcommand."""
    p = sub.add_parser(
        "paths",
        help="greedy path search through transcoders and attention heads (graph JSON + PNG)",
        description="Explain a target (a logit, a logit difference, a transcoder feature or the "
        "greater-than metric) on a prompt with the transcoder paper's greedy path search; writes "
        "graph.json, graph.png, paths.txt and verification.json (ablations of the top nodes) to --out.",
    )
    p.add_argument(
        "--model",
        default="embedded",
        help='hub id, hf://ORG/REPO[/SUBPATH], local model folder, or "embedded"',
    )
    p.add_argument(
        "--transcoders",
        default="embedded",
        help='folder of saved transcoders, hf://ORG/REPO[/SUBPATH], a preset, or "embedded"',
    )
    p.add_argument(
        "--prompt", action="append", help="prompt text (repeatable; default: greater-than prompts)"
    )
    p.add_argument("--target", required=True, help=TARGET_SPEC_HELP)
    p.add_argument(
        "--pos", type=int, default=None, help="target position (default: each prompt's last token)"
    )
    p.add_argument("--row", type=int, default=0, help="which prompt to search paths for")
    p.add_argument("--num-iters", type=at_least(1), default=3)
    p.add_argument("--num-branches", type=at_least(1), default=15)
    p.add_argument(
        "--min-contrib", type=float, default=0.0, help="drop children below this contribution"
    )
    p.add_argument(
        "--min-fraction",
        type=float,
        default=0.0,
        help="drop children below this fraction of |target|",
    )
    p.add_argument(
        "--rank",
        choices=["value", "abs"],
        default="value",
        help="rank children by value (paper) or |value|",
    )
    p.add_argument(
        "--cap", action="store_true", help="cap contributions at the smallest feature on the path"
    )
    p.add_argument("--keep-bos", action="store_true", help="also consider position 0")
    p.add_argument(
        "--verify-top", type=at_least(0), default=10, help="ablate this many top nodes to verify"
    )
    p.add_argument("--device")
    p.add_argument("--out", default="runs/paths")
    add_overwrite_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Search, write the graph and its verification; print a short JSON summary."""
    from sparsecircuits.circuits import paths as P
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.circuits.verify import verify_graph
    from sparsecircuits.errors import SparseCircuitsError

    parse_target_spec(args.target)  # fail fast on a bad spec
    for text in args.prompt or []:
        check_prompt(text, "--prompt")
    writes = ("graph.json", "graph.png", "paths.txt", "verification.json")
    out = prepare_out(args.out, writes, args.overwrite)
    model = ReplacementModel.load(args.model, args.transcoders, device=args.device)
    adapter = model.adapter
    texts = args.prompt
    if not texts:
        from sparsecircuits.tasks.greater_than import make_greater_than_prompts

        texts = make_greater_than_prompts(adapter.tokenizer, 4, split="heldout").texts
    input_ids = model.tokenize(texts)
    lengths = [len(adapter.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    if args.pos is None:
        pos = torch.tensor(lengths) - 1
    else:
        pos = torch.tensor([args.pos if args.pos >= 0 else n + args.pos for n in lengths])
    if not 0 <= args.row < len(texts):
        raise SparseCircuitsError(f"--row {args.row} is out of range for {len(texts)} prompts")
    state = model.run(input_ids)
    target = target_from_spec(model, state, args.target, pos, texts)
    result = P.search_paths(
        model,
        state,
        target,
        row=args.row,
        num_iters=args.num_iters,
        num_branches=args.num_branches,
        min_contrib=args.min_contrib,
        min_fraction=args.min_fraction,
        ignore_bos=not args.keep_bos,
        cap=args.cap,
        rank=args.rank,
    )
    tokens = P.graph_tokens(model, state, args.row)[: lengths[args.row]]
    graph = P.paths_to_graph(
        result,
        meta={
            "prompt": texts[args.row],
            "tokens": tokens,
            "n_layers": model.n_layers,
            "model": adapter.name,
            "target_spec": args.target,
        },
    )
    graph.save_json(out / "graph.json")
    P.plot_graph(graph, out / "graph.png", tokens=tokens, n_layers=model.n_layers)
    lines = P.path_strings(result)
    (out / "paths.txt").write_text("\n".join(lines) + "\n")
    report = verify_graph(model, state, target, graph, top_n=args.verify_top, row=args.row)
    (out / "verification.json").write_text(json.dumps(report.to_dict(), indent=1))
    summary = {
        "target": target.label,
        "value": float(target.evaluate(state)[args.row]),
        "nodes": len(graph.nodes),
        "edges": len(graph.edges),
        "top_paths": lines[:5],
        "verification": {
            k: {"pearson": v.pearson, "max_rel_error": v.max_rel_error}
            for k, v in (("exact", report.exact), ("graph", report.graph), ("live", report.live))
        },
        "out": str(out),
    }
    print(json.dumps(summary, indent=1))
    return 0
