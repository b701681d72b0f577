"""A local Hugging Face hub cache, laid out the way huggingface_hub writes it, for offline tests.

The layout is the one huggingface_hub documents in "Manage the huggingface_hub cache system" →
"Understand caching" (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):

    <cache>/models--{org}--{name}/refs/{branch}              the commit hash (no newline)
    <cache>/models--{org}--{name}/blobs/{etag}                the file's bytes (etag: the sha256
                                                              for LFS files, the git blob sha1 else)
    <cache>/models--{org}--{name}/snapshots/{commit}/{path}   -> ../../blobs/{etag} (relative link)

The tests check the layout with huggingface_hub's own reader (`scan_cache_dir`) and read it back
through `hf_hub_download` / `snapshot_download` with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
