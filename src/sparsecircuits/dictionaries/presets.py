"""Named sets of published dictionaries on the Hugging Face hub, and `resolve_source`.

A preset names a repository, the exact files of one set in it (one per layer: Gemma Scope
repositories hold many widths and sparsities per layer, so a set is a choice), the model it was
trained on, and its layout. `resolve_source(name_or_path)` turns a preset name or an
`hf://ORG/REPO[/SUBPATH]` reference into a local path (fetching what the cache lacks) and
leaves anything else alone; `load` and `load_transcoders` call it first.

A preset resolves to a folder of its own under `sparsecircuits_cache_dir()/presets/NAME/COMMIT`
holding exactly its files at their repository paths, as links into the hub cache, so other
variants cached from the same repository never mix in.

Repository ids and paths come from SAELens 6.54 `pretrained_saes.yaml` (Gemma Scope, Gemma
Scope 2, the Qwen3 sets), circuit-tracer 0.5.0 and its README (Gemma-2-2B / Llama-3.2-1B sets),
and the transcoder paper's `setup.sh` (GPT-2 small).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sparsecircuits import hub
from sparsecircuits.errors import SparseCircuitsError


@dataclass(frozen=True)
class Preset:
    """One published set: `files` (repo paths, all required), `optional` (fetched if present)."""

    name: str
    repo_id: str
    model: str  # hub id of the model the set was trained on
    kind: str  # "transcoders", "clt" or "saes"
    layout: str  # the library whose file layout the set uses
    pattern: str  # the per-layer file path pattern, for the table
    files: tuple[str, ...]
    optional: tuple[str, ...] = ()
    revision: str | None = None
    # circuit-tracer sets: config.yaml may list the layer files (`transcoders:`) instead
    config_lists_files: bool = False
    # per-layer files with no set description in the repository: (input, output) hooks in
    # circuit-tracer's vocabulary; the preset folder then gets a circuit-tracer `config.yaml`
    # listing `files` in layer order (what circuit-tracer's own Gemma-2-2B set does)
    set_hooks: tuple[str, str] | None = None


# Gemma Scope 2B transcoders: width 16k, the average_l0 per layer that circuit-tracer's
# Gemma-2-2B set and SAELens' `gemma-scope-2b-pt-transcoders` release use.
_GEMMA_SCOPE_TRANSCODER_L0 = (
    76, 65, 49, 54, 88, 87, 95, 70, 52, 72, 88, 5, 6, 8, 8, 8, 10, 12, 13, 12, 11, 13, 15, 25, 37, 41,
)  # fmt: skip
# SAELens `gemma-scope-2b-pt-{res,mlp}-canonical`, width_16k/canonical -> average_l0 per layer.
_GEMMA_SCOPE_RES_L0 = (
    105, 102, 141, 59, 124, 68, 70, 69, 71, 73, 77, 80, 82, 84, 84, 78, 78, 77, 74, 73, 71, 70, 72, 75, 73, 116,
)  # fmt: skip
_GEMMA_SCOPE_MLP_L0 = (
    119, 105, 95, 95, 85, 114, 133, 60, 136, 88, 110, 98, 108, 112, 97, 80, 72, 68, 106, 109, 109, 113, 121, 128, 73, 126,
)  # fmt: skip


def _gemma_scope(
    name: str, repo: str, kind: str, l0s: tuple[int, ...], set_hooks: tuple[str, str] | None = None
) -> Preset:
    return Preset(
        name=name,
        repo_id=repo,
        model="google/gemma-2-2b",
        kind=kind,
        layout="Gemma Scope (params.npz)",
        pattern=f"layer_{{L}}/width_16k/average_l0_{{N}}/params.npz, L = 0..{len(l0s) - 1}",
        files=tuple(
            f"layer_{layer}/width_16k/average_l0_{l0}/params.npz" for layer, l0 in enumerate(l0s)
        ),
        set_hooks=set_hooks,
    )


def _gemma_scope_2(name: str, repo: str, model: str, n_layers: int) -> Preset:
    folder = "transcoder_all/layer_{layer}_width_16k_l0_small_affine"
    return Preset(
        name=name,
        repo_id=repo,
        model=model,
        kind="transcoders",
        layout="Gemma Scope 2 (params.safetensors)",
        pattern=folder.replace("{layer}", "{L}") + f"/params.safetensors, L = 0..{n_layers - 1}",
        files=tuple(f"{folder.format(layer=i)}/params.safetensors" for i in range(n_layers)),
        optional=tuple(f"{folder.format(layer=i)}/config.json" for i in range(n_layers)),
    )


def _circuit_tracer(
    name: str, repo: str, model: str, kind: str, n_layers: int, *, config_required: bool = True
) -> Preset:
    if kind == "clt":
        pattern = "W_enc_{L}.safetensors + W_dec_{L}.safetensors"
        layer_files = tuple(
            f"{part}_{i}.safetensors" for i in range(n_layers) for part in ("W_enc", "W_dec")
        )
    else:
        pattern = "layer_{L}.safetensors"
        layer_files = tuple(f"layer_{i}.safetensors" for i in range(n_layers))
    configs = ("config.yaml",)
    return Preset(
        name=name,
        repo_id=repo,
        model=model,
        kind=kind,
        layout="circuit-tracer",
        pattern=f"config.yaml + {pattern}, L = 0..{n_layers - 1}",
        files=(configs if config_required else ()) + layer_files,
        optional=() if config_required else configs,
        config_lists_files=True,
    )


# circuit-tracer sets: name, repository, model, kind, layers
_CIRCUIT_TRACER_SETS = (
    ("gemma-2-2b-clt-426k", "mntss/clt-gemma-2-2b-426k", "google/gemma-2-2b", "clt", 26),
    ("gemma-2-2b-clt-2.5m", "mntss/clt-gemma-2-2b-2.5M", "google/gemma-2-2b", "clt", 26),
    (
        "llama-3.2-1b-transcoders",
        "mntss/transcoder-Llama-3.2-1B",
        "meta-llama/Llama-3.2-1B",
        "transcoders",
        16,
    ),
    ("llama-3.2-1b-clt", "mntss/clt-llama-3.2-1b-524k", "meta-llama/Llama-3.2-1B", "clt", 16),
    (
        "qwen3-0.6b-transcoders",
        "mwhanna/qwen3-0.6b-transcoders-lowl0",
        "Qwen/Qwen3-0.6B",
        "transcoders",
        28,
    ),
    (
        "qwen3-1.7b-transcoders",
        "mwhanna/qwen3-1.7b-transcoders-lowl0",
        "Qwen/Qwen3-1.7B",
        "transcoders",
        28,
    ),
    ("qwen3-4b-transcoders", "mwhanna/qwen3-4b-transcoders", "Qwen/Qwen3-4B", "transcoders", 36),
    ("qwen3-8b-transcoders", "mwhanna/qwen3-8b-transcoders", "Qwen/Qwen3-8B", "transcoders", 36),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _gemma_scope(
            "gemma-scope-2b-transcoders",
            "google/gemma-scope-2b-pt-transcoders",
            "transcoders",
            _GEMMA_SCOPE_TRANSCODER_L0,
            # the Gemma Scope model card's sites: RMSNorm output before its gain -> MLP output
            ("ln2.hook_normalized", "hook_mlp_out"),
        ),
        _gemma_scope(
            "gemma-scope-2b-res-saes",
            "google/gemma-scope-2b-pt-res",
            "saes",
            _GEMMA_SCOPE_RES_L0,
        ),
        _gemma_scope(
            "gemma-scope-2b-mlp-saes",
            "google/gemma-scope-2b-pt-mlp",
            "saes",
            _GEMMA_SCOPE_MLP_L0,
        ),
        _gemma_scope_2(
            "gemma-scope-2-270m-transcoders",
            "google/gemma-scope-2-270m-pt",
            "google/gemma-3-270m",
            18,
        ),
        _gemma_scope_2(
            "gemma-scope-2-1b-transcoders", "google/gemma-scope-2-1b-pt", "google/gemma-3-1b-pt", 26
        ),
        Preset(
            name="gpt2-small-transcoders",
            repo_id="pchlenski/gpt2-transcoders",
            model="gpt2",
            kind="transcoders",
            layout="transcoder paper (.pt)",
            pattern="final_sparse_autoencoder_gpt2-small_blocks.{L}.ln2.hook_normalized_24576.pt, L = 0..11",
            files=tuple(
                f"final_sparse_autoencoder_gpt2-small_blocks.{i}.ln2.hook_normalized_24576.pt"
                for i in range(12)
            ),
        ),
        *(_circuit_tracer(*row) for row in _CIRCUIT_TRACER_SETS),
        _circuit_tracer(
            "qwen3-14b-transcoders",
            "mwhanna/qwen3-14b-transcoders-lowl0",
            "Qwen/Qwen3-14B",
            "transcoders",
            40,
            config_required=False,  # the repository has no config.yaml (SAELens reads its wandb config)
        ),
    )
}


def resolve_source(name_or_path: str | os.PathLike[str]) -> Path:
    """The local path of a dictionary source: a preset name or an `hf://` reference is
    fetched (only its files) and resolved; a path is returned as it is (an existing path wins
    over a preset of the same name)."""
    text = os.fspath(name_or_path)
    if text in PRESETS and not Path(text).exists():
        return preset_folder(PRESETS[text])
    if hub.is_hub_ref(text):
        return hub.dictionary_path(text)
    return Path(text)


def preset_folder(preset: Preset) -> Path:
    """Fetch `preset`'s files (what the cache lacks) and return its folder (module docstring)."""
    files = preset.files
    try:
        if preset.config_lists_files and _config_lists_files(preset):
            files = tuple(name for name in files if name == "config.yaml")
        snapshot = hub.fetch_files(preset.repo_id, files, preset.revision, optional=preset.optional)
    except SparseCircuitsError as exc:
        raise SparseCircuitsError(f"preset {preset.name}: {exc}") from None
    present = [n for n in (*preset.files, *preset.optional) if (snapshot / n).is_file()]
    written = {"config.yaml": _set_config(preset)} if preset.set_hooks else {}
    return _link_view(preset.name, snapshot, present, written)


