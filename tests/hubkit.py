"""A local Hugging Face hub cache, laid out the way huggingface_hub writes it, for offline tests.

The layout is the one huggingface_hub documents in "Manage the huggingface_hub cache system" →
"Understand caching" (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):

    <cache>/models--{org}--{name}/refs/{branch}              the commit hash (no newline)
    <cache>/models--{org}--{name}/blobs/{etag}                the file's bytes (etag: the sha256
                                                              for LFS files, the git blob sha1 else)
    <cache>/models--{org}--{name}/snapshots/{commit}/{path}   -> ../../blobs/{etag} (relative link)

The tests check the layout with huggingface_hub's own reader (`scan_cache_dir`), against a cache
huggingface_hub itself writes when downloading from `serve_fake_hub`, and read it back through
`hf_hub_download` / `snapshot_download` with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes], branch: str = "main") -> Path:
    """Write `files` ({repo path: bytes}) as one commit of `repo_id` on `branch`; return the
    snapshot folder. The commit hash is derived from the contents (stable across runs)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path])
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    for path, data in files.items():
        etag = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


def add_folder(cache: Path, repo_id: str, folder: Path, prefix: str = "") -> Path:
    """`add_repo` with every file under `folder`, at `prefix/<relative path>` in the repo."""
    files = {
        "/".join(filter(None, [prefix, p.relative_to(folder).as_posix()])): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    return add_repo(cache, repo_id, files)


def use_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point huggingface_hub (env and its already-read constants) at an empty cache under
    `tmp_path` with HF_HUB_OFFLINE=1, and our preset folders at `tmp_path/sc`; return the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "sc"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def serve_fake_hub(repos: dict[str, dict[str, bytes]]) -> tuple[ThreadingHTTPServer, list[str]]:
    """A local HTTP server answering the hub routes huggingface_hub downloads through (for
    HF_ENDPOINT): `/api/models/REPO/revision/REV` (repo info), `/api/models/REPO/tree/REV`
    (file listing), `HEAD|GET /REPO/resolve/REV/PATH` (metadata headers X-Repo-Commit, ETag,
    Content-Length; the bytes). Return the running server and the log of "METHOD PATH" of
    every request, to check what was downloaded. `repos`: {repo_id: {path: bytes}}."""
    log: list[str] = []
    commits = {
        repo: hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        for repo, files in repos.items()
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            self.send_response(code)
            for key, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            log.append(f"{self.command} {path}")
            parts = path.strip("/").split("/")
            api = parts[:2] == ["api", "models"]
            repo = "/".join(parts[2:4] if api else parts[:2])
            if repo not in repos:
                return self._reply(404, headers={"X-Error-Code": "RepoNotFound"})
            files = repos[repo]
            if api and parts[4] == "revision":
                info = {
                    "id": repo,
                    "sha": commits[repo],
                    "siblings": [{"rfilename": p} for p in files],
                }
                return self._reply(200, json.dumps(info).encode())
            if api and parts[4] == "tree":
                tree = [
                    {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in sorted(files.items())
                ]
                return self._reply(200, json.dumps(tree).encode())
            name = "/".join(parts[4:])
            if parts[2:3] != ["resolve"] or name not in files:
                return self._reply(404, headers={"X-Error-Code": "EntryNotFound"})
            etag = hashlib.sha256(files[name]).hexdigest()
            headers = {"X-Repo-Commit": commits[repo], "ETag": f'"{etag}"'}
            return self._reply(200, files[name], headers)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, log
