"""The viewer's protections against other web pages and hostile requests (no browser needed).

Each test sends what an attacker could: a foreign `Host` (DNS rebinding), a cross-origin or
form-encoded POST, bodies with a bad `Content-Length`, no token, numbers a model cannot take,
and a symlink out of the served folder.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
from pathlib import Path

import pytest

from sparsecircuits.viewer import ViewerApp, ViewerServer
from sparsecircuits.viewer import server as server_module


def port_of(server: ViewerServer) -> int:
    return int(server.httpd.server_address[1])


def request(server, method, path, body=None, headers=None, token=True):
    """(status, headers, parsed JSON or raw bytes) of one request; `token` adds the server's token."""
    sent = {"Host": f"127.0.0.1:{port_of(server)}"}
    if token and server.token:
        sent["Authorization"] = f"token {server.token}"
    sent.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in sent.items():
            conn.putheader(key, value)
        if body is not None and "Content-Length" not in sent:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, response.headers, json.loads(data)
    except ValueError:
        return response.status, response.headers, data


def raw_exchange(server, head: bytes, body: bytes = b"") -> bytes:
    """Send raw bytes, return the first response line (the connection stays open meanwhile)."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as sock:
        sock.sendall(head + body)
        return sock.makefile("rb").readline()


def post_head(server, length: str | None, ctype: str = "application/json") -> bytes:
    lines = [
        "POST /api/intervene HTTP/1.1",
        f"Host: 127.0.0.1:{port_of(server)}",
        f"Authorization: token {server.token}",
        f"Content-Type: {ctype}",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def make_server(viewer_data):
    """`make(**kwargs) -> ViewerServer` on a free port over the test graphs; stopped afterwards."""
    servers: list[ViewerServer] = []

    def make(data_dir=None, engine=None, **kwargs):
        app = ViewerApp(data_dir or viewer_data.dir, intervention_engine=engine)
        servers.append(ViewerServer(app, "127.0.0.1", 0, **kwargs).start())
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def test_foreign_host_is_refused(viewer_server, make_server):
    port = port_of(viewer_server)
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}", ""):
        status, _, body = request(viewer_server, "GET", "/api/graphs", headers={"Host": host})
        assert status == 403 and "allow-host" in body["error"], host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert request(viewer_server, "GET", "/api/graphs", headers={"Host": host})[0] == 200
    named = make_server(allowed_hosts=["viewer.lan"])
    ok = request(named, "GET", "/api/graphs", headers={"Host": f"viewer.lan:{port_of(named)}"})
    assert ok[0] == 200


def test_cross_origin_requests_are_refused(viewer_server):
    port = port_of(viewer_server)
    body = json.dumps({"prompt": "the cat"}).encode()
    json_type = {"Content-Type": "application/json"}
    for origin in ("http://attacker.example", f"http://127.0.0.1:{port + 1}", "null"):
        status, _, answer = request(
            viewer_server, "POST", "/api/intervene", body, {**json_type, "Origin": origin}
        )
        assert status == 403 and "cross-origin" in answer["error"], origin
        status, _, _ = request(viewer_server, "GET", "/api/graphs", headers={"Origin": origin})
        assert status == 403, origin
    fetch_site = {"Sec-Fetch-Site": "cross-site"}
    assert request(viewer_server, "GET", "/api/graphs", headers=fetch_site)[0] == 403
    same = {"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"}
    assert request(viewer_server, "GET", "/api/graphs", headers=same)[0] == 200


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; b=x", ""]
)
def test_form_encoded_and_other_bodies_are_refused(viewer_server, ctype):
    body = b'{"prompt": "the cat"}'
    status, _, answer = request(
        viewer_server, "POST", "/api/intervene", body, {"Content-Type": ctype}
    )
    assert status == 415 and "application/json" in answer["error"]


def test_oversized_body_is_refused_before_it_is_read(viewer_server):
    too_big = str(server_module.MAX_BODY + 1)
    # only the headers are sent: the answer must not wait for the 1 MiB body
    assert b" 413 " in raw_exchange(viewer_server, post_head(viewer_server, too_big))


@pytest.mark.parametrize(
    ("length", "code"),
    [
        ("-1", b" 400 "),
        ("-100000000", b" 400 "),
        ("1e3", b" 400 "),
        (" ", b" 411 "),
        (None, b" 411 "),
    ],
)
def test_negative_or_missing_content_length_is_refused(viewer_server, length, code):
    # the connection stays open: before the fix a -1 read the socket until it closed
    assert code in raw_exchange(viewer_server, post_head(viewer_server, length), b"{}")


def test_a_slow_body_times_out_instead_of_holding_the_thread(make_server, monkeypatch):
    monkeypatch.setattr(server_module, "READ_TIMEOUT", 0.5)
    server = make_server()
    # promise 100 bytes, send 2, keep the connection open: the server must give up
    assert b" 408 " in raw_exchange(server, post_head(server, "100"), b"{}")


def test_token_is_required_and_moves_to_a_cookie(viewer_server, make_server):
    for path in ("/", "/api/graphs", "/api/graphs/graph.json", "/api/dashboards"):
        status, _, body = request(viewer_server, "GET", path, token=False)
        assert status == 403 and "token" in body["error"], path
        wrong = {"Authorization": "token not-the-token"}
        assert request(viewer_server, "GET", path, headers=wrong, token=False)[0] == 403
        assert request(viewer_server, "GET", path + "?token=wrong", token=False)[0] == 403
    post = request(
        viewer_server, "POST", "/api/intervene", b"{}", {"Content-Type": "application/json"}, False
    )
    assert post[0] == 403
    assert request(viewer_server, "GET", "/static/app.js", token=False)[0] == 200  # no data
    # the printed URL: the token becomes a cookie and leaves the address bar
    path = "/?token=" + viewer_server.token
    status, headers, _ = request(viewer_server, "GET", path, token=False)
    assert status == 302 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert request(viewer_server, "GET", "/api/graphs", headers=jar, token=False)[0] == 200
    assert request(viewer_server, "GET", "/", headers=jar, token=False)[0] == 200
    open_server = make_server(require_token=False)
    assert open_server.token is None and open_server.open_url == open_server.url
    assert request(open_server, "GET", "/api/graphs", token=False)[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "x", "interventions": [{"layer": NaN, "position": 0, "feature": 0}]}',
        b'{"prompt": "x", "interventions": [{"layer": 0, "feature": 0, "value": Infinity}]}',
        b'{"prompt": "x", "interventions": [{"layer": 0, "feature": 0, "value": -Infinity}]}',
        b'{"prompt": "x", "interventions": [{"layer": 0, "feature": 0, "value": 1e999}]}',
        b'{"prompt": "x", "interventions": [{"layer": 0, "feature": 0, "value": 1e300}]}',
        b'{"prompt": "x", "seed": 1000000000000000000000000000000}',
        b'{"prompt": "x", "n_tokens": ' + b"9" * 5000 + b"}",
        b'{"prompt": "x", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"prompt": "x", "deep": ' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"prompt": "the cat \\ud800 saw"}',
        b'{"prompt": "x", "\\udfff": 1}',
        b'{"prompt": "\xff\xfe bad utf-8"}',
        b"[1, 2]",
    ],
)
def test_unusable_numbers_nesting_and_text_give_a_short_400(viewer_server, body):
    status, _, answer = request(
        viewer_server, "POST", "/api/intervene", body, {"Content-Type": "application/json"}
    )
    assert status == 400, answer
    message = answer["error"]
    assert len(message) < 120 and "Error" not in message and "Traceback" not in message


def test_unexpected_failures_do_not_echo_exception_text(make_server, capsys):
    class Broken:
        def run(self, request):
            raise RuntimeError("secret internal detail")

    server = make_server(engine=Broken)
    status, _, answer = request(
        server, "POST", "/api/intervene", b'{"prompt": "x"}', {"Content-Type": "application/json"}
    )
    assert status == 500 and "secret" not in answer["error"]
    assert "secret internal detail" in capsys.readouterr().err  # kept for the user's terminal


def test_symlinks_out_of_the_folder_are_neither_listed_nor_served(
    viewer_data, make_server, tmp_path
):
    served, outside = tmp_path / "served", tmp_path / "outside"
    served.mkdir()
    (outside / "sub").mkdir(parents=True)
    graph = viewer_data.dir / "graph.json"
    shutil.copy(graph, served / "graph.json")
    shutil.copy(graph, outside / "secret.json")
    shutil.copy(graph, outside / "sub" / "nested.json")
    (served / "leak.json").symlink_to(outside / "secret.json")
    (served / "linked").symlink_to(outside / "sub", target_is_directory=True)
    (served / "inside.json").symlink_to(served / "graph.json")  # stays inside: fine
    server = make_server(data_dir=served)
    ids = {g["id"] for g in request(server, "GET", "/api/graphs")[2]}
    assert ids == {"graph.json", "inside.json"}
    for gid in ("leak.json", "linked/nested.json"):
        assert request(server, "GET", f"/api/graphs/{gid}")[0] == 404, gid
    # a link made after the listing is refused at read time too
    (served / "inside.json").unlink()
    (served / "inside.json").symlink_to(outside / "secret.json")
    assert request(server, "GET", "/api/graphs/inside.json")[0] == 404
    assert Path(outside / "secret.json").is_file()
