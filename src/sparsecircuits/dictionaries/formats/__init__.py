"""Published dictionary formats: which one a path holds, and readers and writers for each.

`io.load` / `io.load_transcoders` call `detect` and hand every format but SAELens (read in
`io.py` itself) to `read_dictionary` / `read_set`; `write` backs `sparsecircuits convert`.

| format | what is on disk | read | write |
|---|---|---|---|
| `saelens` | `cfg.json` + `sae_weights.safetensors` (SAELens v6) | `io.py` | `io.save_dictionary` |
| `sparsify` | `cfg.json` + `sae.safetensors` per hookpoint folder | `sparsify.py` | `sparsify.py` |
| `circuit-tracer` | `config.yaml` + `layer_{i}.safetensors`, or `W_enc_{i}`/`W_dec_{i}.safetensors` | `circuit_tracer.py` | `circuit_tracer.py` |
| `gemma-scope` | `params.npz` (Gemma Scope 1) | `gemma_scope.py` | — |
| `gemma-scope-2` | `params.safetensors` with `w_enc` (Gemma Scope 2), or a folder of CLT layers | `gemma_scope.py` | — |
| `transcoder-circuits` | the transcoder paper's `.pt` | `transcoder_circuits.py` | — |
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparsecircuits.dictionaries.base import Dictionary
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.dictionaries.formats import (
    circuit_tracer,
    gemma_scope,
    sparsify,
    transcoder_circuits,
)
from sparsecircuits.dictionaries.formats.common import read_mapping
from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
from sparsecircuits.errors import SparseCircuitsError

FORMATS: dict[str, str] = {
    "saelens": "a SAELens folder (cfg.json + sae_weights.safetensors)",
    "sparsify": "a sparsify folder (cfg.json + sae.safetensors, or one such sub-folder per hookpoint)",
    "circuit-tracer": "a circuit-tracer folder (config.yaml + layer_{i}.safetensors, or W_enc_{i}/W_dec_{i}.safetensors)",
    "gemma-scope": "a Gemma Scope params.npz",
    "gemma-scope-2": "a Gemma Scope 2 params.safetensors (or a folder of its cross-layer transcoder's layer files)",
    "transcoder-circuits": "a transcoder paper .pt file (pchlenski/gpt2-transcoders)",
}
WRITERS = ("saelens", "circuit-tracer", "sparsify")

SparseCoder = Dictionary | CrossLayerTranscoder
TranscoderSet = PerLayerTranscoders | CrossLayerTranscoder


def _unknown(path: Path) -> SparseCircuitsError:
    if path.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        found = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    else:
        found = f"a {path.suffix or 'suffix-less'} file"
    accepted = "; ".join(FORMATS.values())
    return SparseCircuitsError(
        f"{path} holds no dictionary format this library reads (found: {found or 'nothing'}); "
        f"accepted: {accepted}"
    )


# files that name their folder's dictionary rather than being one
_FOLDER_FILES = ("cfg.json", "sae_weights.safetensors", "sae.safetensors", "config.yaml")


def resolve(path: Path) -> Path:
    """`path`, or its folder when it is one of the files a folder format is made of."""
    return path.parent if path.is_file() and path.name in _FOLDER_FILES else path


def detect(path: Path) -> str:
    """The name (a key of `FORMATS`) of the format `path` holds.

    A missing path, an empty folder or a folder with a `cfg.json` of no other format count as
    "saelens" (its reader explains what is missing); anything else unknown raises
    `SparseCircuitsError` naming what was found and what is accepted.
    """
    if not path.exists():
        return "saelens"
    if path.is_file():
        if path.suffix == ".npz":
            return "gemma-scope"
        if path.suffix == ".pt":
            return "transcoder-circuits"
        if gemma_scope.is_gemma_scope_2_file(path):
            return "gemma-scope-2"
        if path.suffix == ".safetensors":
            return "circuit-tracer"
        raise _unknown(path)
    if sparsify.is_coder(path):
        return "sparsify"
    if (path / "cfg.json").is_file() or not any(path.iterdir()):
        return "saelens"
    if (path / "params.npz").is_file():
        return "gemma-scope"
    has_config = (path / circuit_tracer.CONFIG_FILENAME).is_file()
    if (path / "params.safetensors").is_file() or (
        not has_config and gemma_scope.gemma_scope_2_clt_files(path)
    ):
        return "gemma-scope-2"
    if circuit_tracer.is_layout(path):
        return "circuit-tracer"
    subfolders = [p for p in path.iterdir() if p.is_dir()]
    if any(sparsify.is_coder(p) for p in subfolders):
        return "sparsify"
    if any((p / "cfg.json").is_file() for p in subfolders):
        return "saelens"
    raise _unknown(path)


def read_dictionary(path: Path, fmt: str, device: str | torch.device | None) -> SparseCoder:
    """The one dictionary (or cross-layer transcoder) at `path`, in format `fmt` (not SAELens)."""
    if fmt == "gemma-scope":
        return gemma_scope.read_npz(path if path.is_file() else path / "params.npz", device)
    if fmt == "transcoder-circuits":
        return transcoder_circuits.read(path, device)
    if fmt == "gemma-scope-2" and (path.is_file() or (path / "params.safetensors").is_file()):
        file = path if path.is_file() else path / "params.safetensors"
        return gemma_scope.read_gemma_scope_2(file, device)
    if fmt == "sparsify":
        folders = sparsify.coder_folders(path)
        if len(folders) != 1:
            raise SparseCircuitsError(
                f"{path} holds {len(folders)} sparsify coders ({', '.join(p.name for p in folders)}); "
                "pass one hookpoint folder, or load the set with load_transcoders"
            )
        return sparsify.read(folders[0], device)
    if fmt == "circuit-tracer" and path.is_file():
        config_path = path.parent / circuit_tracer.CONFIG_FILENAME
        config = read_mapping(config_path) if config_path.is_file() else {}
        digits = path.stem[len(path.stem.rstrip("0123456789")) :]
        layer = int(digits) if digits else 0
        return circuit_tracer.read_layer_file(path, layer, config, None, device)
    found = read_set(path, fmt, device)
    if isinstance(found, CrossLayerTranscoder):
        return found
    if len(found) != 1:
        raise SparseCircuitsError(
            f"{path} holds a set of {len(found)} transcoders; load it with load_transcoders"
        )
    return next(iter(found.values()))


def read_set(path: Path, fmt: str, device: str | torch.device | None) -> TranscoderSet:
    """The transcoder set at `path` in format `fmt` (not SAELens): a circuit-tracer or Gemma
    Scope 2 set as it is, a single transcoder as a one-layer set."""
    if fmt == "circuit-tracer" and path.is_dir():
        return circuit_tracer.read(path, device)
    if fmt == "gemma-scope-2" and path.is_dir() and not (path / "params.safetensors").is_file():
        return gemma_scope.read_gemma_scope_2_folder(path, device)
    dictionary = read_dictionary(path, fmt, device)
    if isinstance(dictionary, CrossLayerTranscoder):
        return dictionary
    if dictionary.cfg.kind == "sae":
        raise SparseCircuitsError(f"{path} holds an SAE, not a transcoder")
    return PerLayerTranscoders({dictionary.layers[0]: dictionary})


def write(coder: SparseCoder | PerLayerTranscoders, fmt: str, out: Path) -> Path:
    """Write `coder` to `out` in format `fmt` (one of `WRITERS`); return `out`."""
    if fmt == "circuit-tracer":
        return circuit_tracer.write(coder, out)
    if fmt == "sparsify":
        if isinstance(coder, CrossLayerTranscoder):
            raise SparseCircuitsError("sparsify has no cross-layer transcoders")
        return sparsify.write(coder, out)
    if fmt == "saelens":
        from sparsecircuits.dictionaries.io import save_dictionary

        if isinstance(coder, PerLayerTranscoders):
            out.mkdir(parents=True, exist_ok=True)
            for layer, transcoder in coder.items():
                save_dictionary(transcoder, out / f"layer_{layer}")
            return out
        return save_dictionary(coder, out)
    raise SparseCircuitsError(f"cannot write format {fmt!r}; writers: {', '.join(WRITERS)}")
