"""The local viewer: a stdlib HTTP server for graphs, feature dashboards and interventions.

Routes (all JSON unless noted):

    GET  /                                   the single-page viewer (static/index.html)
    GET  /static/<file>                      viewer assets (vendored libraries included; no CDN)
    GET  /api/graphs                         [{id, slug, prompt, scan, n_nodes, n_links}]
    GET  /api/graphs/<id>                    the graph JSON (Neuronpedia schema)
    GET  /api/dashboards                     [{name, layer, d_sae, hook_in, hook_out, n_tokens}]
    GET  /api/dashboards/<name>/features     feature browser page (?offset, limit, sort, q)
    GET  /api/dashboards/<name>/features/<i> one latent's dashboard
    GET  /api/layers/<layer>/features/<i>    the same, for the dictionary of block <layer>
    GET  /api/labels?graph=<id>              {"<layer>_<feature>": automatic label} from dashboards
    GET  /api/scores?graph=<id>&pinned=a,b   replacement/completeness scores of the (sub)graph
    GET  /api/subgraph?graph=<id>            the saved subgraph state ({} when none)
    POST /api/subgraph?graph=<id>            save it (JSON) to <graph>.subgraph.json beside the graph
    POST /api/intervene                      {prompt, interventions: [{layer, position, feature,
                                             mode, value}], n_tokens, temperature, top_k, seed}
                                             -> baseline and intervened predictions + continuations

Binds 127.0.0.1 by default. Graph ids are looked up in the listing, never joined to paths, and
symlinks that lead out of the data folder are skipped, so requests cannot reach files outside it.

Protections, after Jupyter's server (see `RequestGuard`): every request must name an allowed
`Host` (127.0.0.1, localhost, [::1] or `--allow-host`, with the server's port: no DNS rebinding);
API requests from a browser must come from the viewer's own origin; the page and the API need the
server's random token (`?token=` in the printed URL, then a cookie; or `Authorization: token T`);
POST bodies are JSON only, at most `MAX_BODY` bytes, read within `READ_TIMEOUT` seconds, with
finite numbers of bounded size, bounded nesting and well-formed text.
"""

from __future__ import annotations

import contextlib
import gzip
import hmac
import json
import math
import mimetypes
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.files import atomic_write_text

