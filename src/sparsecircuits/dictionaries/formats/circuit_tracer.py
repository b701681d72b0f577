"""circuit-tracer transcoder sets: per-layer (PLT) and cross-layer (CLT) folders, read and written.

Layouts (spec §1.6, §1.7; circuit-tracer 0.5.0 `transcoder/single_layer_transcoder.py`,
`cross_layer_transcoder.py`, `utils/hf_utils.py`):

* `config.yaml`: `model_kind` (`transcoder_set` | `cross_layer_transcoder`), `model_name`,
  `feature_input_hook`, `feature_output_hook` (TransformerLens suffixes, translated by
  `hooks.HOOK_TABLE`), optional `transcoders` (one path per layer, in order), `activation`
  (`relu` | `topk`, JumpReLU inferred from a threshold tensor) and `k`.
* PLT `layer_{i}.safetensors`, i = 0..L-1: `W_enc [d_sae, d_in]` (transposed to ours),
  `W_dec [d_sae, d_out]`, `b_enc`, `b_dec`, optional `activation_function.threshold` (JumpReLU
  `u·1[u > θ]`), `W_skip [d_out, d_in]` (`x @ W_skip.T`, as ours), scalar `k` (TopK). Entries
  of `transcoders` may also be Gemma Scope `.npz` or Gemma Scope 2 files.
* CLT `W_enc_{i}.safetensors` (`W_enc_{i} [d_sae, d_in]`, `b_enc_{i}`, `b_dec_{i}`, optional
  `threshold_{i}`) and `W_dec_{i}.safetensors` (`W_dec_{i} [d_sae, L - i, d_out]`, our layout).

circuit-tracer's TopK keeps the k largest pre-activations with their sign, no ReLU: it loads as
our TopK with `topk_relu=False`. No format has an input bias: writers fold ours into `b_enc`
(`b_enc - b_in @ W_enc`). Writers also store our config under `sparsecircuits` in
`config.yaml` (circuit-tracer reads only its own keys), so hooks and settings round-trip.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.dictionaries.activations import Activation, JumpReLUActivation
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.dictionaries.formats import gemma_scope, hooks
from sparsecircuits.dictionaries.formats.common import (
    OWN_KEY,
    build,
    combine,
    cpu,
    log_threshold,
    own_block,
    read_mapping,
)
from sparsecircuits.dictionaries.lazy import map_safetensors
from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.hub import local_file

CONFIG_FILENAME = "config.yaml"
THRESHOLD_KEY = "activation_function.threshold"
# the hooks circuit-tracer's `load_clt` assumes when a config names none
CLT_DEFAULT_HOOKS = ("hook_resid_mid", "hook_mlp_out")
WRITABLE = ("relu", "jumprelu", "topk")


def is_layout(folder: Path) -> bool:
    """Whether `folder` looks like a circuit-tracer set (its config, or its file names)."""
    if (folder / CONFIG_FILENAME).is_file():
        config = _config(folder)
        return "model_kind" in config or "transcoders" in config
    return (folder / "layer_0.safetensors").is_file() or (folder / "W_enc_0.safetensors").is_file()


def _config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILENAME
    return read_mapping(path) if path.is_file() else {}


def _our_hook(name: str, layer: int | str) -> str:
    """Our name for circuit-tracer's hook suffix `name` at `layer` (an int or `{layer}`)."""
    if isinstance(layer, int):
        return hooks.to_ours("circuit_tracer", name, layer) or f"blocks.{layer}.{name}"
    return hooks.layer_template(_our_hook(name, 0))


def _their_hook(hook: str) -> str:
    """circuit-tracer's suffix for our hook (`blocks.L.x` or a `{layer}` template)."""
    concrete = hook.replace("{layer}", "0")
    return hooks.from_ours("circuit_tracer", concrete) or hooks.suffix(hook)


