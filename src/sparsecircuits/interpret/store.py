"""Dashboards on disk: one `index.json` plus one safetensors file per dictionary, read latent by
latent (docs/internals.md)."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.config import from_dict
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.files import atomic_output, atomic_write_text
from sparsecircuits.interpret.dashboards import DashboardConfig, FeatureDashboards

FORMAT = "sparsecircuits-dashboards"
VERSION = 1
INDEX = "index.json"
# the per-latent tensors of `FeatureDashboards` (rows = latents), in field order
_TENSORS = tuple(
    f.name
    for f in dataclasses.fields(FeatureDashboards)
    if f.type in ("Tensor", "Tensor | None") and f.name != "hist_edges"
)
_SUMMARY = ("fire_counts", "max_acts", "act_sums")
# the `FeatureDashboards` fields a dictionary's index entry copies
_INDEX_KEYS = ("hook_in", "hook_out", "layer", "kind", "d_sae", "n_tokens", "model_name")
_COPY = re.compile(r".+\.[0-9a-f]{8}\.safetensors")  # a file written beside one the index named


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".safetensors"


def save_dashboards(dashboards: dict[str, FeatureDashboards], folder: str | Path) -> Path:
    """Write every dictionary's dashboards to `folder` (index.json + one safetensors each); return it.

    Crash-safe: each file is written atomically, `index.json` last, and files the current index
    names are never overwritten (a new copy gets another name), so a reader sees the old set or
    the new one whole; files only the old index named are removed at the end.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads((folder / INDEX).read_text())
        old_files = {str(info["file"]) for info in previous["dictionaries"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old_files = set()
    index: dict[str, Any] = {"format": FORMAT, "version": VERSION, "dictionaries": {}, "tokens": {}}
    for name, dash in dashboards.items():
        tensors = {
            key: getattr(dash, key).contiguous()
            for key in _TENSORS
            if getattr(dash, key) is not None
        }
        tensors["hist_edges"] = dash.hist_edges.contiguous()
        file = _file_name(name)
        if file in old_files:
            file = file.removesuffix(".safetensors") + f".{secrets.token_hex(4)}.safetensors"
        with atomic_output(folder / file) as temporary:
            save_file(tensors, str(temporary))
        index["dictionaries"][name] = {
            "file": file,
            **{key: getattr(dash, key) for key in _INDEX_KEYS},
            "config": dataclasses.asdict(dash.config),
        }
        index["tokens"].update({str(i): text for i, text in dash.token_strings.items()})
    atomic_write_text(folder / INDEX, json.dumps(index, indent=1, sort_keys=True))
    new_files = {info["file"] for info in index["dictionaries"].values()}
    for path in folder.glob("*.safetensors"):  # replaced files, and copies of a write that died
        if path.name not in new_files and (path.name in old_files or _COPY.fullmatch(path.name)):
            path.unlink(missing_ok=True)
    return folder


def load_dashboards(folder: str | Path) -> DashboardStore:
    """Open a dashboards folder written by `save_dashboards`."""
    return DashboardStore(folder)


class DashboardStore:
    """Read access to a dashboards folder: metadata, per-latent JSON, and a browsable table."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise SparseCircuitsError(
                f"{self.folder} has no {INDEX}; run `sparsecircuits dashboards --out {self.folder}`"
            )
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise SparseCircuitsError(f"{path} is not a sparsecircuits dashboards index")
        self.index = index
        self.tokens: dict[int, str] = {int(k): v for k, v in index["tokens"].items()}
        self._summary: dict[str, dict[str, Tensor]] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Dictionary names, in index order."""
        return list(self.index["dictionaries"])

    def info(self, name: str) -> dict[str, Any]:
        """The index entry of dictionary `name` (hooks, layer, d_sae, n_tokens, config)."""
        try:
            return self.index["dictionaries"][name]
        except KeyError:
            raise SparseCircuitsError(
                f"no dashboards for {name!r}; available: {', '.join(self.names)}"
            ) from None

    def name_for_layer(self, layer: int) -> str | None:
        """The transcoder/dictionary whose `hook_in` is in block `layer` (first one), or None."""
        for name, info in self.index["dictionaries"].items():
            if info.get("layer") == layer:
                return name
        return None

    def config(self, name: str) -> DashboardConfig:
        """The `DashboardConfig` the dashboards of `name` were computed with."""
        return from_dict(DashboardConfig, self.info(name)["config"], where=f"{self.folder / INDEX}")

    def _open(self, name: str) -> Any:
        return safe_open(str(self.folder / self.info(name)["file"]), framework="pt")

    def summary(self, name: str) -> dict[str, Tensor]:
        """`fire_counts`, `max_acts`, `act_sums` `[d_sae]` of dictionary `name` (cached)."""
        with self._lock:
            if name not in self._summary:
                with self._open(name) as f:
                    self._summary[name] = {key: f.get_tensor(key) for key in _SUMMARY}
            return self._summary[name]

    def _text(self, token_id: int) -> str:
        return self.tokens.get(int(token_id), f"<{int(token_id)}>")

    def _label_text(self, token_id: int) -> str:
        return self._text(token_id).strip() or repr(self._text(token_id))

    def _examples(
        self, ids: Tensor, window_acts: Tensor, centre_acts: Tensor, left: int
    ) -> list[dict[str, Any]]:
        examples = []
        for row_ids, row_acts, centre in zip(
            ids.tolist(), window_acts.tolist(), centre_acts.tolist(), strict=True
        ):
            if centre == 0:
                continue
            keep = [i for i, t in enumerate(row_ids) if t >= 0]
            examples.append(
                {
                    "tokens": [self._text(row_ids[i]) for i in keep],
                    "token_ids": [row_ids[i] for i in keep],
                    "tokens_acts_list": [row_acts[i] for i in keep],
                    "train_token_ind": keep.index(left),
                    "activation": centre,
                    "is_repeated_datapoint": False,
                }
            )
        return examples

    def feature(self, name: str, index: int) -> dict[str, Any]:
        """The dashboard of latent `index` of dictionary `name` as a JSON-ready dict."""
        info = self.info(name)
        if not 0 <= index < info["d_sae"]:
            raise SparseCircuitsError(
                f"feature {index} is out of range for {name} (0..{info['d_sae'] - 1})"
            )
        cfg = self.config(name)
        rows: dict[str, Tensor | None] = {}
        with self._open(name) as f:
            keys = set(f.keys())
            for key in _TENSORS:
                rows[key] = f.get_slice(key)[index] if key in keys else None
            edges = f.get_tensor("hist_edges")

        def row(key: str) -> Tensor:
            value = rows[key]
            if value is None:
                raise SparseCircuitsError(f"{self.folder} lacks {key}; recompute the dashboards")
            return value

        left = cfg.context_left
        top = self._examples(row("top_token_ids"), row("top_window_acts"), row("top_acts"), left)
        sample = self._examples(
            row("sample_token_ids"), row("sample_window_acts"), row("sample_acts"), left
        )
        sample.sort(key=lambda e: -abs(e["activation"]))
        groups, quantile_values = _quantile_groups(sample, cfg.n_quantiles)
        fire_count = int(row("fire_counts"))
        n_tokens = int(info["n_tokens"])

        def tokens_of(key: str) -> list[str]:
            row = rows.get(key)
            return [] if row is None else [self._text(i) for i in row.tolist()]

        def values_of(key: str) -> list[float]:
            row = rows.get(key)
            return [] if row is None else [float(v) for v in row.tolist()]

        return {
            "dictionary": name,
            "transcoder_id": name,
            "layer": info["layer"],
            "index": index,
            "hook_in": info["hook_in"],
            "hook_out": info["hook_out"],
            "n_tokens": n_tokens,
            "fire_count": fire_count,
            "activation_frequency": fire_count / max(n_tokens, 1),
            "act_min": 0.0,
            "act_max": float(row("max_acts")),
            "mean_active_activation": float(row("act_sums")) / max(fire_count, 1),
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": top}, *groups],
            "quantile_values": quantile_values,
            "histogram": {
                "edges": [float(e) for e in edges.tolist()],
                "counts": [int(c) for c in row("hist_counts").tolist()],
            },
            "top_logits": tokens_of("top_logit_ids"),
            "top_logit_values": values_of("top_logit_values"),
            "bottom_logits": tokens_of("bottom_logit_ids"),
            "bottom_logit_values": values_of("bottom_logit_values"),
            "deembeddings": tokens_of("deembed_ids"),
            "deembedding_values": values_of("deembed_values"),
        }

    def table(
        self,
        name: str,
        *,
        offset: int = 0,
        limit: int = 50,
        sort: str = "index",
        query: str = "",
        include_dead: bool = True,
    ) -> dict[str, Any]:
        """A page of the feature browser: `{"total", "rows": [{index, density, max_act, top_logits...}]}`.

        `sort` is "index", "density" or "max_act" (both descending); `query` keeps latents whose
        top logits or top activating tokens contain it (case-insensitive).
        """
        if sort not in ("index", "density", "max_act"):
            raise SparseCircuitsError(f"unknown sort {sort!r}; use index, density or max_act")
        info = self.info(name)
        summ = self.summary(name)
        n_tokens = max(int(info["n_tokens"]), 1)
        order = torch.arange(info["d_sae"])
        if not include_dead:
            order = order[summ["fire_counts"] > 0]
        if sort == "density":
            order = order[torch.argsort(summ["fire_counts"][order], descending=True, stable=True)]
        elif sort == "max_act":
            order = order[torch.argsort(summ["max_acts"][order], descending=True, stable=True)]
        if query:
            order = self._matching(name, order, query.lower())
        page = order[offset : offset + max(0, min(limit, 500))].tolist()
        rows = []
        left = self.config(name).context_left
        with self._open(name) as f:
            keys = set(f.keys())
            for i in page:
                top_logits = (
                    f.get_slice("top_logit_ids")[i][:5].tolist() if "top_logit_ids" in keys else []
                )
                ids = f.get_slice("top_token_ids")[i][0].tolist()
                rows.append(
                    {
                        "index": i,
                        "density": int(summ["fire_counts"][i]) / n_tokens,
                        "max_act": float(summ["max_acts"][i]),
                        "top_logits": [self._text(t) for t in top_logits],
                        "top_token": self._text(ids[left])
                        if ids[left] >= 0 and summ["fire_counts"][i] > 0
                        else "",
                    }
                )
        return {"dictionary": name, "total": len(order), "offset": offset, "rows": rows}

    def labels(self, name: str, indices: list[int], n_tokens: int = 3) -> dict[int, str]:
        """An automatic label per latent of `indices`: `"<top tokens> → <top logits>"`.

        The top tokens are the most frequent centre tokens of the latent's top activating
        examples (most frequent first); the top logits are its strongest output tokens
        (de-embedding). Dead latents get `"dead"`.
        """
        info = self.info(name)
        summ = self.summary(name)
        centre = self.config(name).context_left
        out: dict[int, str] = {}
        with self._open(name) as f:
            keys = set(f.keys())
            for i in sorted({int(i) for i in indices if 0 <= int(i) < info["d_sae"]}):
                if summ["fire_counts"][i] <= 0:
                    out[i] = "dead"
                    continue
                counts = Counter(
                    self._label_text(ids[centre])
                    for ids in f.get_slice("top_token_ids")[i].tolist()
                    if ids[centre] >= 0
                )
                fires = [text for text, _ in counts.most_common(n_tokens)]
                logits: list[str] = []
                if "top_logit_ids" in keys:
                    ids = f.get_slice("top_logit_ids")[i][:n_tokens].tolist()
                    logits = [self._label_text(t) for t in ids]
                label = " · ".join(fires)
                if logits:
                    label += " → " + " · ".join(logits)
                out[i] = label
        return out

    def _matching(self, name: str, order: Tensor, query: str) -> Tensor:
        matching_ids = torch.tensor(
            [i for i, text in self.tokens.items() if query in text.lower()], dtype=torch.int64
        )
        if matching_ids.numel() == 0:
            return order[:0]
        with self._open(name) as f:
            keys = set(f.keys())
            centre = self.config(name).context_left
            hits = torch.isin(f.get_tensor("top_token_ids")[:, :, centre].long(), matching_ids).any(
                1
            )
            if "top_logit_ids" in keys:
                hits |= torch.isin(f.get_tensor("top_logit_ids"), matching_ids).any(1)
        return order[hits[order]]


def _quantile_groups(
    sample: list[dict[str, Any]], n_quantiles: int
) -> tuple[list[dict[str, Any]], list[float]]:
    """Split a sample sorted by activation (descending) into equal-count quantile groups, top first."""
    if not sample:
        return [], []
    groups = []
    values = []
    n = len(sample)
    for q in range(n_quantiles):
        lo, hi = n * q // n_quantiles, n * (q + 1) // n_quantiles
        chunk = sample[lo:hi]
        if not chunk:
            continue
        pct_hi = 100 - 100 * q // n_quantiles
        pct_lo = 100 - 100 * (q + 1) // n_quantiles
        groups.append({"quantile_name": f"Quantile {pct_lo}-{pct_hi}%", "examples": chunk})
        values.append(float(chunk[-1]["activation"]))
    return groups, values