def _set_config(preset: Preset) -> str:
    """circuit-tracer's `config.yaml` for a per-layer set: its files in layer order."""
    import yaml

    assert preset.set_hooks is not None
    config = {
        "model_kind": "transcoder_set",
        "model_name": preset.model,
        "feature_input_hook": preset.set_hooks[0],
        "feature_output_hook": preset.set_hooks[1],
        "transcoders": list(preset.files),
    }
    return yaml.safe_dump(config, sort_keys=False)


def _config_lists_files(preset: Preset) -> bool:
    """Whether the set's circuit-tracer `config.yaml` lists its layer files (then fetched)."""
    try:
        snapshot = hub.fetch_files(preset.repo_id, ["config.yaml"], preset.revision)
    except SparseCircuitsError:
        if "config.yaml" in preset.files:
            raise
        return False  # an optional config the repository (or the offline cache) lacks
    return bool(hub.fetch_listed_files(snapshot / "config.yaml"))


def _link_view(name: str, snapshot: Path, files: list[str], written: dict[str, str]) -> Path:
    """`<cache>/presets/NAME/COMMIT` with a link per file into `snapshot` and the `written`
    files ({name: text}); made once, remade when its contents differ."""
    view = hub.sparsecircuits_cache_dir() / "presets" / name / snapshot.name
    if _view_holds(view, files, written):
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{snapshot.name}-", dir=view.parent))
    for rel in files:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(snapshot / rel)
        except OSError:  # no symlinks on this file system
            shutil.copyfile(snapshot / rel, target)
    for rel, text in written.items():
        (staging / rel).write_text(text)
    shutil.rmtree(view, ignore_errors=True)
    try:
        staging.rename(view)
    except OSError:  # another process made it first
        shutil.rmtree(staging, ignore_errors=True)
        if not _view_holds(view, files, written):
            raise
    return view


def _view_holds(view: Path, files: list[str], written: dict[str, str]) -> bool:
    if not view.is_dir():
        return False
    present = {p.relative_to(view).as_posix() for p in view.rglob("*") if not p.is_dir()}
    return (
        present == {*files, *written}
        and all((view / f).is_file() for f in files)
        and all((view / f).read_text() == text for f, text in written.items())
    )


def preset_table() -> list[dict[str, str]]:
    """One row per preset: name, kind, model, repo, layout, files (for `sparsecircuits presets`)."""
    return [
        {
            "name": p.name,
            "kind": p.kind,
            "model": p.model,
            "repo": p.repo_id,
            "layout": p.layout,
            "files": p.pattern,
        }
        for p in PRESETS.values()
    ]
