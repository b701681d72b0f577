"""Gemma Scope (Gemma-2, `params.npz`) and Gemma Scope 2 (Gemma-3, `params.safetensors`) readers.

Both hold a JumpReLU dictionary with no input bias, the threshold stored raw (spec §1.4, §1.5):

* Gemma Scope 1 `params.npz`: `W_enc [d_in, d_sae]` (our orientation), `W_dec [d_sae, d_out]`,
  `b_enc`, `b_dec`, `threshold` (lower-case spellings accepted, as SAELens does). The file says
  nothing about its site; the repository path does (`gemma-scope-2b-pt-transcoders/layer_L/…`:
  transcoder `ln2.hook_normalized -> hook_mlp_out`; `-res`, `-mlp`, `-att`: SAEs at
  `hook_resid_post`, `hook_mlp_out`, `attn.hook_z`).
* Gemma Scope 2 `params.safetensors`: `w_enc [d_in, d_sae]`, `w_dec [d_sae, d_out]`, `b_enc`,
  `b_dec`, `threshold`, optional `affine_skip_connection [d_in, d_out]` applied as `x @ A`, so
  our `W_skip = A.T`. Hooks from a `config.json` beside it (`hf_hook_point_in/out`) or, as in
  SAELens' loader, the folder name (`transcoder`/`clt`, `resid_post`, `attn_out`, `mlp_out`).
  A cross-layer transcoder is a folder of one file per source layer with
  `w_dec [d_sae, n_layers, d_out]`, of which layer ℓ uses targets `ℓ..`.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.dictionaries.formats import hooks
from sparsecircuits.dictionaries.formats.common import (
    build,
    log_threshold,
    read_mapping,
)
from sparsecircuits.dictionaries.lazy import map_safetensors
from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
from sparsecircuits.errors import SparseCircuitsError

# lower-case spellings SAELens' Gemma Scope loaders accept, -> our names
_NPZ_KEYS = {
    "w_enc": "W_enc", "wenc": "W_enc", "w_e": "W_enc",
    "w_dec": "W_dec", "wdec": "W_dec", "w_d": "W_dec",
    "b_enc": "b_enc", "benc": "b_enc", "b_e": "b_enc",
    "b_dec": "b_dec", "bdec": "b_dec", "b_d": "b_dec",
    "threshold": "threshold",
}  # fmt: skip
_GS1_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(transcoders|res|mlp|att)")
_GS2_REPO = re.compile(r"gemma-scope-2-([0-9.]+[mb])-(pt|it)")


def _layer(path: Path) -> int | None:
    found = re.findall(r"layer_(\d+)", path.as_posix())
    return int(found[-1]) if found else None


def read_npz(path: Path, device: str | torch.device | None) -> Dictionary:
    """The Gemma Scope 1 dictionary in `path` (a `params.npz`)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: torch.from_numpy(np.array(npz[key])) for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SparseCircuitsError(
            f"cannot read {path} as a Gemma Scope params.npz ({exc})"
        ) from None
    tensors: dict[str, Tensor] = {}
    for key, tensor in raw.items():
        ours = _NPZ_KEYS.get(key.lower())
        if ours is not None:
            tensors[ours] = tensor
        elif key == "scaling_factor" and bool((tensor == 1).all()):
            continue  # a fine-tuning scale of 1 changes nothing (SAELens drops it too)
        else:
            raise SparseCircuitsError(
                f"{path}: unexpected array {key!r} in a Gemma Scope params.npz (a scaling_factor "
                "other than 1, or not Gemma Scope); expected W_enc, W_dec, b_enc, b_dec, threshold"
            )
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(tensors))
    if missing:
        raise SparseCircuitsError(
            f"{path}: not a Gemma Scope params.npz (lacks {', '.join(missing)}; found {', '.join(sorted(raw))})"
        )
    fields = _gemma_scope_1_site(path)
    return _jumprelu(fields, tensors, str(path), device)


