"""`sparsecircuits convert`: rewrite a dictionary or transcoder set in another library's format."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from sparsecircuits.errors import SparseCircuitsError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    p = sub.add_parser(
        "convert",
        help="convert a dictionary or transcoder set to SAELens, circuit-tracer or sparsify",
        description="Read SRC in any format `load` detects (SAELens, sparsify, circuit-tracer, "
        "Gemma Scope 1/2, the transcoder paper's .pt) and write it to OUT in the format --to "
        "names. A folder of several dictionaries (a transcoder set) is written as a set.",
    )
    p.add_argument(
        "src", help='a dictionary folder or file, a transcoder set\'s folder, or "embedded"'
    )
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--to", required=True, choices=["saelens", "circuit-tracer", "sparsify"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert `args.src` to `args.to` in `args.out`; print what was written."""
    from sparsecircuits.dictionaries import formats, load, load_transcoders

    src, out = Path(args.src), Path(args.out)
    if args.src == "embedded":  # the embedded model's transcoders, as --transcoders takes them
        from sparsecircuits.models.embedded import embedded_dir

        src = embedded_dir() / "transcoders"
    if not src.exists():
        raise SparseCircuitsError(f"no dictionary at {src}; pass a folder or file to convert")
    if out.exists() and any(out.iterdir()):
        raise SparseCircuitsError(f"{out} exists and is not empty; pass a new folder")
    fmt = formats.detect(src)
    single = src.is_file() or any(
        (src / name).is_file() for name in ("cfg.json", "params.npz", "params.safetensors")
    )
    coder = load(src) if single else load_transcoders(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        formats.write(coder, args.to, out)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    count = len(coder) if isinstance(coder, formats.PerLayerTranscoders) else 1
    print(
        f"read {src} ({fmt}), wrote {out} ({args.to}, {count} dictionar{'y' if count == 1 else 'ies'})"
    )
    return 0
