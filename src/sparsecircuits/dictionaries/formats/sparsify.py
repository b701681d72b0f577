"""EleutherAI sparsify sparse coders (SAEs, transcoders, skip transcoders), read and written.

Layout (spec §1.9; sparsify 1.3.3 `sparse_coder.py` `save_to_disk` / `load_from_disk`): a run
folder with one sub-folder per hookpoint, each holding

* `cfg.json`: `activation` (`topk` | `groupmax`), `expansion_factor`, `normalize_decoder`,
  `num_latents`, `k`, `multi_topk`, `skip_connection`, `transcode`, `d_in`;
* `sae.safetensors`: `encoder.weight [d_sae, d_in]` (our `W_enc` transposed), `encoder.bias`,
  `W_dec [d_sae, d_in]` (our orientation), `b_dec [d_in]`, optional `W_skip [d_in, d_in]`
  (`x @ W_skip.T`, as ours);

and the run's `config.json` (its training config). Encoding is `topk(relu(x' W^T + b))` — our
TopK exactly — with `x' = x - b_dec` for an SAE and `x' = x` for a transcoder. Transcoders saved
before sparsify's "fix decoder bias on transcoders" (f02711e, Feb 2025) also encoded `x - b_dec`;
their `cfg.json` has no `transcode` key (it was in the run's `config.json`), and they load with
`b_in = b_dec`, which keeps that convention exactly. `groupmax` has no counterpart here.

Hookpoints are module names (`layers.N.mlp`, `h.N`, ...): an SAE reads the module's output, a
transcoder maps its input to its output (`hooks.HOOK_TABLE`, column `sparsify`). Writers fold
our input bias into `encoder.bias` and store our config under `sparsecircuits` in `cfg.json`
(sparsify drops keys it does not know).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.formats import hooks
from sparsecircuits.dictionaries.formats.common import (
    OWN_KEY,
    build,
    combine,
    cpu,
    own_block,
    read_mapping,
    stored_config,
)
from sparsecircuits.dictionaries.lazy import map_safetensors
from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
from sparsecircuits.errors import SparseCircuitsError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"
RUN_CONFIG_FILENAME = "config.json"


def is_coder(folder: Path) -> bool:
    """Whether `folder` holds one sparsify sparse coder."""
    return (folder / CFG_FILENAME).is_file() and (folder / WEIGHTS_FILENAME).is_file()


def coder_folders(folder: Path) -> list[Path]:
    """`[folder]` for one coder, else its sub-folders that hold one (natural order of layers)."""
    if is_coder(folder):
        return [folder]
    found = [p for p in folder.iterdir() if p.is_dir() and is_coder(p)] if folder.is_dir() else []
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# ------------------------------------------------------------------------------------- reading
def read(folder: Path, device: str | torch.device | None) -> Dictionary:
    """The sparse coder in the hookpoint folder `folder`."""
    cfg = read_mapping(folder / CFG_FILENAME)
    where = str(folder)
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SparseCircuitsError(
            f"{where}: sparsify activation {activation!r} has no counterpart here (only topk is read)"
        )
    raw = map_safetensors(folder / WEIGHTS_FILENAME)
    missing = sorted({"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(raw))
    if missing:
        raise SparseCircuitsError(f"{folder / WEIGHTS_FILENAME}: lacks {', '.join(missing)}")
    run_path = folder.parent / RUN_CONFIG_FILENAME
    run = read_mapping(run_path) if run_path.is_file() else {}
    transcode = bool(cfg["transcode"] if "transcode" in cfg else run.get("transcode", False))
    if not transcode and "W_skip" in raw:
        raise SparseCircuitsError(f"{where}: an SAE with a skip connection is not supported")
    b_dec = raw["b_dec"]
    # an SAE (and an early transcoder, whose cfg.json lacks `transcode`: module docstring)
    # encodes x - b_dec: that is our input bias
    early = "transcode" not in cfg
    b_in = b_dec.clone() if (not transcode or early) else torch.zeros_like(b_dec)
    tensors: dict[str, Tensor] = {
        "W_enc": raw["encoder.weight"].T.contiguous(),
        "b_enc": raw["encoder.bias"],
        "b_in": b_in,
        "W_dec": raw["W_dec"],
        "b_dec": b_dec,
    }
    kind = "sae"
    if transcode:
        kind = "skip_transcoder" if "W_skip" in raw else "transcoder"
    if "W_skip" in raw:
        tensors["W_skip"] = raw["W_skip"]
    fields: dict[str, Any] = {
        "architecture": "topk",
        "kind": kind,
        "k": int(cfg.get("k", 32)),
        "model_name": str(run.get("model") or ""),
        **_hooks(folder.name, transcode),
    }
    built = build(combine(fields, stored_config(cfg)), tensors, where, device)
    assert isinstance(built, Dictionary)
    return built


def _hooks(hookpoint: str, transcode: bool) -> dict[str, str]:
    if transcode:
        hook_in = hooks.to_ours("sparsify", f"{hookpoint}:in") or hookpoint
        hook_out = hooks.to_ours("sparsify", f"{hookpoint}:out") or hookpoint
        return {"hook_in": hook_in, "hook_out": hook_out}
    return {"hook_in": hooks.to_ours("sparsify", f"{hookpoint}:out") or hookpoint}


# ------------------------------------------------------------------------------------- writing
def write(coder: Dictionary | PerLayerTranscoders, out: Path) -> Path:
    """Write `coder` (one dictionary, or a set: one hookpoint folder each) as a sparsify run in
    `out` (created); return `out`. Raises `SparseCircuitsError` for what sparsify cannot hold
    (anything but ReLU-TopK, `d_out != d_in`, an SAE with a skip connection)."""
    coders = list(coder.values()) if isinstance(coder, PerLayerTranscoders) else [coder]
    hookpoints = [_hookpoint(c) for c in coders]
    if len(set(hookpoints)) != len(hookpoints):
        raise SparseCircuitsError(f"two dictionaries map to one sparsify hookpoint: {hookpoints}")
    for dictionary in coders:
        _check(dictionary)
    out.mkdir(parents=True, exist_ok=True)
    for dictionary, hookpoint in zip(coders, hookpoints, strict=True):
        _write_one(dictionary, out / hookpoint)
    first = coders[0].cfg
    run = {
        "sae": _coder_cfg(coders[0]),
        "hookpoints": hookpoints,
        "model": first.model_name,
        "transcode": first.kind != "sae",
    }
    (out / RUN_CONFIG_FILENAME).write_text(json.dumps(run, indent=2) + "\n")
    return out


def _check(dictionary: Dictionary) -> None:
    cfg = dictionary.cfg
    if cfg.architecture != "topk" or not cfg.topk_relu:
        raise SparseCircuitsError(
            f"sparsify holds TopK coders only (ReLU then TopK); this dictionary is {cfg.architecture!r}"
            + ("" if cfg.architecture != "topk" else " without the ReLU")
        )
    if dictionary.d_out != dictionary.d_in:
        raise SparseCircuitsError(
            f"sparsify coders read and write one width; this one maps {dictionary.d_in} -> {dictionary.d_out}"
        )


# ours -> sparsify's module output where the model has no post-MLP norm (not Gemma)
_SAME_AS_MLP_OUTPUT = ("hook_mlp_out", "mlp.hook_out")


def _hookpoint(dictionary: Dictionary) -> str:
    """sparsify's hookpoint for `dictionary` (our hook name where the table has none)."""
    cfg = dictionary.cfg
    if cfg.kind == "sae":
        name = hooks.from_ours("sparsify", cfg.hook_in)
        return name[: -len(":out")] if name and name.endswith(":out") else cfg.hook_in
    name_in = hooks.from_ours("sparsify", cfg.hook_in)
    hook_out = cfg.hook_out
    if hooks.suffix(hook_out) == _SAME_AS_MLP_OUTPUT[0] and "gemma" not in cfg.model_name.lower():
        hook_out = hook_out[: -len(_SAME_AS_MLP_OUTPUT[0])] + _SAME_AS_MLP_OUTPUT[1]
    name_out = hooks.from_ours("sparsify", hook_out)
    if name_in and name_out and name_in.endswith(":in") and name_out == name_in[:-3] + ":out":
        return name_in[:-3]
    return cfg.hook_in