# ------------------------------------------------------------------------------------- reading
def read(
    folder: Path, device: str | torch.device | None
) -> PerLayerTranscoders | CrossLayerTranscoder:
    """The transcoder set in the circuit-tracer folder `folder`."""
    config = _config(folder)
    kind = config.get("model_kind")
    if kind is None:
        kind = (
            "cross_layer_transcoder"
            if (folder / "W_enc_0.safetensors").is_file()
            else "transcoder_set"
        )
    if kind == "cross_layer_transcoder":
        files = gemma_scope.gemma_scope_2_clt_files(folder)
        if "transcoders" in config:
            files = _listed_files(folder, config)
        if files and gemma_scope.is_gemma_scope_2_file(files[0]):
            clt = gemma_scope.read_gemma_scope_2_clt(files, device, str(folder))
            for key, field in (
                ("feature_input_hook", "hook_in"),
                ("feature_output_hook", "hook_out"),
            ):
                if key in config:
                    setattr(clt.cfg, field, _our_hook(str(config[key]), "{layer}"))
            return clt
        return _read_clt(folder, config, device)
    if kind != "transcoder_set":
        raise SparseCircuitsError(
            f"{folder / CONFIG_FILENAME}: model_kind {kind!r} is unknown; circuit-tracer knows "
            "transcoder_set and cross_layer_transcoder"
        )
    files = _listed_files(folder, config) if "transcoders" in config else _layer_files(folder)
    stored_layers = (config.get(OWN_KEY) or {}).get("layers") or {}
    return PerLayerTranscoders(
        {
            layer: read_layer_file(file, layer, config, stored_layers.get(str(layer)), device)
            for layer, file in enumerate(files)
        }
    )


def _listed_files(folder: Path, config: dict[str, Any]) -> list[Path]:
    entries = config["transcoders"]
    if not isinstance(entries, list) or not entries:
        raise SparseCircuitsError(
            f"{folder / CONFIG_FILENAME}: transcoders must be a non-empty list of paths"
        )
    files = []
    for entry in entries:
        if not isinstance(entry, str):
            raise SparseCircuitsError(
                f"{folder / CONFIG_FILENAME}: transcoders entry {entry!r} is not a path "
                "(the June-2025 `{id, layer, filepath}` form is not read; list one path per layer)"
            )
        path = local_file(entry) if entry.startswith("hf://") else Path(entry)
        if not path.is_absolute() and (folder / path).exists():
            path = folder / path
        if not path.is_file():
            raise SparseCircuitsError(
                f"{folder / CONFIG_FILENAME} lists {entry}, which does not exist"
            )
        files.append(path)
    return files


