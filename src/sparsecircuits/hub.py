"""Hugging Face hub references (`hf://ORG/REPO[/SUBPATH][@REVISION]`) turned into local paths.

Everything goes through `huggingface_hub`: its cache (`HF_HUB_CACHE`, `HF_HOME`), its token
(`HF_TOKEN`, `hf auth login`), its progress bars, and its offline switch (`HF_HUB_OFFLINE=1`).
Only the files a caller needs are fetched: named files one by one (`hf_hub_download`), or
`snapshot_download` restricted by patterns. When the hub cannot be reached, whatever the cache
holds is used; what it lacks is named in one `SparseCircuitsError` line together with the
command that fetches it.

* `parse_hub_ref(text) -> HubRef`, `is_hub_ref(text)`, `parse_hub_id(name) -> HubRef`.
* `model_folder(ref) -> Path`: a model's folder (config, tokenizer, safetensors weights only).
* `dictionary_path(ref) -> Path`: a dictionary file or folder (weights and configs only; no
  viewer feature files, no optimizer state). A circuit-tracer `config.yaml` whose
  `transcoders:` list names `hf://` files elsewhere has those files fetched too.
* `fetch_files(repo_id, files, revision, optional) -> Path`: exact files; the snapshot folder.
* `local_file(uri) -> Path`: one `hf://ORG/REPO/FILE[?revision=R]` file (for format readers).
* `hub_cache_dir()`, `sparsecircuits_cache_dir()` (ours: preset folders).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sparsecircuits.errors import SparseCircuitsError

HUB_PREFIX = "hf://"

# A model folder: what transformers reads to build the model and its tokenizer (no .bin
# weights: nothing on our load paths unpickles).
MODEL_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# Dictionary files of every layout we know: SAELens / ours (cfg.json + safetensors), Gemma Scope
# (params.npz, params.safetensors + config.json), circuit-tracer (config.yaml + safetensors),
# sparsify (cfg.json + sae.safetensors), the transcoder paper (.pt, read without pickle).
DICTIONARY_PATTERNS = ("*.json", "*.yaml", "*.safetensors", "*.npz", "*.pt")
# Large files that share those suffixes but no reader needs: viewer feature files, training
# state of sparsify runs, the paper's feature-sparsity logs.
DICTIONARY_IGNORE = (
    "features/*",
    "*/features/*",
    "*optimizer*",
    "*lr_scheduler*",
    "*state.pt",
    "*_log_feature_sparsity.pt",
)
DICTIONARY_SUFFIXES = (".json", ".yaml", ".safetensors", ".npz", ".pt")


@dataclass(frozen=True)
class HubRef:
    """A repository on the hub, a path inside it ("" for its root) and a revision (None: main)."""

    repo_id: str
    subpath: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        path = f"{self.repo_id}/{self.subpath}" if self.subpath else self.repo_id
        return HUB_PREFIX + path + (f"@{self.revision}" if self.revision else "")

    def under(self, pattern: str) -> str:
        """`pattern` relative to this reference's subpath, as a repo path pattern."""
        return f"{self.subpath}/{pattern}" if self.subpath else pattern


def is_hub_ref(text: object) -> bool:
    """Whether `text` is an `hf://` reference."""
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_ref(text: str) -> HubRef:
    """Parse `hf://ORG/REPO[/SUBPATH][@REVISION]` (circuit-tracer's `?revision=R` also works).

    Raises `SparseCircuitsError` when there is no `ORG/REPO`.
    """
    if not is_hub_ref(text):
        raise SparseCircuitsError(f"{text!r} is not a hub reference; write hf://ORG/REPO[/SUBPATH]")
    parts = urlsplit(text)
    path = (parts.netloc + parts.path).strip("/")
    revision = parse_qs(parts.query).get("revision", [None])[0]
    if "@" in path:
        path, revision = path.rsplit("@", 1)
    pieces = [p for p in path.split("/") if p]
    if len(pieces) < 2 or any(p in (".", "..") for p in pieces) or revision == "":
        raise SparseCircuitsError(
            f"{text!r} is not a hub reference; write hf://ORG/REPO[/SUBPATH][@REVISION]"
        )
    return HubRef("/".join(pieces[:2]), "/".join(pieces[2:]), revision or None)


def parse_hub_id(name: str) -> HubRef:
    """A plain hub id, `ORG/REPO` (or a legacy one-part id such as `gpt2`), `@REVISION` optional."""
    repo_id, _, revision = name.partition("@")
    return HubRef(repo_id, "", revision or None)


def model_id(name: str) -> str:
    """The id a model is known by outside this machine (a graph's `metadata.scan`): the repo id of
    a hub model (`hf://ORG/REPO/...` or `ORG/REPO@REV` give `ORG/REPO`), the folder name of a
    local one (never its path), "embedded" for the shipped model."""
    if is_hub_ref(name):
        return parse_hub_ref(name).repo_id
    path = Path(name).expanduser()
    if name == "embedded" or not (path.is_absolute() or path.exists() or name.startswith(".")):
        return parse_hub_id(name).repo_id
    return path.resolve().name


