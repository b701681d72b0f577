"""Dashboards in circuit-tracer's feature-file layout, so its frontend shows our features.

    features/index.json.gz   gzip JSON list indexed by layer: {"filename", "offsets"}
    features/<name>.bin      per feature f: bytes [offsets[f], offsets[f+1]) hold a 4-byte
                             little-endian length n, then n bytes of zlib-deflated JSON

Each JSON record has circuit-tracer's feature fields (`frontend/feature_models.py`):
`transcoder_id, index, examples_quantiles, top_logits, bottom_logits, act_min, act_max,
quantile_values, histogram, activation_frequency`; `histogram` is the list of bin counts.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.interpret.store import DashboardStore

RECORD_KEYS = (
    "transcoder_id",
    "index",
    "examples_quantiles",
    "top_logits",
    "bottom_logits",
    "act_min",
    "act_max",
    "quantile_values",
    "activation_frequency",
)
EXAMPLE_KEYS = ("tokens_acts_list", "train_token_ind", "is_repeated_datapoint", "tokens")


def feature_record(dashboard: dict[str, Any]) -> dict[str, Any]:
    """One latent's dashboard (`DashboardStore.feature`) as a circuit-tracer feature record."""
    record = {key: dashboard[key] for key in RECORD_KEYS}
    record["examples_quantiles"] = [
        {
            "quantile_name": group["quantile_name"],
            "examples": [{k: ex[k] for k in EXAMPLE_KEYS} for ex in group["examples"]],
        }
        for group in dashboard["examples_quantiles"]
    ]
    record["histogram"] = [float(c) for c in dashboard["histogram"]["counts"]]
    return record


def write_feature_files(store: DashboardStore, folder: str | Path) -> Path:
    """Write every dictionary of `store` that reads a block (has a layer) under `folder/features/`.

    Returns the `features` folder. Dictionaries are placed at their layer's index; layers without
    one get `{"filename": null, "offsets": null}`.
    """
    out = Path(folder) / "features"
    out.mkdir(parents=True, exist_ok=True)
    by_layer: dict[int, str] = {}
    for name in store.names:
        layer = store.info(name).get("layer")
        if layer is not None:
            if int(layer) in by_layer:
                raise SparseCircuitsError(
                    f"two dictionaries read layer {layer} ({by_layer[int(layer)]}, {name}); "
                    "write them to separate folders"
                )
            by_layer[int(layer)] = name
    if not by_layer:
        raise SparseCircuitsError("no dashboard dictionary has a layer; nothing to write")
    index: list[dict[str, Any]] = [
        {"filename": None, "offsets": None} for _ in range(max(by_layer) + 1)
    ]
    for layer, name in sorted(by_layer.items()):
        filename = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".bin"
        offsets = [0]
        with (out / filename).open("wb") as f:
            for i in range(int(store.info(name)["d_sae"])):
                payload = zlib.compress(json.dumps(feature_record(store.feature(name, i))).encode())
                f.write(struct.pack("<I", len(payload)))
                f.write(payload)
                offsets.append(offsets[-1] + 4 + len(payload))
        index[layer] = {"filename": filename, "offsets": offsets}
    (out / "index.json.gz").write_bytes(gzip.compress(json.dumps(index).encode()))
    return out