def _coder_cfg(dictionary: Dictionary) -> dict[str, Any]:
    cfg = dictionary.cfg
    return {
        "activation": "topk",
        "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
        "normalize_decoder": cfg.decoder_norm == "unit",
        "num_latents": cfg.d_sae,
        "k": cfg.k,
        "multi_topk": False,
        "skip_connection": dictionary.W_skip is not None,
        "transcode": cfg.kind != "sae",
    }


def _write_one(dictionary: Dictionary, folder: Path) -> None:
    from safetensors.torch import save_file

    with torch.no_grad():
        b_enc = dictionary.folded_b_enc()
        if dictionary.cfg.kind == "sae":  # sparsify subtracts b_dec from an SAE's input
            b_in, b_dec = dictionary.b_in, dictionary.b_dec
            b_enc = (
                dictionary.b_enc
                if torch.equal(b_in, b_dec)
                else dictionary.b_enc + (b_dec - b_in) @ dictionary.W_enc
            )
        tensors = {
            "encoder.weight": cpu(dictionary.W_enc.T),
            "encoder.bias": cpu(b_enc),
            "W_dec": cpu(dictionary.W_dec),
            "b_dec": cpu(dictionary.b_dec),
        }
        if dictionary.W_skip is not None:
            tensors["W_skip"] = cpu(dictionary.W_skip)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILENAME))
    cfg = {**_coder_cfg(dictionary), "d_in": dictionary.d_in, OWN_KEY: own_block(dictionary)}
    (folder / CFG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n")