def hub_cache_dir() -> Path:
    """The folder huggingface_hub caches into (`HF_HUB_CACHE`, else `HF_HOME/hub`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _download_bars() -> Iterator[None]:
    """Show huggingface_hub's download bars (the CLI silences Hugging Face's loading bars)."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()


def _missing_error(
    repo_id: str,
    revision: str | None,
    missing: Sequence[str],
    *,
    include: Sequence[str] = (),
    reason: str | None = None,
) -> SparseCircuitsError:
    """The one-line error naming what the cache lacks and how to fetch it: rerun with network
    access, or `hf download` the files (`include`: patterns instead of the few missing names)."""
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if reason is None:
        reason = (
            "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face hub could not be reached"
        )
    how = "rerun with network access (HF_HUB_OFFLINE unset) to download what is missing"
    words = [f"--include '{pattern}'" for pattern in include]
    if not include and len(missing) <= 3:
        words = list(missing)
    if words:
        revision_flag = [f"--revision {revision}"] if revision else []
        how += f", or run: hf download {' '.join([repo_id, *words, *revision_flag])}"
    return SparseCircuitsError(
        f"{HUB_PREFIX}{repo_id}: missing from the Hugging Face cache {hub_cache_dir()}: {shown} "
        f"({reason}); {how}"
    )


