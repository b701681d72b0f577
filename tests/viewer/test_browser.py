"""The viewer in a real headless browser: Debian's chromium driven by Playwright (no downloads).

Needs `/usr/bin/chromium` (or $SPARSECIRCUITS_CHROMIUM) and the `playwright` Python package:
`make browser-deps`. Screenshots go to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = (
    os.environ.get("SPARSECIRCUITS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing; run `make browser-deps`")
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"no chromium at {CHROMIUM}; run `make browser-deps` (apt-get install chromium)"
        )
    return sync_playwright


@pytest.fixture(scope="module")
def page(viewer_server):
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        # bypass_csp lets Playwright evaluate its helpers; it also means the XSS test checks the
        # page's escaping itself, not the Content-Security-Policy header behind it
        context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        # offline: only the local server may be reached
        context.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(viewer_server.url)
                else route.abort()
            ),
        )
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
        page.goto(viewer_server.open_url)  # the token URL, as the CLI prints it
        page.wait_for_function("window.viewer && window.viewer.ready === true", timeout=30_000)
        assert "token=" not in page.url  # the token went into a cookie; the API calls carry it
        yield page
        context.close()
        browser.close()


def _visible_node(page, kind: str) -> str:
    node_id = page.evaluate(
        """(kind) => {
            const cy = window.viewer.cy;
            const nodes = cy.nodes().filter((n) => n.data('kind') === kind && !n.hasClass('hidden'));
            return nodes.length ? nodes[0].id() : null;
        }""",
        kind,
    )
    assert node_id, f"no visible {kind} node"
    return node_id


def _click_node(page, node_id: str, shift: bool = False, modifier: str | None = None) -> None:
    """A real mouse click at the node's place on the canvas (zoomed in so it is a good target)."""
    point = page.evaluate(
        """(id) => {
            const cy = window.viewer.cy; const node = cy.getElementById(id);
            cy.zoom(2.5); cy.center(node);
            const p = node.renderedPosition(); const r = document.getElementById('cy').getBoundingClientRect();
            return {x: r.left + p.x, y: r.top + p.y};
        }""",
        node_id,
    )
    key = "Shift" if shift else modifier
    if key:
        page.keyboard.down(key)
    page.mouse.click(point["x"], point["y"])
    if key:
        page.keyboard.up(key)


def test_page_loads_graph(page, viewer_data):
    n_nodes = page.evaluate(
        "window.viewer.cy.nodes().filter((n) => window.viewer.state.nodesById.has(n.id())).length"
    )
    assert n_nodes == len(
        __import__("json").loads((viewer_data.dir / "graph.json").read_text())["nodes"]
    )
    assert page.evaluate("window.viewer.cy.edges().length") > 0
    assert "nodes" in page.inner_text("#graph-stats")
    page.screenshot(path=str(ARTIFACTS / "viewer-graph.png"))
    assert not page.errors  # type: ignore[attr-defined]


def test_clicking_a_feature_shows_its_dashboard(page):
    node_id = _visible_node(page, "feature")
    _click_node(page, node_id)
    page.wait_for_selector("#dashboard h3", timeout=20_000)
    assert page.evaluate("window.viewer.state.selected") == node_id
    layer, feature = node_id.split("_")[0], node_id.split("_")[1]
    assert page.inner_text("#dashboard h3") == f"layer{layer} · feature {feature}"
    assert "Feature L" in page.inner_text("#node-panel h3")
    page.screenshot(path=str(ARTIFACTS / "viewer-dashboard.png"))


def test_dataset_and_prompt_text_render_as_text(page):
    # the prompt bar holds the hostile prompt tokens as text
    prompt_text = page.evaluate("document.getElementById('prompt').textContent")
    assert '<img src=x onerror="window.__xss=3">' in prompt_text
    # the feature browser lists features; open several dashboards built on hostile text
    page.click("#tabs button[data-tab=browser]")
    page.select_option("#browser-sort", "density")
    page.wait_for_selector("#browser-table tbody tr")
    seen_markup = False
    for row in range(4):
        page.click(f"#browser-table tbody tr:nth-child({row + 1})")
        page.wait_for_selector("#browser-feature h3")
        text = page.inner_text("#browser-feature")
        seen_markup |= any(s in text for s in ("<script", "<img", "onerror", "<b>", "</"))
    assert seen_markup, "dashboards should show the hostile dataset text"
    for root in ("#prompt", "#browser-feature", "#node-panel"):
        assert page.locator(f"{root} img, {root} script, {root} b, {root} i").count() == 0, root
    assert page.evaluate("window.__xss") is None
    page.screenshot(path=str(ARTIFACTS / "viewer-feature-browser.png"))


