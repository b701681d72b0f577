"""Save and load dictionaries in the SAELens v6 folder layout (no pickle anywhere).

A folder holds three files:

* `cfg.json` — SAELens v6 keys (`architecture`, `d_in`, `d_sae`, `d_out`, `dtype`, `device`,
  `apply_b_dec_to_input: false`, `normalize_activations: "none"`, `reshape_activations`, the
  family's fields such as `k`, and `metadata{sae_lens_version, model_name, hook_name,
  hook_name_out, ...}`), the hooks and model name repeated at top level for flat readers, and a
  `"sparsecircuits"` object with our full `DictionaryConfig` (including the training config)
  and its `hook_format` (`models.hook_formats`: folders without it are read as format 1).
* `sae_weights.safetensors` — the SAELens view: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
  `W_dec [d_sae, d_out]`, `b_dec [d_out]` (+ `W_skip [d_out, d_in]`, `threshold [d_sae]` where
  the family has them). SAELens has no input bias, so `b_enc` here is folded:
  `b_enc - b_in @ W_enc` (same pre-activations up to float rounding).
* `sparsecircuits_weights.safetensors` — the tensors of our own parametrisation that the SAELens
  view folds or lacks (`b_in`, the unfolded `b_enc`, family state such as thresholds). Our
  loader overlays them, so save -> load is bit-exact; SAELens ignores the file.

Architecture names: SAELens' own where SAELens has the same math — ReLU SAE "standard", ReLU
transcoder "transcoder", ReLU skip transcoder "skip_transcoder", TopK SAE "topk", and TopK
transcoder with `d_in == d_out` (every MLP transcoder) also "topk" (SAELens' TopK SAE with
`apply_b_dec_to_input=false` computes exactly `TopK(x W_enc + b_enc) W_dec + b_dec`; the
`metadata.hook_name_out` tells SAELens' HookedSAETransformer where to write). SAELens 6.54 has
no TopK transcoder with `d_in != d_out` nor a TopK skip transcoder: those are saved as the
documented extensions "topk_transcoder" / "topk_skip_transcoder", loadable by us only.

`load` also reads folders written by SAELens itself (standard, topk, transcoder,
skip_transcoder; an SAE's `apply_b_dec_to_input: true` becomes `b_in = b_dec`), and, through
`formats`, every other published format it detects (sparsify, circuit-tracer, Gemma Scope 1 and
2, the transcoder paper's `.pt`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparsecircuits.config import from_dict, to_dict
from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.dictionaries.config import DictionaryConfig, hook_layer
from sparsecircuits.dictionaries.lazy import map_safetensors
from sparsecircuits.dictionaries.presets import resolve_source
from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
from sparsecircuits.dictionaries.validate import check_parameters
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.embedded import embedded_dir
from sparsecircuits.models.hook_formats import HOOK_FORMAT, hooks_from_format_1

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
EXTRA_WEIGHTS_FILENAME = "sparsecircuits_weights.safetensors"
SAELENS_FORMAT_VERSION = (
    "6.0.0"  # the cfg.json layout version we write (SAELens >= 6 reads it as v6)
)
FORMAT_VERSION = 1

# SAELens architecture -> (our architecture, our kind), for folders SAELens wrote.
_FROM_SAELENS = {
    "standard": ("relu", "sae"),
    "topk": ("topk", "sae"),
    "abstopk": ("abstopk", "sae"),
    "jumprelu": ("jumprelu", "sae"),
    "matching_pursuit": ("mp", "sae"),
    "transcoder": ("relu", "transcoder"),
    "skip_transcoder": ("relu", "skip_transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"),
    "jumprelu_skip_transcoder": ("jumprelu", "skip_transcoder"),
}
_METADATA_FROM_TRAINING = ("context_size", "prepend_bos", "dataset_path")


def saelens_architecture(dictionary: Dictionary | CrossLayerTranscoder) -> tuple[str, bool]:
    """Return `(architecture name written to cfg.json, whether SAELens can load it)`."""
    if isinstance(dictionary, CrossLayerTranscoder):
        return f"clt_{dictionary.cfg.architecture}", False
    name = dictionary.activation.saelens_architecture()
    if name is not None:
        return name, True
    cfg = dictionary.cfg
    return f"{cfg.architecture}_{cfg.kind}", False


def saelens_cfg(dictionary: Dictionary | CrossLayerTranscoder) -> dict[str, Any]:
    """The `cfg.json` mapping for `dictionary` (see module docstring)."""
    cfg = dictionary.cfg
    architecture, loadable = saelens_architecture(dictionary)
    site = {"model_name": cfg.model_name, "hook_name": cfg.hook_in, "hook_name_out": cfg.hook_out}
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        **site,
        "hook_head_index": None,
        **{key: cfg.training[key] for key in _METADATA_FROM_TRAINING if key in cfg.training},
    }
    from sparsecircuits import __version__

    return {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "d_out": dictionary.d_out,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **(
            {}
            if isinstance(dictionary, CrossLayerTranscoder)
            else dictionary.activation.extra_cfg()
        ),
        **site,
        "metadata": metadata,
        "sparsecircuits": {
            "format_version": FORMAT_VERSION,
            "hook_format": HOOK_FORMAT,
            "library_version": __version__,
            "saelens_loadable": loadable,
            "config": to_dict(cfg),
        },
    }


def saelens_weights(dictionary: Dictionary | CrossLayerTranscoder) -> dict[str, Tensor]:
    """The SAELens-view tensors (input bias folded into `b_enc`), contiguous on the CPU.

    A cross-layer transcoder has no SAELens view: its whole state dict is returned.
    """
    if isinstance(dictionary, CrossLayerTranscoder):
        return _on_cpu(dictionary.state_dict())
    with torch.no_grad():
        tensors: dict[str, Tensor] = {"W_dec": dictionary.W_dec, "b_dec": dictionary.b_dec}
        if dictionary.W_enc is not None:  # tied (matching pursuit) dictionaries have no encoder
            tensors["W_enc"] = dictionary.W_enc
            tensors["b_enc"] = dictionary.folded_b_enc()
        if dictionary.W_skip is not None:
            tensors["W_skip"] = dictionary.W_skip
        tensors.update(dictionary.activation.saelens_weights())
        return _on_cpu(tensors)


def _on_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`tensors` detached, contiguous, on the CPU (what safetensors writes)."""
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def _extra_weights(
    dictionary: Dictionary | CrossLayerTranscoder, saelens_view: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Our state-dict tensors that the SAELens view lacks or stores differently."""
    ours = _on_cpu(dictionary.state_dict())
    return {
        name: tensor
        for name, tensor in ours.items()
        if name not in saelens_view or not torch.equal(saelens_view[name], tensor)
    }


def save_dictionary(dictionary: Dictionary | CrossLayerTranscoder, folder: str | Path) -> Path:
    """Write `dictionary` to `folder` (created if needed) in SAELens v6 layout; return the folder.

    Saving the same dictionary twice writes byte-identical files.
    """
    folder = Path(folder)
    try:
        text = json.dumps(saelens_cfg(dictionary), indent=2, sort_keys=True)
    except TypeError as exc:
        raise SparseCircuitsError(
            f"cannot save {folder}: the config holds a value JSON cannot store ({exc}); "
            "keep cfg.training to plain numbers, strings, lists and dicts"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    weights = saelens_weights(dictionary)
    _replace_file(weights, folder / WEIGHTS_FILENAME)
    extra = _extra_weights(dictionary, weights)
    extra_path = folder / EXTRA_WEIGHTS_FILENAME
    if extra:
        _replace_file(extra, extra_path)
    elif extra_path.exists():  # a stale file from an earlier save would override these weights
        extra_path.unlink()
    (folder / CFG_FILENAME).write_text(text + "\n")
    return folder


def _replace_file(tensors: dict[str, Tensor], path: Path) -> None:
    """Write a safetensors file beside `path`, then rename it over `path`: a dictionary loaded
    from `path` maps the old file (dictionaries/lazy.py), which must not change under it."""
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt"})
    os.replace(partial, path)


def _read_cfg(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SparseCircuitsError(
            f"no dictionary folder at {folder}; pass a folder containing {CFG_FILENAME} and {WEIGHTS_FILENAME}"
        )
    cfg_path = folder / CFG_FILENAME
    if not cfg_path.is_file():
        raise SparseCircuitsError(
            f"{folder} has no {CFG_FILENAME}; pass a folder written by save_dictionary or SAELens"
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseCircuitsError(
            f"{cfg_path} is not valid JSON ({exc}); re-save the dictionary"
        ) from None
    if not isinstance(raw, dict):
        raise SparseCircuitsError(f"{cfg_path} must hold a JSON object; re-save the dictionary")
    return raw


def _config_from_saelens(raw: dict[str, Any], where: str) -> DictionaryConfig:
    """Build our config from a cfg.json written by SAELens (no "sparsecircuits" object)."""
    architecture = raw.get("architecture", "standard")
    if architecture not in _FROM_SAELENS:
        raise SparseCircuitsError(
            f"{where}: unsupported architecture {architecture!r}; supported: {', '.join(sorted(_FROM_SAELENS))}"
        )
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise SparseCircuitsError(
            f"{where}: normalize_activations={raw['normalize_activations']!r} is not supported; fold the scaling into the weights first"
        )
    ours, kind = _FROM_SAELENS[architecture]
    metadata = raw.get("metadata") or {}
    hook_in = metadata.get("hook_name") or raw.get("hook_name") or ""
    hook_out = metadata.get("hook_name_out") or raw.get("hook_name_out")
    try:
        fields: dict[str, Any] = {
            "architecture": ours,
            "kind": kind,
            "d_in": int(raw["d_in"]),
            "d_sae": int(raw["d_sae"]),
            "d_out": int(raw["d_out"]) if kind != "sae" else None,
            "hook_in": hook_in,
            "hook_out": hook_out if kind != "sae" else None,
            "model_name": metadata.get("model_name") or raw.get("model_name") or "",
            "dtype": raw.get("dtype", "float32"),
            "device": "cpu",
        }
        if ours == "mp":
            fields["mp_residual_threshold"] = float(raw.get("residual_threshold", 1e-2))
            fields["mp_max_iterations"] = raw.get("max_iterations")
            fields["k"] = min(32, int(raw["d_sae"]))
        if ours in ("topk", "abstopk"):
            fields["k"] = int(raw["k"])
            if raw.get("rescale_acts_by_decoder_norm"):
                raise SparseCircuitsError(
                    f"{where}: rescale_acts_by_decoder_norm=true is not supported; fold the decoder norms first"
                )
    except KeyError as exc:
        raise SparseCircuitsError(
            f"{where}: cfg.json lacks the key {exc}; re-save the dictionary"
        ) from None
    return DictionaryConfig(**fields)


def _resolve_device(requested: str | torch.device | None, saved: str) -> str:
    if requested is not None:
        return str(requested)
    if saved.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return saved


def _complete_saelens_tensors(
    dictionary: Dictionary, raw: dict[str, Any], tensors: dict[str, Tensor]
) -> None:
    """Turn SAELens-view tensors into our state dict in place (no-op after our own save)."""
    dictionary.activation.adopt_saelens_weights(tensors)
    if "b_in" in tensors:
        return
    # written by SAELens: its only input bias is b_dec, subtracted when apply_b_dec_to_input
    apply_b_dec = bool(raw.get("apply_b_dec_to_input")) and dictionary.cfg.kind == "sae"
    if dictionary.activation.uses_input_bias:
        tensors["b_in"] = (
            tensors["b_dec"].clone()
            if apply_b_dec and "b_dec" in tensors
            else torch.zeros(dictionary.d_in, dtype=tensors["W_dec"].dtype)
        )
    else:  # matching pursuit centres by b_dec itself; SAELens skips b_dec entirely without apply_b_dec
        tensors["b_in"] = torch.zeros(dictionary.d_in, dtype=tensors["W_dec"].dtype)
        if not apply_b_dec and "b_dec" in tensors:
            tensors["b_dec"] = torch.zeros_like(tensors["b_dec"])


def load(
    folder: str | Path, device: str | torch.device | None = None
) -> Dictionary | CrossLayerTranscoder:
    """Load the dictionary saved in `folder` (ours or SAELens'; or a folder or file of any
    format `formats.detect` knows): a `Dictionary` (SAE, transcoder, skip transcoder) or a
    `CrossLayerTranscoder`.

    `device` defaults to the saved device (the CPU when that was CUDA and CUDA is absent; the
    CPU for other formats). Raises `SparseCircuitsError` for a missing or corrupt folder, an
    unknown layout or an unknown architecture.
    """
    from sparsecircuits.dictionaries import formats, make

    folder = formats.resolve(resolve_source(folder))
    fmt = formats.detect(folder)
    if fmt != "saelens":
        return formats.read_dictionary(folder, fmt, device)
    raw = _read_cfg(folder)
    where = str(folder)
    ours = raw.get("sparsecircuits")
    if isinstance(ours, dict) and isinstance(ours.get("config"), dict):
        cfg = from_dict(
            DictionaryConfig,
            dict(ours["config"]),
            where=f"{folder / CFG_FILENAME} sparsecircuits.config",
        )
        if ours.get("hook_format", 1) == 1:
            cfg.hook_in, cfg.hook_out = hooks_from_format_1(
                cfg.hook_in, cfg.hook_out, cfg.model_name, where
            )
    else:
        cfg = _config_from_saelens(raw, where)
    cfg.device = _resolve_device(device, cfg.device)

    weights_path = folder / WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise SparseCircuitsError(f"{folder} has no {WEIGHTS_FILENAME}; re-save the dictionary")
    tensors = map_safetensors(weights_path)  # the parameters become views of the file
    extra_path = folder / EXTRA_WEIGHTS_FILENAME
    if extra_path.is_file():
        tensors.update(map_safetensors(extra_path))
    check_parameters(tensors, where=str(weights_path))  # before completion: raw thresholds
    dictionary = make(cfg, init=False)
    if isinstance(dictionary, Dictionary):
        _complete_saelens_tensors(dictionary, raw, tensors)
    return load_weights(dictionary, tensors, str(weights_path))


def load_weights(
    dictionary: Dictionary | CrossLayerTranscoder, tensors: dict[str, Tensor], where: str
) -> Dictionary | CrossLayerTranscoder:
    """Check `tensors`' names and shapes against `dictionary`'s state dict (`SparseCircuitsError`
    naming `where` otherwise) and make them its parameters, cast to its dtype and device
    (`load_state_dict(assign=True)`: a memory-mapped tensor is not copied again); return
    `dictionary`. Their values are checked by `validate.check_parameters` before."""
    cfg = dictionary.cfg
    expected = dictionary.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SparseCircuitsError(
            f"{where}: tensors do not match architecture {cfg.architecture!r}/{cfg.kind!r} "
            f"(missing {missing or 'none'}, unexpected {unexpected or 'none'})"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SparseCircuitsError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, config implies {tuple(expected[name].shape)}"
            )
    dictionary.load_state_dict(
        {name: t.to(cfg.device, expected[name].dtype) for name, t in tensors.items()},
        assign=True,
    )
    return dictionary


def load_transcoders(
    name_or_path: str | Path = "embedded", device: str | torch.device | None = None
) -> PerLayerTranscoders | CrossLayerTranscoder:
    """Load the transcoder set in `name_or_path` (see `transcoders.TranscoderSet`).

    `"embedded"` means the transcoders shipped with the embedded model. A saved cross-layer
    transcoder's folder (or a folder whose only saved dictionary is one) gives the
    `CrossLayerTranscoder`; a folder of per-layer transcoder folders (or one such folder) gives
    `PerLayerTranscoders`, each layer read from `hook_in` (`blocks.{L}.…`), else from the folder
    name's trailing digits. A sparsify run (one hookpoint folder per layer), a circuit-tracer
    set (per-layer or cross-layer), a Gemma Scope 2 cross-layer transcoder, or a single
    transcoder file of another format load as well (`formats`).
    """
    from sparsecircuits.dictionaries import formats

    root = (
        embedded_dir() / "transcoders"
        if str(name_or_path) == "embedded"
        else resolve_source(name_or_path)
    )
    root = formats.resolve(root)
    if root.exists():
        fmt = formats.detect(root)
        if fmt not in ("saelens", "sparsify"):  # those two: one sub-folder per dictionary
            return formats.read_set(root, fmt, device)
    if not root.is_dir():
        raise SparseCircuitsError(
            f"no transcoder folder at {root}; pass a folder with one sub-folder per layer or a saved cross-layer transcoder"
        )
    folders = (
        [root]
        if (root / CFG_FILENAME).is_file()
        else sorted(p for p in root.iterdir() if (p / CFG_FILENAME).is_file())
    )
    if not folders:
        raise SparseCircuitsError(
            f"{root} holds no saved dictionaries (no sub-folder with {CFG_FILENAME})"
        )
    result: dict[int, Dictionary] = {}
    for folder in folders:
        dictionary = load(folder, device=device)
        if isinstance(dictionary, CrossLayerTranscoder):
            if len(folders) > 1:
                raise SparseCircuitsError(
                    f"{root} holds a cross-layer transcoder ({folder.name}) beside other dictionaries; "
                    "pass the cross-layer transcoder's folder alone"
                )
            return dictionary
        if dictionary.cfg.kind == "sae":
            raise SparseCircuitsError(
                f"{folder} holds an SAE, not a per-layer transcoder; pass a folder of transcoders"
            )
        layer = _layer_of(dictionary, folder)
        if layer in result:
            raise SparseCircuitsError(
                f"{root} holds two transcoders for layer {layer}; keep one per layer"
            )
        result[layer] = dictionary
    return PerLayerTranscoders(result)


def _layer_of(dictionary: Dictionary, folder: Path) -> int:
    layer = hook_layer(dictionary.cfg.hook_in)
    if layer is not None:
        return layer
    digits = re.search(r"\d+\Z", folder.name)
    if digits is None:
        raise SparseCircuitsError(
            f"cannot tell the layer of {folder}: its hook_in {dictionary.cfg.hook_in!r} has no blocks.L and its name no digits"
        )
    return int(digits.group())
