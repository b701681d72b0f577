"""The viewer's HTTP API (no browser needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from sparsecircuits.circuits.graph.neuronpedia import validate_graph_json
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.viewer import STATIC_DIR, ViewerApp, ViewerServer


def fetch(server, path, data=None, method=None, headers=None):
    """(status, headers, body bytes) of a request to the test server, with its token."""
    sent = {"Content-Type": "application/json"} if data else {}
    if server.token:
        sent["Authorization"] = f"token {server.token}"
    request = urllib.request.Request(
        server.url.rstrip("/") + path, data=data, method=method, headers={**sent, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_binds_localhost_and_serves_the_page_with_local_assets(viewer_server):
    assert viewer_server.url.startswith("http://127.0.0.1:")
    status, headers, body = fetch(viewer_server, "/")
    assert status == 200 and b"/static/app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"http://" not in body and b"https://" not in body  # nothing from the network
    for asset in ("app.js", "style.css", "vendor/cytoscape.min.js", "vendor/cytoscape.LICENSE"):
        status, headers, _ = fetch(viewer_server, "/static/" + asset)
        assert status == 200, asset
    assert "javascript" in fetch(viewer_server, "/static/app.js")[1]["Content-Type"]


def test_app_js_never_writes_html():
    source = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink


def test_large_answers_are_gzipped_when_accepted(viewer_server, monkeypatch):
    import gzip

    from sparsecircuits.viewer import server as server_module

    monkeypatch.setattr(server_module, "GZIP_ABOVE", 100)
    request = urllib.request.Request(
        viewer_server.url + "api/graphs/graph.json",
        headers={"Accept-Encoding": "gzip", "Authorization": f"token {viewer_server.token}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        data = json.loads(gzip.decompress(response.read()))
    assert data["metadata"]["slug"] == "xss-graph"
    status, headers, body = fetch(viewer_server, "/api/graphs/graph.json")  # no Accept-Encoding
    assert headers["Content-Encoding"] is None and json.loads(body) == data


def test_graph_listing_and_fetch(viewer_server, viewer_data):
    status, _, body = fetch(viewer_server, "/api/graphs")
    graphs = json.loads(body)
    assert status == 200 and [g["id"] for g in graphs] == ["graph.json"]
    assert graphs[0]["slug"] == "xss-graph" and graphs[0]["n_nodes"] > 0
    status, _, body = fetch(viewer_server, "/api/graphs/graph.json")
    data = json.loads(body)
    validate_graph_json(data)
    assert status == 200 and data["metadata"]["prompt"].startswith("The cat <img")


@pytest.mark.parametrize(
    "path",
    [
        "/api/graphs/../../etc/passwd",
        "/api/graphs/trace.json",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/api/nothing",
        "/secret",
    ],
)
def test_unknown_and_traversal_paths_are_404(viewer_server, path):
    status, _, body = fetch(viewer_server, path)
    assert status == 404 and "error" in json.loads(body)


def test_dashboard_endpoints(viewer_server):
    listing = json.loads(fetch(viewer_server, "/api/dashboards")[2])
    assert [d["name"] for d in listing] == ["layer0", "layer1", "layer2"] and listing[1][
        "layer"
    ] == 1
    page = json.loads(
        fetch(viewer_server, "/api/dashboards/layer1/features?sort=density&limit=3")[2]
    )
    assert len(page["rows"]) == 3 and page["total"] == 32
    index = page["rows"][0]["index"]
    by_name = json.loads(fetch(viewer_server, f"/api/dashboards/layer1/features/{index}")[2])
    by_layer = json.loads(fetch(viewer_server, f"/api/layers/1/features/{index}")[2])
    assert by_name == by_layer and by_name["examples_quantiles"][0]["examples"]
    assert fetch(viewer_server, "/api/layers/7/features/0")[0] == 404
    assert fetch(viewer_server, "/api/dashboards/layer1/features/999")[0] == 400
    assert fetch(viewer_server, "/api/dashboards/layer1/features/abc")[0] == 400
    assert fetch(viewer_server, "/api/dashboards/layer1/features?offset=x")[0] == 400


def test_intervention_endpoint(viewer_server, viewer_data):
    layer, pos, feat = viewer_data.graph.active_features[0].tolist()
    body = json.dumps(
        {
            "prompt": "the cat saw",
            "n_tokens": 3,
            "interventions": [
                {"layer": layer, "position": 1, "feature": feat, "mode": "set", "value": 30}
            ],
        }
    )
    status, _, answer = fetch(viewer_server, "/api/intervene", data=body.encode(), method="POST")
    answer = json.loads(answer)
    assert status == 200 and len(answer["intervened"]["continuation_ids"]) == 3
    assert answer["baseline"]["top"] != answer["intervened"]["top"]
    status, _, answer = fetch(viewer_server, "/api/intervene", data=b"{not json", method="POST")
    assert status == 400
    status, _, answer = fetch(
        viewer_server,
        "/api/intervene",
        data=b'{"prompt": "x", "interventions": [{"layer": 99, "position": 0, "feature": 0}]}',
        method="POST",
    )
    assert status == 400 and "no transcoder" in json.loads(answer)["error"]


def test_view_only_server_refuses_interventions(viewer_data):
    server = ViewerServer(ViewerApp(viewer_data.dir), "127.0.0.1", 0).start()
    try:
        status, _, body = fetch(server, "/api/intervene", data=b'{"prompt": "x"}', method="POST")
        assert status == 503 and "--model" in json.loads(body)["error"]
    finally:
        server.stop()


def test_bad_folders_and_ports(tmp_path, viewer_server):
    with pytest.raises(SparseCircuitsError, match="not a folder"):
        ViewerApp(tmp_path / "missing")
    port = int(viewer_server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(SparseCircuitsError, match="another --port"):
        ViewerServer(ViewerApp(tmp_path), "127.0.0.1", port)