def _gemma_scope_1_site(path: Path) -> dict[str, Any]:
    """Kind, hooks and model of a Gemma Scope 1 file, from its repository path."""
    found = _GS1_REPO.search(path.as_posix())
    site = found.group(3) if found else ("transcoders" if "transcoder" in path.as_posix() else "")
    if not site:
        raise SparseCircuitsError(
            f"{path}: cannot tell the site of this Gemma Scope params.npz; keep it under its "
            "repository folder (gemma-scope-2b-pt-transcoders/layer_L/…, …-res/…, …-mlp/…, …-att/…)"
        )
    if "embedding" in path.as_posix():
        raise SparseCircuitsError(
            f"{path}: Gemma Scope embedding SAEs are not supported (their input scale differs from hook_embed)"
        )
    layer = _layer(path)
    if layer is None:
        raise SparseCircuitsError(f"{path}: no layer_L in the path; keep the repository layout")
    model = (
        f"google/gemma-2-{found.group(1)}" + ("-it" if found.group(2) == "it" else "")
        if found
        else ""
    )
    if site == "transcoders":
        hook_in = hooks.to_ours("gemma_scope", "transcoder:in", layer)
        hook_out = hooks.to_ours("gemma_scope", "transcoder:out", layer)
        return {"kind": "transcoder", "hook_in": hook_in, "hook_out": hook_out, "model_name": model}
    hook = hooks.to_ours("gemma_scope", site, layer)
    return {"kind": "sae", "hook_in": hook, "model_name": model}


def _jumprelu(
    fields: dict[str, Any],
    tensors: dict[str, Tensor],
    where: str,
    device: str | torch.device | None,
) -> Dictionary:
    """A JumpReLU `Dictionary` from `W_enc [d_in, d_sae]`, `W_dec`, `b_enc`, `b_dec`,
    `threshold` and optional `W_skip [d_out, d_in]` (no input bias)."""
    if tensors["W_enc"].ndim != 2 or tensors["W_dec"].ndim != 2:
        raise SparseCircuitsError(f"{where}: expected 2-D encoder and decoder matrices")
    kind = "skip_transcoder" if "W_skip" in tensors else fields["kind"]
    ours = {name: t for name, t in tensors.items() if name != "threshold"}
    ours["activation.log_threshold"] = log_threshold(tensors["threshold"], where)
    built = build({**fields, "architecture": "jumprelu", "kind": kind}, ours, where, device)
    assert isinstance(built, Dictionary)
    return built


def is_gemma_scope_2_file(path: Path) -> bool:
    """Whether `path` is a safetensors file with Gemma Scope 2's lower-case keys."""
    from safetensors import safe_open

    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return "w_enc" in set(f.keys())
    except Exception:  # noqa: BLE001 - any unreadable file is simply not this format
        return False


def _gemma_scope_2_fields(path: Path, transcoder: bool = False) -> dict[str, Any]:
    """Kind, hooks and model of a Gemma Scope 2 file: `config.json` beside it, else its path
    (`transcoder`: the file is known to be one, whatever its path says)."""
    config_path = path.parent / "config.json"
    raw = read_mapping(config_path) if config_path.is_file() else {}
    text = path.as_posix()
    layer = _layer(path)
    found = _GS2_REPO.search(text)
    model = str(
        raw.get("model_name")
        or (f"google/gemma-3-{found.group(1)}-{found.group(2)}" if found else "")
    )
    hook_in = hook_out = None
    if raw.get("hf_hook_point_in"):
        hook_in = hooks.to_ours("huggingface", str(raw["hf_hook_point_in"]))
        hook_out = (
            hooks.to_ours("huggingface", str(raw["hf_hook_point_out"]))
            if raw.get("hf_hook_point_out")
            else None
        )
    elif layer is not None:
        if transcoder or "transcoder" in text or "clt" in text:
            hook_in = f"blocks.{layer}.mlp.hook_in"
            hook_out = f"blocks.{layer}.hook_mlp_out"
        elif "resid_post" in text:
            hook_in = f"blocks.{layer}.hook_resid_post"
        elif "attn_out" in text:
            hook_in = f"blocks.{layer}.attn.hook_z"
        elif "mlp_out" in text:
            hook_in = f"blocks.{layer}.hook_mlp_out"
    if hook_in is None:
        raise SparseCircuitsError(
            f"{path}: cannot tell the site of this Gemma Scope 2 file: no config.json with "
            "hf_hook_point_in beside it and no layer_L/transcoder|resid_post|attn_out|mlp_out in its path"
        )
    kind = "sae" if hook_out is None else "transcoder"
    return {"kind": kind, "hook_in": hook_in, "hook_out": hook_out, "model_name": model}