def test_pinning_and_pruning_sliders(page):
    node_id = _visible_node(page, "feature")
    page.click("#tabs button[data-tab=node]")
    _click_node(page, node_id, shift=True)
    assert node_id in page.evaluate("Array.from(window.viewer.state.pinned)")
    page.check("#subgraph-only")
    visible = page.evaluate(
        "window.viewer.cy.nodes().not('.hidden').filter((n) => window.viewer.state.nodesById.has(n.id()))"
        ".map((n) => n.id())"
    )
    assert node_id in visible and len(visible) == page.evaluate("window.viewer.state.pinned.size")
    page.uncheck("#subgraph-only")
    page.fill("#edge-threshold", "0")
    page.dispatch_event("#edge-threshold", "input")
    before = page.evaluate("window.viewer.cy.edges().not('.hidden').length")
    page.fill("#edge-threshold", "90")
    page.dispatch_event("#edge-threshold", "input")
    after = page.evaluate("window.viewer.cy.edges().not('.hidden').length")
    assert after < before
    page.fill("#edge-threshold", "0")
    page.dispatch_event("#edge-threshold", "input")


def test_intervention_updates_predictions(page):
    node_id = _visible_node(page, "feature")
    _click_node(page, node_id)
    page.click("#tabs button[data-tab=intervene]")
    page.click("#iv-add-selected")
    row = page.locator("#iv-table tbody tr").last
    row.locator("[name=mode]").select_option("set")
    row.locator("[name=value]").fill("60")
    page.fill("#iv-ntokens", "3")
    page.click("#iv-run")
    page.wait_for_selector("#iv-predictions", timeout=60_000)
    assert page.inner_text("#iv-error") == ""
    tables = page.locator("#iv-predictions table")
    assert tables.count() == 2
    baseline, intervened = tables.nth(0).inner_text(), tables.nth(1).inner_text()
    assert baseline and intervened and baseline != intervened
    page.screenshot(path=str(ARTIFACTS / "viewer-intervention.png"))
    assert not page.errors  # type: ignore[attr-defined]


LAYOUT_JS = """() => {
    const v = window.viewer, info = v.state.layoutInfo, out = [];
    for (const n of v.state.graph.nodes) {
        const p = v.cy.getElementById(n.node_id).position();
        const rank = n.layer === 'E' ? 0 : parseInt(n.layer, 10) + 1;
        out.push({id: n.node_id, ctx: n.ctx_idx, rank: rank, x: p.x, y: p.y});
    }
    const tokens = info.columns.map((c, i) => v.cy.getElementById('tok:' + i).position().x);
    return {nodes: out, columns: info.columns, rows: info.rows, tokens: tokens};
}"""


def test_layout_one_column_per_token_one_row_per_layer(page, viewer_data):
    layout = page.evaluate(LAYOUT_JS)
    graph = __import__("json").loads((viewer_data.dir / "graph.json").read_text())
    assert len(layout["columns"]) == len(graph["metadata"]["prompt_tokens"])
    cells: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for node in layout["nodes"]:
        col, row = layout["columns"][node["ctx"]], layout["rows"][node["rank"]]
        assert col["x0"] <= node["x"] <= col["x1"], node
        assert row["y0"] <= node["y"] <= row["y1"], node
        cells.setdefault((node["ctx"], node["rank"]), []).append((node["x"], node["y"]))
    # packed without overlap: nodes of a cell at least a node width apart
    for points in cells.values():
        for i, a in enumerate(points):
            for b in points[i + 1 :]:
                assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= 14
    # embeddings at the bottom (largest y), logits on top; the token strip centred on its column
    ranks = sorted({n["rank"] for n in layout["nodes"]})
    assert layout["rows"][ranks[0]]["y0"] > layout["rows"][ranks[-1]]["y1"]
    for x, col in zip(layout["tokens"], layout["columns"], strict=True):
        assert x == pytest.approx((col["x0"] + col["x1"]) / 2)


# edges of a node not drawn: the edge or one of its ends has computed style display: none
HIDDEN_EDGES_JS = """(id) => window.viewer.cy.getElementById(id).connectedEdges().filter((e) =>
    [e, e.source(), e.target()].some((x) => x.style('display') === 'none')).length"""


