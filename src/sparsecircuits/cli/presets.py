"""`sparsecircuits presets`: the named sets of published dictionaries `--transcoders` accepts."""

from __future__ import annotations

import argparse
import json

COLUMNS = ("name", "kind", "model", "repo", "layout", "files")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `presets` subcommand."""
    p = sub.add_parser(
        "presets",
        help="list the named dictionary sets on the Hugging Face hub (--transcoders NAME)",
        description="Each preset names a hub repository and the exact files of one set in it; "
        "pass the name wherever a dictionary folder goes (--transcoders, --dictionary, eval). "
        "Only those files are downloaded, into the Hugging Face cache. Any other repository "
        "works as hf://ORG/REPO[/SUBPATH][@REVISION].",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the preset table (aligned text, or JSON lines)."""
    from sparsecircuits.dictionaries.presets import preset_table

    rows = preset_table()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in COLUMNS[:-1]}
    print("  ".join(c.upper().ljust(widths.get(c, 0)) for c in COLUMNS).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths.get(c, 0)) for c in COLUMNS).rstrip())
    return 0