def read_gemma_scope_2(path: Path, device: str | torch.device | None) -> Dictionary:
    """The Gemma Scope 2 SAE or (skip) transcoder in `path` (a `params.safetensors`)."""
    raw = map_safetensors(path)
    missing = sorted({"w_enc", "w_dec", "b_enc", "b_dec", "threshold"} - set(raw))
    if missing:
        raise SparseCircuitsError(f"{path}: not a Gemma Scope 2 file (lacks {', '.join(missing)})")
    if raw["w_dec"].ndim == 3:
        raise SparseCircuitsError(
            f"{path} is one layer of a Gemma Scope 2 cross-layer transcoder; pass its folder to load_transcoders"
        )
    # Gemma Scope 2 spells our names in lower case
    tensors = {
        name: raw[name.lower()] for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    }
    if "affine_skip_connection" in raw:
        tensors["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    return _jumprelu(_gemma_scope_2_fields(path), tensors, str(path), device)


def gemma_scope_2_clt_files(folder: Path) -> list[Path]:
    """The per-layer files of a Gemma Scope 2 CLT in `folder`, ordered by layer ([] if none)."""
    files = [p for p in folder.glob("*.safetensors") if is_gemma_scope_2_file(p)]
    numbered = []
    for file in files:
        digits = re.findall(r"(\d+)", file.stem)
        if not digits:
            return []
        numbered.append((int(digits[-1]), file))
    return [file for _, file in sorted(numbered)]


def read_gemma_scope_2_folder(
    folder: Path, device: str | torch.device | None
) -> CrossLayerTranscoder | PerLayerTranscoders:
    """A folder of Gemma Scope 2 files, one per layer (`…layer_L….safetensors`): a cross-layer
    transcoder when their `w_dec` are 3-D, else one transcoder per layer."""
    files = gemma_scope_2_clt_files(folder)
    if not files:
        raise SparseCircuitsError(f"{folder} holds no Gemma Scope 2 layer files")
    first = map_safetensors(files[0])
    if first["w_dec"].ndim == 3:
        return read_gemma_scope_2_clt(files, device, str(folder))
    coders = [read_gemma_scope_2(file, device) for file in files]
    return PerLayerTranscoders({coder.layers[0]: coder for coder in coders})


def read_gemma_scope_2_clt(
    files: list[Path], device: str | torch.device | None, where: str
) -> CrossLayerTranscoder:
    """The Gemma Scope 2 cross-layer transcoder whose per-layer files are `files` (layer order)."""
    per_layer = [map_safetensors(file) for file in files]
    n_layers = len(per_layer)
    for file, raw in zip(files, per_layer, strict=True):
        if "affine_skip_connection" in raw:
            raise SparseCircuitsError(
                f"{file}: this cross-layer transcoder has an affine skip connection, which our "
                "cross-layer transcoder does not hold; use the Gemma Scope 2 set without `affine`"
            )
        if raw["w_dec"].ndim != 3 or raw["w_dec"].shape[1] != n_layers:
            raise SparseCircuitsError(
                f"{file}: w_dec has shape {tuple(raw['w_dec'].shape)}; a {n_layers}-layer "
                "cross-layer transcoder needs [d_sae, n_layers, d_out] (are files missing?)"
            )
    tensors = {
        name: torch.stack([raw[name.lower()] for raw in per_layer])
        for name in ("W_enc", "b_enc", "b_dec")
    }
    thresholds = torch.stack([raw["threshold"] for raw in per_layer])
    tensors["log_threshold"] = log_threshold(thresholds, where)
    for layer, raw in enumerate(per_layer):
        tensors[f"W_dec.{layer}"] = raw["w_dec"][:, layer:, :].contiguous()
    site = _gemma_scope_2_fields(files[0], transcoder=True)
    fields = {
        "architecture": "jumprelu",
        "kind": "clt",
        "n_layers": n_layers,
        "hook_in": hooks.layer_template(site["hook_in"]),
        "hook_out": hooks.layer_template(site["hook_out"] or site["hook_in"]),
        "model_name": site["model_name"],
    }
    built = build(fields, tensors, where, device)
    assert isinstance(built, CrossLayerTranscoder)
    return built