def _hub_error(repo_id: str, revision: str | None, exc: Exception) -> SparseCircuitsError:
    """A hub failure other than 'not cached', as one line that says what to do."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return SparseCircuitsError(
            f"{HUB_PREFIX}{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id} "
            "and log in with `hf auth login` (or set HF_TOKEN)"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return SparseCircuitsError(
            f"no hub repository {repo_id} (or it is private: log in with `hf auth login`); "
            "check the ORG/REPO spelling"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return SparseCircuitsError(f"{HUB_PREFIX}{repo_id} has no revision {revision!r}")
    if isinstance(exc, errors.HFValidationError):
        return SparseCircuitsError(f"{repo_id!r} is not a valid hub repository id ({exc})")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SparseCircuitsError(f"could not download from {HUB_PREFIX}{repo_id}: {first}")


def fetch_files(
    repo_id: str,
    files: Sequence[str],
    revision: str | None = None,
    optional: Sequence[str] = (),
) -> Path:
    """Fetch exactly `files` (repo paths) into the hub cache; return the snapshot folder.

    `optional` files are fetched when the repository has them and skipped when it does not (or,
    offline, when the cache lacks them). Every required file that is neither cached nor
    downloadable is named in one `SparseCircuitsError`.
    """
    from huggingface_hub import errors, hf_hub_download

    snapshot: Path | None = None
    missing: list[str] = []
    cache_only = False  # after one file found the hub unreachable, spare the rest its retries
    with _download_bars():
        for name in [*files, *optional]:
            required = name not in optional or name in files
            try:
                local = Path(
                    hf_hub_download(repo_id, name, revision=revision, local_files_only=cache_only)
                )
            except errors.LocalEntryNotFoundError:
                cache_only = True
                if required:
                    missing.append(name)
                continue
            except errors.EntryNotFoundError:  # the repository has no such file
                if required:
                    raise SparseCircuitsError(
                        f"{HUB_PREFIX}{repo_id} has no file {name}"
                        + (f" at revision {revision}" if revision else "")
                    ) from None
                continue
            except (errors.HfHubHTTPError, errors.HFValidationError, ValueError) as exc:
                raise _hub_error(repo_id, revision, exc) from None
            # the snapshot root: up from `local` one folder per part of `name`
            snapshot = local.parents[len(Path(name).parts) - 1]
    if missing:
        raise _missing_error(repo_id, revision, missing)
    if snapshot is None:
        raise SparseCircuitsError(f"{HUB_PREFIX}{repo_id}: no files were asked for")
    return snapshot


def fetch_patterns(
    ref: HubRef,
    allow: Sequence[str],
    ignore: Sequence[str],
    missing: Sequence[str],
    include: Sequence[str],
) -> Path:
    """`snapshot_download` of the files under `ref.subpath` matching `allow` and not `ignore`;
    return the local folder of `ref` (the snapshot folder joined with the subpath).

    `missing` names the files and `include` the `hf download` patterns for the error raised
    when nothing of it is cached offline.
    """
    from huggingface_hub import errors, snapshot_download

    allow_patterns = [ref.under(p) for p in allow]
    try:
        with _download_bars():
            root = snapshot_download(
                ref.repo_id,
                revision=ref.revision,
                allow_patterns=allow_patterns,
                ignore_patterns=[ref.under(p) for p in ignore] or None,
            )
    except errors.LocalEntryNotFoundError:
        root = None
    except (errors.HfHubHTTPError, errors.HFValidationError, ValueError) as exc:
        raise _hub_error(ref.repo_id, ref.revision, exc) from None
    folder = Path(str(root)) / ref.subpath if root is not None else None
    if folder is None or not folder.exists():
        raise _missing_error(ref.repo_id, ref.revision, missing, include=include)
    return folder


def model_folder(ref: HubRef | str) -> Path:
    """A local folder with the model of `ref` (config, tokenizer, safetensors weights).

    Only the files `MODEL_PATTERNS` names, at the top of `ref.subpath`, are fetched. Raises
    `SparseCircuitsError` naming what is missing when the cache lacks a part of the model.
    """
    ref = parse_hub_ref(ref) if isinstance(ref, str) else ref
    essentials = ["config.json", "tokenizer.json", "model.safetensors"]
    include = [ref.under(p) for p in ("*.json", "*.safetensors", "tokenizer*")]
    folder = fetch_patterns(
        ref, MODEL_PATTERNS, ("*/*",), [ref.under(n) for n in essentials], include
    )
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        missing.append("tokenizer.json")
    missing += _missing_weights(folder)
    if missing:
        raise _missing_error(
            ref.repo_id,
            ref.revision,
            [ref.under(name) for name in missing],
            include=include,
            reason=(
                "HF_HUB_OFFLINE is set"
                if _offline()
                else "the repository has no such files; sparsecircuits reads safetensors weights only"
            ),
        )
    return folder


def _missing_weights(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [name for name in shards if not (folder / name).is_file()]
    if (folder / "model.safetensors").is_file():
        return []
    return ["model.safetensors"]


def dictionary_path(ref: HubRef | str) -> Path:
    """A local file or folder with the dictionary (or transcoder set) of `ref`.

    A subpath ending in a dictionary file suffix is fetched alone; otherwise the dictionary
    files under the subpath (`DICTIONARY_PATTERNS` less `DICTIONARY_IGNORE`) are, with the
    parent folder's `config.json` if there is one (a sparsify run's training config, which
    tells whether its older coders transcode). Files that a circuit-tracer `config.yaml` there
    lists as `hf://` URIs are fetched as well.
    """
    ref = parse_hub_ref(ref) if isinstance(ref, str) else ref
    if ref.subpath.endswith(DICTIONARY_SUFFIXES):
        return fetch_files(ref.repo_id, [ref.subpath], ref.revision) / ref.subpath
    place = f"the dictionary files under {ref.subpath or 'the repository root'}"
    run_config = posixpath.join(posixpath.dirname(ref.subpath), "config.json")
    include = [ref.under(p) for p in DICTIONARY_PATTERNS] + ([run_config] if ref.subpath else [])
    folder = fetch_patterns(ref, DICTIONARY_PATTERNS, DICTIONARY_IGNORE, [place], include)
    if not any(p.is_file() and p.suffix in DICTIONARY_SUFFIXES for p in folder.rglob("*")):
        raise _missing_error(
            ref.repo_id,
            ref.revision,
            [place],
            include=include,
            reason="the cached snapshot holds none" if _offline() else "the repository holds none",
        )
    if ref.subpath:  # a sparsify hookpoint folder: its run's config.json says if it transcodes
        parent = posixpath.dirname(ref.subpath)
        with contextlib.suppress(SparseCircuitsError):
            fetch_files(
                ref.repo_id, [], ref.revision, optional=[posixpath.join(parent, "config.json")]
            )
    fetch_listed_files(folder / "config.yaml")
    return folder


def fetch_listed_files(config_yaml: Path) -> list[Path]:
    """Fetch the `hf://` files a circuit-tracer `config.yaml` lists under `transcoders:`;
    return their local paths in order (none when the file or the list is absent)."""
    if not config_yaml.is_file():
        return []
    import yaml

    try:
        config: Any = yaml.safe_load(config_yaml.read_text())
    except yaml.YAMLError as exc:
        raise SparseCircuitsError(f"{config_yaml} is not valid YAML ({exc})") from None
    listed = config.get("transcoders") if isinstance(config, dict) else None
    if not isinstance(listed, list):
        return []
    return [local_file(entry) for entry in listed if is_hub_ref(entry)]


def local_file(uri: str) -> Path:
    """The local path of the one file `hf://ORG/REPO/PATH[?revision=R]` (fetched if needed)."""
    ref = parse_hub_ref(uri)
    if not ref.subpath:
        raise SparseCircuitsError(f"{uri!r} names a repository, not a file; add the file's path")
    return fetch_files(ref.repo_id, [ref.subpath], ref.revision) / ref.subpath


def sparsecircuits_cache_dir() -> Path:
    """Our own cache folder (`SPARSECIRCUITS_CACHE`, else `$XDG_CACHE_HOME/sparsecircuits`)."""
    explicit = os.environ.get("SPARSECIRCUITS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "sparsecircuits"
