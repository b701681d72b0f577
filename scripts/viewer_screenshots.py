"""Screenshots of a traced graph in the viewer, before and after grouping features into supernodes.

    python scripts/viewer_screenshots.py DIR OUT_PREFIX --group "NAME=LAYER@POS" ...

DIR holds graph.json (and dashboards/); each --group puts every feature of layer LAYER at prompt
position POS into a supernode NAME. Writes OUT_PREFIX.png (the graph as opened) and
OUT_PREFIX-supernodes.png (the subgraph of the supernodes, the top logit and the embeddings they
read). Needs Playwright and Debian's chromium (`make browser-deps`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import sync_playwright

from sparsecircuits.viewer import ViewerApp, ViewerServer

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--group", action="append", default=[], help="NAME=LAYER@POS")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    graph = json.loads((args.dir / "graph.json").read_text())
    supernodes = []
    for spec in args.group:
        name, cell = spec.split("=", 1)
        layer, pos = cell.split("@")
        ids = [
            n["node_id"]
            for n in graph["nodes"]
            if n["feature_type"] == "cross layer transcoder"
            and n["layer"] == layer
            and n["ctx_idx"] == int(pos)
        ]
        supernodes.append([name, *ids])
    grouped = {i for g in supernodes for i in g[1:]}
    top_logit = max(
        (n for n in graph["nodes"] if n["feature_type"] == "logit"), key=lambda n: n["token_prob"]
    )
    read = {
        link["source"]
        for link in graph["links"]
        if link["target"] in grouped and link["source"].startswith("E_")
    }
    server = ViewerServer(ViewerApp(args.dir), "127.0.0.1", 0).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
            page.goto(server.url + "#graph=graph.json")
            page.wait_for_function("window.viewer && window.viewer.labelsReady === true")
            page.screenshot(path=str(args.out) + ".png")
            for group in supernodes:
                for node_id in group[1:]:
                    page.evaluate("(id) => window.viewer.toggleGrouping(id)", node_id)
                page.evaluate("(name) => window.viewer.groupSelected(name)", group[0])
            for node_id in [top_logit["node_id"], *sorted(read)]:
                page.evaluate("(id) => window.viewer.togglePin(id)", node_id)
            page.check("#subgraph-only")
            page.click("#tabs button[data-tab=subgraph]")
            page.click("#fit")
            page.wait_for_function(
                "document.getElementById('scores').textContent.includes('Subgraph')"
            )
            page.screenshot(path=str(args.out) + "-supernodes.png")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
