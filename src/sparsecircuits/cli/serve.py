"""`sparsecircuits serve`: the local viewer for graphs, dashboards and interventions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparsecircuits.cli.common import port_number


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    p = sub.add_parser(
        "serve",
        help="open attribution graphs and feature dashboards in a local browser viewer",
        description="Serve DIR's graph JSON files (DIR/*.json and DIR/*/*.json), the dashboards in "
        "--dashboards (default DIR/dashboards when present) and interventions on --model with "
        "--transcoders, at http://HOST:PORT/. Works offline; binds 127.0.0.1 unless told otherwise.",
    )
    p.add_argument("dir", help="folder with graph JSON files (e.g. a `trace --out` folder)")
    p.add_argument("--port", type=port_number, default=8041)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeatable; 127.0.0.1, localhost, [::1] "
        "always work); other Host headers are refused, against DNS rebinding",
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="serve without the random access token (only for local scripts that cannot send it)",
    )
    p.add_argument("--dashboards", help="dashboards folder written by `sparsecircuits dashboards`")
    p.add_argument(
        "--model", default="embedded", help="model for interventions (loaded on first use)"
    )
    p.add_argument("--transcoders", default="embedded", help="transcoders for interventions")
    p.add_argument("--device")
    p.add_argument("--no-interventions", action="store_true", help="never load a model; view only")
    p.set_defaults(func=run)


def engine_factory(model: str, transcoders: str, device: str | None) -> Any:
    """A zero-argument function that loads the model and returns an `InterventionEngine`."""

    def build() -> Any:
        from sparsecircuits.circuits.interventions import InterventionEngine
        from sparsecircuits.circuits.replacement import ReplacementModel

        return InterventionEngine(ReplacementModel.load(model, transcoders, device=device))

    return build


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from sparsecircuits.viewer import ViewerApp, ViewerServer

    app = ViewerApp(
        Path(args.dir),
        dashboards_dir=Path(args.dashboards) if args.dashboards else None,
        intervention_engine=None
        if args.no_interventions
        else engine_factory(args.model, args.transcoders, args.device),
    )
    server = ViewerServer(
        app, args.host, args.port, allowed_hosts=args.allow_host, require_token=not args.no_token
    )
    graphs = app.list_graphs()
    print(f"{len(graphs)} graph(s), dashboards: {app.dashboards_dir or 'none'}")
    print(f"viewer at {server.open_url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