def _numbers(folder: Path, prefix: str) -> list[int]:
    """The `i` of every `{prefix}_{i}.safetensors` in `folder`, ascending."""
    names = (re.fullmatch(rf"{prefix}_(\d+)\.safetensors", p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in names if m)


def _layer_files(folder: Path) -> list[Path]:
    numbers = _numbers(folder, "layer")
    if not numbers:
        raise SparseCircuitsError(f"{folder} has no layer_{{i}}.safetensors files")
    if numbers != list(range(len(numbers))):
        raise SparseCircuitsError(
            f"{folder}: circuit-tracer sets hold every layer from 0; found layers {numbers}"
        )
    return [folder / f"layer_{i}.safetensors" for i in numbers]


def read_layer_file(
    file: Path,
    layer: int,
    config: dict[str, Any],
    stored: dict[str, Any] | None,
    device: str | torch.device | None,
) -> Dictionary:
    """Layer `layer`'s transcoder from `file` (circuit-tracer, Gemma Scope or Gemma Scope 2),
    hooks from the set's `config`."""
    hook_in = _our_hook(str(config.get("feature_input_hook", "mlp.hook_in")), layer)
    hook_out = _our_hook(str(config.get("feature_output_hook", "mlp.hook_out")), layer)
    model_name = str(config.get("model_name") or "")
    if file.suffix == ".npz" or gemma_scope.is_gemma_scope_2_file(file):
        read_one = gemma_scope.read_npz if file.suffix == ".npz" else gemma_scope.read_gemma_scope_2
        dictionary = read_one(file, device)
        dictionary.cfg.hook_in, dictionary.cfg.hook_out = hook_in, hook_out
        dictionary.cfg.model_name = model_name or dictionary.cfg.model_name
        return dictionary
    raw = map_safetensors(file)
    where = str(file)
    known = {"W_enc", "W_dec", "b_enc", "b_dec", THRESHOLD_KEY, "W_skip", "k"}
    unknown = sorted(set(raw) - known)
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec"} - set(raw))
    if unknown or missing:
        raise SparseCircuitsError(
            f"{where}: not a circuit-tracer transcoder file (missing {missing or 'none'}, "
            f"unknown {unknown or 'none'}; expected {', '.join(sorted(known))})"
        )
    tensors: dict[str, Tensor] = {
        "W_enc": raw["W_enc"].T.contiguous(),
        "b_enc": raw["b_enc"],
        "W_dec": raw["W_dec"],
        "b_dec": raw["b_dec"],
    }
    fields: dict[str, Any] = {"hook_in": hook_in, "hook_out": hook_out, "model_name": model_name}
    if config.get("activation") == "topk" or "k" in raw:
        k = config.get("k", int(raw["k"]) if "k" in raw else None)
        if k is None:
            raise SparseCircuitsError(f"{where}: a TopK set needs k (in config.yaml or the file)")
        fields.update(architecture="topk", k=int(k), topk_relu=False)
    elif THRESHOLD_KEY in raw and config.get("activation") != "relu":
        fields["architecture"] = "jumprelu"
        tensors["activation.log_threshold"] = log_threshold(raw[THRESHOLD_KEY], where)
    else:
        if THRESHOLD_KEY in raw:
            raise SparseCircuitsError(
                f"{where}: config says activation relu but the file has a threshold"
            )
        fields["architecture"] = "relu"
    fields["kind"] = "transcoder"
    if "W_skip" in raw:
        fields["kind"] = "skip_transcoder"
        tensors["W_skip"] = raw["W_skip"]
    built = build(combine(fields, stored), tensors, where, device)
    assert isinstance(built, Dictionary)
    return built


def _read_clt(
    folder: Path, config: dict[str, Any], device: str | torch.device | None
) -> CrossLayerTranscoder:
    numbers = _numbers(folder, "W_enc")
    if not numbers or numbers != list(range(len(numbers))):
        raise SparseCircuitsError(
            f"{folder}: a circuit-tracer cross-layer transcoder needs W_enc_0..W_enc_{{L-1}}.safetensors (found {numbers})"
        )
    n_layers = len(numbers)
    enc = [map_safetensors(folder / f"W_enc_{i}.safetensors") for i in numbers]
    tensors: dict[str, Tensor] = {}
    for i in numbers:
        path = folder / f"W_dec_{i}.safetensors"
        if not path.is_file():
            raise SparseCircuitsError(f"{folder} lacks W_dec_{i}.safetensors")
        tensors[f"W_dec.{i}"] = map_safetensors(path)[f"W_dec_{i}"]
    tensors["W_enc"] = torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(enc)])
    for name in ("b_enc", "b_dec"):
        tensors[name] = torch.stack([e[f"{name}_{i}"] for i, e in enumerate(enc)])
    jumprelu = "threshold_0" in enc[0]
    if jumprelu:
        thresholds = torch.stack([e[f"threshold_{i}"].reshape(-1) for i, e in enumerate(enc)])
        tensors["log_threshold"] = log_threshold(thresholds, str(folder))
    hook_in, hook_out = (
        str(config.get("feature_input_hook", CLT_DEFAULT_HOOKS[0])),
        str(config.get("feature_output_hook", CLT_DEFAULT_HOOKS[1])),
    )
    fields = {
        "architecture": "jumprelu" if jumprelu else "relu",
        "kind": "clt",
        "n_layers": n_layers,
        "hook_in": _our_hook(hook_in, "{layer}"),
        "hook_out": _our_hook(hook_out, "{layer}"),
        "model_name": str(config.get("model_name") or ""),
    }
    stored = (config.get(OWN_KEY) or {}).get("config")
    built = build(combine(fields, stored), tensors, str(folder), device)
    assert isinstance(built, CrossLayerTranscoder)
    return built


# ------------------------------------------------------------------------------------- writing
def write(coder: PerLayerTranscoders | CrossLayerTranscoder | Dictionary, out: Path) -> Path:
    """Write `coder` as a circuit-tracer folder `out` (created); return it.

    A single transcoder is written as a one-layer set only when it is layer 0 (circuit-tracer
    needs every layer from 0). Raises `SparseCircuitsError` for what circuit-tracer cannot hold.
    """
    if isinstance(coder, CrossLayerTranscoder):
        return _write_clt(coder, out)
    if isinstance(coder, Dictionary):
        coder = PerLayerTranscoders({coder.layers[0]: coder})
    return _write_set(coder, out)