if TYPE_CHECKING:
    from sparsecircuits.circuits.interventions import InterventionEngine
    from sparsecircuits.interpret.store import DashboardStore

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 1 << 20
READ_TIMEOUT = 10.0  # seconds a client may take to send a request (headers or body)
MAX_DEPTH = 16  # nesting of an intervention request's JSON
MAX_NUMBER = 1e6  # largest magnitude of a float in a request (activations, temperature)
MAX_INT = 2**31 - 1  # largest magnitude of an integer in a request (layers, positions, seeds)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
GZIP_ABOVE = 256 << 10  # compress larger answers (graph JSON) when the client accepts it
NOT_GRAPHS = {"trace.json", "index.json", "graph-metadata.json", "package.json"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


SUBGRAPH_SUFFIX = ".subgraph.json"
SCORED_FEATURE_TYPES = {"cross layer transcoder", "per layer transcoder"}
MAX_SUBGRAPH_ITEMS = 100_000


def _check_subgraph_state(state: Any) -> None:
    """Raise `HTTPError(400)` unless `state` is a subgraph state object of plain JSON values."""

    def bad(message: str) -> HTTPError:
        return HTTPError(HTTPStatus.BAD_REQUEST, f"subgraph state: {message}")

    if not isinstance(state, dict):
        raise bad("must be a JSON object")
    pinned = state.get("pinnedIds", [])
    if not isinstance(pinned, list) or not all(isinstance(p, str) for p in pinned):
        raise bad("pinnedIds must be a list of node ids")
    supernodes = state.get("supernodes", [])
    if not isinstance(supernodes, list) or not all(
        isinstance(g, list) and g and all(isinstance(x, str) for x in g) for g in supernodes
    ):
        raise bad("supernodes must be a list of [label, node_id, ...] lists")
    clerps = state.get("clerps", {})
    if not isinstance(clerps, dict) or not all(isinstance(v, str) for v in clerps.values()):
        raise bad("clerps must map feature keys to label strings")
    if len(pinned) + len(supernodes) + len(clerps) > MAX_SUBGRAPH_ITEMS:
        raise bad("too many entries")


class HTTPError(Exception):
    """An error answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _GraphEntry:
    path: Path
    mtime: float
    summary: dict[str, Any]


@dataclass
class ViewerApp:
    """What the server serves: graphs under `data_dir`, a dashboards folder, an intervention engine.

    `intervention_engine` is a zero-argument factory called once, on the first POST
    /api/intervene (model loading is slow, and viewing graphs must not need it); it returns an
    object with `run(request: dict) -> dict` (see `sparsecircuits.circuits.interventions`).
    """

    data_dir: Path
    dashboards_dir: Path | None = None
    intervention_engine: Callable[[], InterventionEngine] | None = None
    _graphs: dict[str, _GraphEntry] = field(default_factory=dict)
    _store: DashboardStore | None = None
    _engine: InterventionEngine | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.data_dir.is_dir():
            raise SparseCircuitsError(
                f"{self.data_dir} is not a folder; pass the folder holding graph JSON files"
            )
        if self.dashboards_dir is None:
            for candidate in (self.data_dir / "dashboards", self.data_dir):
                if (candidate / "index.json").is_file():
                    self.dashboards_dir = candidate
                    break
        if self.dashboards_dir is not None:
            from sparsecircuits.interpret import load_dashboards

            self._store = load_dashboards(self.dashboards_dir)

    # ------------------------------------------------------------------ graphs
    def list_graphs(self) -> list[dict[str, Any]]:
        """Every graph JSON in `data_dir` and its direct sub-folders, newest first."""
        found = sorted({*self.data_dir.glob("*.json"), *self.data_dir.glob("*/*.json")})
        listing = []
        with self._lock:
            for path in found:
                if path.name in NOT_GRAPHS or not self._inside(path):
                    continue
                gid = path.relative_to(self.data_dir).as_posix()
                mtime = path.stat().st_mtime
                entry = self._graphs.get(gid)
                if entry is None or entry.mtime != mtime:
                    summary = _graph_summary(path)
                    if summary is None:
                        continue
                    entry = self._graphs[gid] = _GraphEntry(path, mtime, {"id": gid, **summary})
                listing.append((mtime, entry.summary))
        return [summary for _, summary in sorted(listing, key=lambda item: -item[0])]

    def graph_bytes(self, gid: str) -> bytes:
        """The raw JSON of graph `gid` (an id from `list_graphs`)."""
        if gid not in self._graphs:
            self.list_graphs()
        entry = self._graphs.get(gid)
        if entry is None or not self._inside(entry.path):
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no graph {gid!r}")
        return entry.path.read_bytes()

    def _inside(self, path: Path) -> bool:
        """Whether `path`, symlinks followed, is a file inside `data_dir`."""
        root = self.data_dir.resolve()
        return root in path.resolve().parents and path.is_file()

    # ------------------------------------------------------------------ subgraphs
    def subgraph_path(self, gid: str) -> Path:
        """Where the subgraph state of graph `gid` is saved: `<graph stem>.subgraph.json` beside it."""
        self.graph_bytes(gid)  # 404 for unknown ids
        path = self._graphs[gid].path
        return path.with_name(path.stem + SUBGRAPH_SUFFIX)

    def load_subgraph(self, gid: str) -> dict[str, Any]:
        """The saved subgraph state of graph `gid`, `{}` when none was saved."""
        path = self.subgraph_path(gid)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_subgraph(self, gid: str, state: Any) -> dict[str, Any]:
        """Check `state` and write it atomically beside graph `gid`; returns `{"saved": file name}`."""
        _check_subgraph_state(state)
        path = self.subgraph_path(gid)
        atomic_write_text(path, json.dumps(state, indent=1, allow_nan=False))
        return {"saved": path.name}

    def export_neuronpedia(self, gid: str) -> dict[str, Any]:
        """Graph `gid` as one Neuronpedia graph JSON holding its saved subgraph (pins,
        supernodes, edited labels) in `qParams` and the nodes' `clerp`s."""
        from sparsecircuits.circuits.graph.neuronpedia import with_subgraph

        return with_subgraph(json.loads(self.graph_bytes(gid)), self.load_subgraph(gid))

    def labels(self, gid: str) -> dict[str, str]:
        """`{"<layer>_<feature>": label}` for every feature node of graph `gid` with dashboards."""
        if self._store is None:
            return {}
        graph = json.loads(self.graph_bytes(gid))
        wanted: dict[int, set[int]] = {}
        for node in graph["nodes"]:
            parts = str(node.get("node_id", "")).split("_")
            if node.get("feature_type") in SCORED_FEATURE_TYPES and len(parts) == 3:
                try:
                    wanted.setdefault(int(parts[0]), set()).add(int(parts[1]))
                except ValueError:
                    continue
        out: dict[str, str] = {}
        for layer, indices in wanted.items():
            name = self._store.name_for_layer(layer)
            if name is not None:
                for index, label in self._store.labels(name, sorted(indices)).items():
                    out[f"{layer}_{index}"] = label
        return out

    def scores(self, gid: str, pinned: list[str]) -> dict[str, Any]:
        """Replacement and completeness scores of graph `gid`, restricted to `pinned` when given."""
        from sparsecircuits.circuits.graph.scores import graph_scores

        return graph_scores(json.loads(self.graph_bytes(gid)), pinned)

    # ------------------------------------------------------------------ dashboards
    def _require_store(self) -> DashboardStore:
        if self._store is None:
            raise HTTPError(
                HTTPStatus.NOT_FOUND,
                "no dashboards loaded; run `sparsecircuits dashboards` and pass --dashboards",
            )
        return self._store

    def list_dashboards(self) -> list[dict[str, Any]]:
        """The dictionaries that have dashboards."""
        if self._store is None:
            return []
        keys = ("layer", "d_sae", "hook_in", "hook_out", "n_tokens", "kind")
        return [
            {"name": n, **{k: self._store.info(n).get(k) for k in keys}} for n in self._store.names
        ]

    def feature(self, name: str, index: int) -> dict[str, Any]:
        """One latent's dashboard."""
        return self._require_store().feature(name, index)

    def feature_for_layer(self, layer: int, index: int) -> dict[str, Any]:
        """The dashboard of latent `index` of the dictionary reading block `layer`."""
        store = self._require_store()
        name = store.name_for_layer(layer)
        if name is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no dashboards for layer {layer}")
        return store.feature(name, index)

    def table(self, name: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """A feature-browser page."""

        def arg(key: str, default: str) -> str:
            return query.get(key, [default])[0]

        try:
            offset, limit = int(arg("offset", "0")), int(arg("limit", "50"))
        except ValueError:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "offset and limit must be integers") from None
        return self._require_store().table(
            name,
            offset=max(0, offset),
            limit=limit,
            sort=arg("sort", "index"),
            query=arg("q", ""),
            include_dead=arg("dead", "1") != "0",
        )

    # ------------------------------------------------------------------ interventions
    def intervene(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run an intervention request through the (lazily built) engine."""
        if self.intervention_engine is None:
            raise HTTPError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "interventions are off; start the server with --model and --transcoders",
            )
        with self._engine_lock:  # one model, one request at a time
            if self._engine is None:
                self._engine = self.intervention_engine()
            return self._engine.run(request)


def _graph_summary(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not {"metadata", "nodes", "links"} <= set(data):
        return None
    meta = data.get("metadata") or {}
    return {
        "slug": meta.get("slug", path.stem),
        "prompt": meta.get("prompt", ""),
        "scan": meta.get("scan", ""),
        "n_nodes": len(data["nodes"]),
        "n_links": len(data["links"]),
    }


@dataclass
class RequestGuard:
    """Who may talk to a viewer: the `Host` names it answers to, its port and its token.

    `hosts` are bare names ("127.0.0.1", "localhost", "::1", ...); a request's `Host` header must
    name one of them with `port`. `token` None turns the token check off (`--no-token`).
    """

    hosts: frozenset[str]
    port: int
    token: str | None

    @property
    def cookie_name(self) -> str:
        """The token cookie's name; per port, since cookies are shared by every port of a host."""
        return f"sparsecircuits-token-{self.port}"

    def check_host(self, header: str | None) -> None:
        """Raise `HTTPError` 403 unless `header` (the request's `Host`) names an allowed host and this port."""
        name, port = _split_host(header or "")
        if name not in self.hosts or port != self.port:
            raise HTTPError(
                HTTPStatus.FORBIDDEN,
                f"host {header!r} is not allowed; open the viewer at 127.0.0.1:{self.port} "
                "or start it with --allow-host",
            )

    def check_origin(self, origin: str | None, fetch_site: str | None) -> None:
        """Raise `HTTPError` 403 when a browser sent the request from another site.

        Requests without an `Origin` header (command-line clients, same-origin GETs) pass; the
        token guards them."""
        if fetch_site in ("cross-site", "same-site"):
            raise HTTPError(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")
        if origin is None:
            return
        url = urlsplit(origin)
        name, port = _split_host(url.netloc)
        if url.scheme != "http" or name not in self.hosts or port != self.port:
            raise HTTPError(HTTPStatus.FORBIDDEN, "cross-origin requests are refused")

    def token_matches(self, given: str | None) -> bool:
        """Whether `given` is this server's token (always true with the token check off)."""
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _split_host(netloc: str) -> tuple[str, int]:
    """`(name, port)` of a `Host` header or an origin's netloc; port 80 when absent."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        name, _, rest = netloc[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port_text = netloc.partition(":")
    if not port_text:
        return name, 80
    return (name, int(port_text)) if port_text.isdigit() and port_text.isascii() else (name, -1)


def parse_request_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in a POST body; raise `HTTPError` 400 with a short reason when it is not
    valid UTF-8 JSON, nests deeper than `MAX_DEPTH`, holds a number that is not finite or larger
    than `MAX_NUMBER` (floats) / `MAX_INT` (integers), or a string with a lone surrogate."""

    def bad(reason: str) -> HTTPError:
        return HTTPError(HTTPStatus.BAD_REQUEST, reason)

    def constant(name: str) -> Any:
        raise bad(f"{name} is not allowed; numbers must be finite")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise bad(f"number {text[:20]} is out of range (at most {MAX_NUMBER:g} in magnitude)")
        return value

    def integer(text: str) -> int:
        if len(text) > 12 or abs(int(text)) > MAX_INT:
            raise bad(f"integer {text[:20]} is out of range (at most {MAX_INT} in magnitude)")
        return int(text)

    try:
        request = json.loads(
            raw.decode("utf-8"), parse_constant=constant, parse_float=number, parse_int=integer
        )
    except RecursionError:
        raise bad(f"JSON nests too deeply (at most {MAX_DEPTH} levels)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("body must be JSON in UTF-8") from None
    if not isinstance(request, dict):
        raise bad("body must be a JSON object")
    _check_tree(request, 0, bad)
    return request


def _check_tree(value: Any, depth: int, bad: Callable[[str], HTTPError]) -> None:
    if depth > MAX_DEPTH:
        raise bad(f"JSON nests too deeply (at most {MAX_DEPTH} levels)")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad("text holds a lone surrogate (\\ud800-\\udfff); send valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1, bad)
            _check_tree(item, depth + 1, bad)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1, bad)


def _handler(app: ViewerApp, guard: RequestGuard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "sparsecircuits-viewer"
        protocol_version = "HTTP/1.1"
        timeout = READ_TIMEOUT  # socket timeout: a silent client cannot hold a thread forever

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet; the CLI prints the URL once

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            accepts = self.headers.get("Accept-Encoding", "")
            if len(body) > GZIP_ABOVE and "gzip" in accepts:
                body = gzip.compress(body, compresslevel=5)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in {**SECURITY_HEADERS, **(headers or {})}.items():
                self.send_header(key, value)
            if (
                status >= 400 and self.command == "POST"
            ):  # the body may be unread: drop the connection
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: Any, status: int = HTTPStatus.OK) -> None:
            self._send(
                status,
                json.dumps(payload, allow_nan=False).encode(),
                "application/json; charset=utf-8",
            )

        def _dispatch(self, fn: Callable[[], None]) -> None:
            try:
                guard.check_host(self.headers.get("Host"))
                fn()
            except HTTPError as exc:
                self._json({"error": exc.message}, exc.status)
            except SparseCircuitsError as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            except Exception:  # a viewer must answer, not hang the page; details stay server-side
                traceback.print_exc(file=sys.stderr)
                self._json(
                    {"error": "internal error; see the viewer's terminal"},
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                )

        def _authorise(self, query: dict[str, list[str]]) -> None:
            """Raise 403 unless the request carries the token (query, header or cookie)."""
            if guard.token is None:
                return
            candidates = list(query.get("token", []))
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("token "):
                candidates.append(auth[6:].strip())
            cookie = SimpleCookie()
            with contextlib.suppress(CookieError):  # a malformed cookie header: no token there
                cookie.load(self.headers.get("Cookie", ""))
            if guard.cookie_name in cookie:
                candidates.append(cookie[guard.cookie_name].value)
            if not any(guard.token_matches(c) for c in candidates):
                raise HTTPError(
                    HTTPStatus.FORBIDDEN,
                    "missing or wrong token; open the URL with ?token=... that "
                    "`sparsecircuits serve` printed",
                )

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch(self._post)

        def _get(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            query = parse_qs(url.query)
            if parts and parts[0] == "static" and len(parts) >= 2:
                return self._static("/".join(parts[1:]))  # public assets, no data: no token
            self._authorise(query)
            if not parts or parts == ["index.html"]:
                if "token" in query:  # keep the token in a cookie, out of the address bar
                    return self._enter(url.path, query)
                return self._static("index.html")
            if parts[0] != "api":
                raise HTTPError(HTTPStatus.NOT_FOUND, "not found")
            guard.check_origin(self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site"))
            route = parts[1:]
            if route == ["graphs"]:
                return self._json(app.list_graphs())
            if len(route) >= 2 and route[0] == "graphs":
                body = app.graph_bytes("/".join(route[1:]))
                return self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")
            if route in (["labels"], ["scores"], ["subgraph"], ["export"]):
                return self._json(_subgraph_get(app, route[0], query))
            if route == ["dashboards"]:
                return self._json(app.list_dashboards())
            if len(route) == 3 and route[0] == "dashboards" and route[2] == "features":
                return self._json(app.table(route[1], query))
            if len(route) == 4 and route[0] == "dashboards" and route[2] == "features":
                return self._json(app.feature(route[1], _int(route[3])))
            if len(route) == 4 and route[0] == "layers" and route[2] == "features":
                return self._json(app.feature_for_layer(_int(route[1]), _int(route[3])))
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no API route {url.path}")

        def _enter(self, path: str, query: dict[str, list[str]]) -> None:
            """Set the token cookie and redirect to `path` without the token (the URL fragment,
            such as #graph=..., survives the redirect)."""
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            cookie = f"{guard.cookie_name}={guard.token}; Path=/; HttpOnly; SameSite=Strict"
            headers = {"Location": path + (f"?{rest}" if rest else ""), "Set-Cookie": cookie}
            self._send(HTTPStatus.FOUND, b"", "text/plain; charset=utf-8", headers)

        def _post(self) -> None:
            url = urlsplit(self.path)
            route = url.path.rstrip("/")
            if route not in ("/api/intervene", "/api/subgraph"):
                raise HTTPError(HTTPStatus.NOT_FOUND, "not found")
            guard.check_origin(self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site"))
            query = parse_qs(url.query)
            self._authorise(query)
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise HTTPError(
                    HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"
                )
            request = parse_request_body(self._read_body())
            if route == "/api/subgraph":
                return self._json(app.save_subgraph(_graph_arg(query), request))
            return self._json(app.intervene(request))

        def _read_body(self) -> bytes:
            """The request body: `Content-Length` bytes (a non-negative integer of at most
            `MAX_BODY`), all read within `READ_TIMEOUT` seconds."""
            if self.headers.get("Transfer-Encoding"):
                raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
            text = (self.headers.get("Content-Length") or "").strip()
            if not text:
                raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            if not (text.isascii() and text.isdigit()):
                raise HTTPError(HTTPStatus.BAD_REQUEST, "Content-Length must be a byte count")
            length = int(text)
            if length > MAX_BODY:
                raise HTTPError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request over {MAX_BODY} bytes"
                )
            deadline = time.monotonic() + READ_TIMEOUT
            chunks: list[bytes] = []
            remaining = length
            try:
                while remaining:
                    if time.monotonic() > deadline:
                        raise TimeoutError
                    chunk = self.rfile.read1(min(remaining, 1 << 16))
                    if not chunk:
                        raise HTTPError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
                    chunks.append(chunk)
                    remaining -= len(chunk)
            except TimeoutError:
                raise HTTPError(HTTPStatus.REQUEST_TIMEOUT, "request body too slow") from None
            return b"".join(chunks)

        def _static(self, rel: str) -> None:
            root = STATIC_DIR.resolve()
            path = (root / rel).resolve()
            if root not in path.parents or not path.is_file():
                raise HTTPError(HTTPStatus.NOT_FOUND, "not found")
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
                ctype += "; charset=utf-8"
            self._send(HTTPStatus.OK, path.read_bytes(), ctype)

    return Handler


def _graph_arg(query: dict[str, list[str]]) -> str:
    gid = query.get("graph", [""])[0]
    if not gid:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "pass ?graph=<graph id>")
    return gid


def _subgraph_get(app: ViewerApp, what: str, query: dict[str, list[str]]) -> Any:
    """The answer to GET /api/labels, /api/scores, /api/subgraph or /api/export (the graph with
    its saved subgraph, in Neuronpedia's format)."""
    gid = _graph_arg(query)
    if what == "labels":
        return app.labels(gid)
    if what == "scores":
        pinned = [p for p in query.get("pinned", [""])[0].split(",") if p]
        return app.scores(gid, pinned)
    if what == "export":
        return app.export_neuronpedia(gid)
    return app.load_subgraph(gid)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise HTTPError(HTTPStatus.BAD_REQUEST, f"{text!r} is not an integer") from None


class ViewerServer:
    """A running viewer: `ViewerServer(app, host, port).start()`; `open_url`; `stop()`. Port 0 =
    any free port.

    It answers requests whose `Host` is 127.0.0.1, localhost, [::1], `host` (unless a wildcard
    such as 0.0.0.0) or one of `allowed_hosts`, with its port. With `require_token` (default) the
    page and the API need `token`, a fresh random string: `open_url` carries it.
    """

    def __init__(
        self,
        app: ViewerApp,
        host: str = "127.0.0.1",
        port: int = 8041,
        *,
        allowed_hosts: Iterable[str] = (),
        require_token: bool = True,
    ) -> None:
        self.token = secrets.token_urlsafe(32) if require_token else None
        # the port is known once bound; the handler reads the guard per request
        self.guard = RequestGuard(frozenset(), port, self.token)
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(app, self.guard))
        except OSError as exc:
            raise SparseCircuitsError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port"
            ) from None
        names = {*LOCAL_HOSTS, *(h.strip("[]").lower() for h in allowed_hosts)}
        if host not in ("", "0.0.0.0", "::"):
            names.add(host.strip("[]").lower())
        self.guard.hosts = frozenset(names)
        self.guard.port = int(self.httpd.server_address[1])
        self.httpd.daemon_threads = True
        self.app = app
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8041/."""
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}/"

    @property
    def open_url(self) -> str:
        """The URL to open in a browser: `url` with `?token=` (just `url` without a token)."""
        return self.url if self.token is None else f"{self.url}?token={self.token}"

    def start(self) -> ViewerServer:
        """Serve from a daemon thread; return self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="viewer", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until interrupted."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
