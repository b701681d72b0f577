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


def _click_node(page, node_id: str, shift: bool = False) -> None:
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
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(point["x"], point["y"])
    if shift:
        page.keyboard.up("Shift")


def test_page_loads_graph(page, viewer_data):
    n_nodes = page.evaluate("window.viewer.cy.nodes().length")
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
    visible = page.evaluate("window.viewer.cy.nodes().not('.hidden').map((n) => n.id())")
    assert node_id in visible and len(visible) == page.evaluate("window.viewer.state.pinned.size")
    page.uncheck("#subgraph-only")
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