def _check_family(cfg: Any, what: str) -> None:
    if cfg.architecture not in WRITABLE or (cfg.kind == "clt" and cfg.architecture == "topk"):
        allowed = "relu, jumprelu" if cfg.kind == "clt" else ", ".join(WRITABLE)
        raise SparseCircuitsError(
            f"circuit-tracer has no {cfg.architecture!r} {what}; it reads {allowed}"
        )


def _write_set(transcoders: PerLayerTranscoders, out: Path) -> Path:
    layers = transcoders.layers
    if layers != list(range(len(layers))):
        raise SparseCircuitsError(
            f"circuit-tracer sets hold one transcoder per layer from 0; this set has layers {layers}"
        )
    first = transcoders[layers[0]].cfg
    for layer in layers:
        cfg = transcoders[layer].cfg
        _check_family(cfg, "transcoder")
        if (cfg.architecture, cfg.d_sae) != (first.architecture, first.d_sae):
            raise SparseCircuitsError(
                "circuit-tracer sets need one architecture and width for every layer "
                f"(layer {layer}: {cfg.architecture}/{cfg.d_sae}, layer 0: {first.architecture}/{first.d_sae})"
            )
    ins = {hooks.suffix(transcoders.hook_in(layer)) for layer in layers}
    outs = {hooks.suffix(transcoders.hook_out(layer)) for layer in layers}
    if len(ins) != 1 or len(outs) != 1:
        raise SparseCircuitsError(
            f"circuit-tracer sets read and write one hook per layer; this set uses {sorted(ins)} -> {sorted(outs)}"
        )
    config: dict[str, Any] = {
        "model_kind": "transcoder_set",
        "model_name": first.model_name,
        "feature_input_hook": _their_hook(transcoders.hook_in(0)),
        "feature_output_hook": _their_hook(transcoders.hook_out(0)),
    }
    if first.architecture == "topk":
        config.update(activation="topk", k=int(first.k))
        if first.topk_relu:
            warnings.warn(
                "circuit-tracer's TopK applies no ReLU: where fewer than k pre-activations are "
                "positive it keeps negative ones, which this TopK zeroes",
                stacklevel=3,
            )
    elif first.architecture == "relu":
        config["activation"] = "relu"
    config[OWN_KEY] = own_block({layer: transcoders[layer] for layer in layers})
    out.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        save_file(_layer_tensors(transcoders[layer]), str(out / f"layer_{layer}.safetensors"))
    (out / CONFIG_FILENAME).write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _layer_tensors(transcoder: Dictionary) -> dict[str, Tensor]:
    with torch.no_grad():
        tensors = {
            "W_enc": cpu(transcoder.W_enc.T),
            "W_dec": cpu(transcoder.W_dec),
            "b_enc": cpu(transcoder.folded_b_enc()),
            "b_dec": cpu(transcoder.b_dec),
        }
        if transcoder.cfg.architecture == "jumprelu":
            tensors[THRESHOLD_KEY] = cpu(_threshold(transcoder.activation))
        if transcoder.W_skip is not None:
            tensors["W_skip"] = cpu(transcoder.W_skip)
    return tensors


def _threshold(activation: Activation) -> Tensor:
    """The JumpReLU thresholds `θ = exp(log θ)` `[d_sae]` circuit-tracer stores."""
    assert isinstance(activation, JumpReLUActivation)
    return activation.threshold


def _write_clt(clt: CrossLayerTranscoder, out: Path) -> Path:
    cfg = clt.cfg
    _check_family(cfg, "cross-layer transcoder")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for i in range(cfg.n_layers):
            enc = {
                f"W_enc_{i}": cpu(clt.W_enc[i].T),
                f"b_enc_{i}": cpu(clt.b_enc[i] - clt.b_in[i] @ clt.W_enc[i]),
                f"b_dec_{i}": cpu(clt.b_dec[i]),
            }
            if cfg.architecture == "jumprelu":
                enc[f"threshold_{i}"] = cpu(_threshold(clt.family[i]))
            save_file(enc, str(out / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": cpu(clt.W_dec[i])}, str(out / f"W_dec_{i}.safetensors"))
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": cfg.model_name,
        "feature_input_hook": _their_hook(cfg.hook_in),
        "feature_output_hook": _their_hook(cfg.hook_out),
        OWN_KEY: own_block(clt),
    }
    (out / CONFIG_FILENAME).write_text(yaml.safe_dump(config, sort_keys=False))
    return out