def test_every_edge_of_the_hovered_or_selected_node_is_drawn(page):
    page.click("#tabs button[data-tab=node]")
    page.fill("#edge-threshold", "99")
    page.dispatch_event("#edge-threshold", "input")
    page.evaluate("window.viewer.selectNode(null)")
    node_id = page.evaluate(
        """() => window.viewer.cy.nodes().filter((n) => n.data('kind') === 'feature' && !n.hasClass('hidden'))
              .sort((a, b) => b.connectedEdges().length - a.connectedEdges().length)[0].id()"""
    )
    n_edges = page.evaluate(
        "(id) => window.viewer.cy.getElementById(id).connectedEdges().length", node_id
    )
    assert page.evaluate(HIDDEN_EDGES_JS, node_id) > 0, "99 % should hide some of its edges"
    # hover: all its edges on the overlay canvas, whatever the threshold
    _hover_node(page, node_id)
    assert page.evaluate("window.viewer.state.hovered") == node_id
    assert page.evaluate("window.viewer.state.overlayEdges") == n_edges
    page.evaluate("(id) => window.viewer.cy.getElementById(id).emit('mouseout')", node_id)
    assert page.evaluate("window.viewer.state.overlayEdges") == 0
    # selection: its edges and their ends are shown in the graph itself
    page.evaluate("(id) => window.viewer.selectNode(id)", node_id)
    assert page.evaluate(HIDDEN_EDGES_JS, node_id) == 0
    page.evaluate("window.viewer.selectNode(null)")
    assert page.evaluate(HIDDEN_EDGES_JS, node_id) > 0
    page.fill("#edge-threshold", "0")
    page.dispatch_event("#edge-threshold", "input")


def _hover_node(page, node_id: str) -> None:
    """A real mouse move onto the node."""
    point = page.evaluate(
        """(id) => {
            const cy = window.viewer.cy; const node = cy.getElementById(id);
            cy.zoom(2.5); cy.center(node);
            const p = node.renderedPosition(); const r = document.getElementById('cy').getBoundingClientRect();
            return {x: r.left + p.x, y: r.top + p.y};
        }""",
        node_id,
    )
    page.mouse.move(point["x"] - 30, point["y"] - 30)
    page.mouse.move(point["x"], point["y"], steps=3)
    page.wait_for_function("(id) => window.viewer.state.hovered === id", arg=node_id)


def test_automatic_labels_show_and_edits_persist_as_text(page, viewer_data):
    page.wait_for_function("window.viewer.labelsReady === true", timeout=30_000)
    node_id = _visible_node(page, "feature")
    layer, feature = node_id.split("_")[:2]
    auto = page.evaluate("window.viewer.state.autoLabels")
    assert auto[f"{layer}_{feature}"]
    label = page.evaluate("(id) => window.viewer.cy.getElementById(id).data('label')", node_id)
    assert label == auto[f"{layer}_{feature}"]
    _click_node(page, node_id)
    page.wait_for_selector("#label-input")
    assert page.inner_text("#node-label") == label
    payload = '<img src=x onerror="window.__xss=4">digits'
    page.fill("#label-input", payload)
    page.click("#label-save")
    page.wait_for_function(
        "(p) => document.getElementById('node-label').textContent === p", arg=payload
    )
    assert (
        page.evaluate("(id) => window.viewer.cy.getElementById(id).data('label')", node_id)
        == payload
    )
    saved = viewer_data.dir / "graph.subgraph.json"
    page.wait_for_function("document.getElementById('save-status').textContent.startsWith('saved')")
    assert __import__("json").loads(saved.read_text())["clerps"][f"{layer}_{feature}"] == payload
    assert page.locator("#node-panel img, #subgraph-tab img").count() == 0
    assert page.evaluate("window.__xss") is None


def test_supernodes_save_reload_and_url_state(page, viewer_data, viewer_server):
    json = __import__("json")
    saved = viewer_data.dir / "graph.subgraph.json"
    page.click("#clear-pins")
    features = page.evaluate(
        """() => window.viewer.cy.nodes().filter((n) => n.data('kind') === 'feature' && !n.hasClass('hidden'))
              .map((n) => n.id()).slice(0, 3)"""
    )
    assert len(features) == 3
    for node_id in features[:2]:
        _click_node(page, node_id, modifier="Control")
    assert sorted(page.evaluate("Array.from(window.viewer.state.grouping)")) == sorted(features[:2])
    page.click("#tabs button[data-tab=subgraph]")
    name = "<b>greater</b> step"
    page.fill("#supernode-name", name)
    page.click("#group-selected")
    parent = page.evaluate(
        "(id) => window.viewer.cy.getElementById(id).parent().data('label')", features[0]
    )
    assert parent == name
    assert page.evaluate(
        "(id) => window.viewer.cy.getElementById(id).parent().id()", features[1]
    ) == ("super:0")
    assert page.locator("#supernode-list b").count() == 0 and name in page.inner_text(
        "#supernode-list"
    )
    # collapsed, the supernode is one node whose edges sum its members' edges
    graph = json.loads((viewer_data.dir / "graph.json").read_text())
    members = set(features[:2])
    expected_sums: dict[tuple[str, str], float] = {}
    for link in graph["links"]:
        source = "super:0" if link["source"] in members else link["source"]
        target = "super:0" if link["target"] in members else link["target"]
        if source != target and "super:0" in (source, target):
            expected_sums[source, target] = (
                expected_sums.get((source, target), 0.0) + link["weight"]
            )
    assert expected_sums
    # the selected node is a member: focusing it must not bring the collapsed members back
    page.evaluate("(id) => window.viewer.selectNode(id)", features[0])
    page.click("#tabs button[data-tab=subgraph]")
    page.check("#collapse-supernodes")
    drawn = page.evaluate(
        """() => window.viewer.cy.edges('.super-edge').map((e) => [e.source().id(), e.target().id(), e.data('weight')])"""
    )
    assert {(a, b): w for a, b, w in drawn} == pytest.approx(expected_sums, rel=1e-6)
    assert page.evaluate(
        """(ids) => ids.every((id) => window.viewer.cy.getElementById(id).hasClass('hidden'))
              && !window.viewer.cy.getElementById('super:0').isParent()
              && !window.viewer.cy.getElementById('super:0').hasClass('hidden')""",
        features[:2],
    )
    page.uncheck("#collapse-supernodes")
    assert page.evaluate("() => window.viewer.cy.edges('.super-edge').length") == 0
    assert page.evaluate(
        "(id) => window.viewer.cy.getElementById(id).parent().id()", features[0]
    ) == ("super:0")
    page.evaluate("(id) => window.viewer.togglePin(id)", features[2])
    # the subgraph scores equal the library's for the same nodes
    from sparsecircuits.circuits.graph.scores import graph_scores

    expected = graph_scores(json.loads((viewer_data.dir / "graph.json").read_text()), features)
    text = f"Subgraph (3 features): replacement {expected['replacement']:.3f}"
    page.wait_for_function(
        "(t) => document.getElementById('scores').textContent.includes(t)", arg=text
    )
    page.click("#save-subgraph")
    page.wait_for_function("document.getElementById('save-status').textContent.startsWith('saved')")
    state = page.evaluate("window.viewer.currentState()")
    assert json.loads(saved.read_text()) == state
    # the export button downloads the graph with this subgraph as one valid Neuronpedia graph JSON
    from sparsecircuits.circuits.graph.neuronpedia import validate_graph_json

    with page.expect_download() as download:
        page.click("#export-neuronpedia")
    exported = json.loads(Path(download.value.path()).read_text())
    validate_graph_json(exported)
    assert download.value.suggested_filename.endswith(".neuronpedia.json")
    assert sorted(exported["qParams"]["pinnedIds"]) == sorted(state["pinnedIds"])
    assert exported["qParams"]["supernodes"] == state["supernodes"]
    url = page.url
    assert "pinnedIds=" in url and "supernodes=" in url
    page.screenshot(path=str(ARTIFACTS / "viewer-supernodes.png"))
    try:
        # reload from the saved file (no state in the URL)
        page.goto(viewer_server.url + "#graph=graph.json")
        page.reload()
        page.wait_for_function("window.viewer && window.viewer.ready === true", timeout=30_000)
        assert page.evaluate("window.viewer.currentState()") == state
        # reopen from the URL alone (no saved file)
        saved.unlink()
        page.goto("about:blank")
        page.goto(url)
        page.wait_for_function("window.viewer && window.viewer.ready === true", timeout=30_000)
        assert page.evaluate("window.viewer.currentState()") == state
        assert (
            page.evaluate(
                "(id) => window.viewer.cy.getElementById(id).parent().data('label')", features[0]
            )
            == name
        )
        assert page.evaluate("window.__xss") is None
        assert not page.errors  # type: ignore[attr-defined]
    finally:
        saved.unlink(missing_ok=True)
