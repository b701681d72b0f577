"""hf:// references and presets, resolved offline against a local hub cache (tests/hubkit.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hubkit import add_folder, add_repo, use_offline_cache
from sparsecircuits import hub
from sparsecircuits.dictionaries import (
    DictionaryConfig,
    PerLayerTranscoders,
    load,
    load_transcoders,
    make,
    save_dictionary,
)
from sparsecircuits.dictionaries import presets as P
from sparsecircuits.errors import SparseCircuitsError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    return use_offline_cache(tmp_path, monkeypatch)


def _transcoder(layer: int, d: int = 8):  # type: ignore[no-untyped-def]
    return make(
        DictionaryConfig(
            architecture="relu",
            kind="transcoder",
            d_in=d,
            d_sae=16,
            hook_in=f"blocks.{layer}.hook_mlp_in",
            hook_out=f"blocks.{layer}.hook_mlp_out",
            seed=layer,
        )
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf://org/repo", hub.HubRef("org/repo")),
        ("hf://org/repo/a/b", hub.HubRef("org/repo", "a/b")),
        ("hf://org/repo/a/b/", hub.HubRef("org/repo", "a/b")),
        ("hf://org/repo/sub@v1", hub.HubRef("org/repo", "sub", "v1")),
        (
            "hf://org/repo/f.safetensors?revision=abc",
            hub.HubRef("org/repo", "f.safetensors", "abc"),
        ),
    ],
)
def test_parse_hub_ref(text, expected):
    assert hub.parse_hub_ref(text) == expected
    assert hub.parse_hub_ref(str(expected)) == expected  # str() writes a reference that parses back


@pytest.mark.parametrize("text", ["hf://org", "hf://", "hf://org/repo/../x", "hf://org/repo@"])
def test_bad_hub_ref_is_a_user_error(text):
    with pytest.raises(SparseCircuitsError, match="hf://ORG/REPO"):
        hub.parse_hub_ref(text)


def test_test_cache_is_the_layout_huggingface_hub_reads(cache):
    from huggingface_hub import hf_hub_download, scan_cache_dir

    add_repo(cache, "org/repo", {"a.json": b"{}", "sub/b.bin": b"xyz"})
    info = scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "org/repo" and repo.size_on_disk == 5
    assert {f.file_name for f in next(iter(repo.revisions)).files} == {"a.json", "b.bin"}
    assert Path(hf_hub_download("org/repo", "sub/b.bin")).read_bytes() == b"xyz"


def test_fetch_patterns_select_only_the_needed_files():
    """The patterns go through huggingface_hub's own filter (what snapshot_download applies)."""
    from huggingface_hub.utils import filter_repo_objects

    def selected(ref, allow, ignore, repo_files):
        return set(
            filter_repo_objects(
                repo_files,
                allow_patterns=[ref.under(p) for p in allow],
                ignore_patterns=[ref.under(p) for p in ignore],
            )
        )

    model_repo = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        "onnx/model.safetensors",
        "README.md",
    ]
    got = selected(hub.HubRef("o/m"), hub.MODEL_PATTERNS, ["*/*"], model_repo)
    assert got == {n for n in model_repo[:7]}
    clt_repo = [
        "config.yaml",
        "W_enc_0.safetensors",
        "W_dec_0.safetensors",
        "features/index.json.gz",
        "features/layer_0.bin",
        "README.md",
    ]
    got = selected(hub.HubRef("o/c"), hub.DICTIONARY_PATTERNS, hub.DICTIONARY_IGNORE, clt_repo)
    assert got == set(clt_repo[:3])
    sub = hub.HubRef("o/s", "run/layers.3.mlp")
    sparsify_repo = [
        "run/config.json",
        "run/state.pt",
        "run/optimizer_0.pt",
        "run/layers.3.mlp/cfg.json",
        "run/layers.3.mlp/sae.safetensors",
        "run/layers.4.mlp/sae.safetensors",
        "run/layers.3.mlp/features/x.json",
    ]
    got = selected(sub, hub.DICTIONARY_PATTERNS, hub.DICTIONARY_IGNORE, sparsify_repo)
    assert got == {"run/layers.3.mlp/cfg.json", "run/layers.3.mlp/sae.safetensors"}


def test_load_transcoders_from_hub_reference(cache, tmp_path):
    folder = tmp_path / "plt"
    originals = {layer: _transcoder(layer) for layer in range(2)}
    for layer, tc in originals.items():
        save_dictionary(tc, folder / f"layer{layer}")
    add_folder(cache, "org/plt", folder, prefix="sets/relu")
    loaded = load_transcoders("hf://org/plt/sets/relu", device="cpu")
    assert isinstance(loaded, PerLayerTranscoders) and sorted(loaded) == [0, 1]
    for layer, tc in originals.items():
        for name, tensor in tc.state_dict().items():
            assert torch.equal(loaded[layer].state_dict()[name], tensor), name
    one = load("hf://org/plt/sets/relu/layer1", device="cpu")
    assert torch.equal(one.W_enc, originals[1].W_enc)


def test_missing_files_offline_are_named_in_one_line(cache):
    add_repo(cache, "org/repo", {"layer_0.safetensors": b"x"})
    with pytest.raises(SparseCircuitsError) as info:
        hub.fetch_files("org/repo", ["layer_0.safetensors", "layer_1.safetensors"])
    message = str(info.value)
    assert "\n" not in message and "layer_1.safetensors" in message
    assert "HF_HUB_OFFLINE" in message and "hf download org/repo layer_1.safetensors" in message
    assert "layer_0.safetensors" not in message  # what the cache holds is not reported
    with pytest.raises(SparseCircuitsError, match=r"hf://org/absent: .*hf download org/absent"):
        hub.dictionary_path("hf://org/absent/sub")
    with pytest.raises(
        SparseCircuitsError,
        match="hf://org/repo: .*the dictionary files under other .*'other/\\*.json'",
    ):
        hub.dictionary_path("hf://org/repo/other")  # cached repo, subfolder never fetched


def test_model_missing_offline_names_the_model_files(cache):
    add_repo(cache, "org/model", {"config.json": b"{}", "tokenizer.json": b"{}"})
    with pytest.raises(
        SparseCircuitsError,
        match="hf://org/model: missing from the Hugging Face cache .*: model.safetensors ",
    ):
        hub.model_folder("hf://org/model")
    from sparsecircuits.models import load_model

    with pytest.raises(SparseCircuitsError, match="hf://someorg/some-model: .*hf download"):
        load_model("someorg/some-model", device="cpu")


def _small_preset(monkeypatch, **fields):  # type: ignore[no-untyped-def]
    preset = P.Preset(
        name="test-set",
        model="org/model",
        kind="transcoders",
        layout="ours",
        pattern="",
        **fields,
    )
    monkeypatch.setitem(P.PRESETS, preset.name, preset)
    return preset


def test_preset_folder_holds_exactly_its_files(cache, tmp_path, monkeypatch):
    """Two variants per layer are cached; the preset's folder shows only the chosen one."""
    saved = tmp_path / "saved"
    files = {}
    for layer in range(2):
        for variant in ("a", "b"):
            tc = _transcoder(layer) if variant == "a" else _transcoder(layer, d=4)
            save_dictionary(tc, saved / f"layer_{layer}" / variant)
            for f in (saved / f"layer_{layer}" / variant).iterdir():
                files[f"layer_{layer}/{variant}/{f.name}"] = f.read_bytes()
    add_repo(cache, "org/scope", files)
    chosen = tuple(n for n in files if "/a/" in n)
    _small_preset(monkeypatch, repo_id="org/scope", files=chosen)
    folder = P.resolve_source("test-set")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == (
        sorted(chosen)
    )
    assert folder.is_relative_to(tmp_path / "sc" / "presets" / "test-set")
    assert P.resolve_source("test-set") == folder  # made once, reused
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test-set").mkdir()
    assert P.resolve_source("test-set") == Path("test-set")  # a folder of that name wins
    monkeypatch.chdir(saved)
    assert load(folder / "layer_1" / "a", device="cpu").cfg.d_in == 8
    longer = dataclasses.replace(P.PRESETS["test-set"], files=(*chosen, "layer_2/a/cfg.json"))
    monkeypatch.setitem(P.PRESETS, "test-set", longer)
    with pytest.raises(
        SparseCircuitsError,
        match=r"preset test-set: hf://org/scope: missing from the Hugging Face cache .*: layer_2/a/cfg.json \(",
    ):
        P.resolve_source("test-set")
    fewer = tuple(n for n in chosen if n.startswith("layer_0/"))
    monkeypatch.setitem(P.PRESETS, "test-set", dataclasses.replace(longer, files=fewer))
    assert P.resolve_source("test-set") == folder  # same commit: the folder is remade
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == (
        sorted(fewer)
    )


def test_circuit_tracer_config_list_is_fetched(cache, monkeypatch):
    """A circuit-tracer config.yaml that lists hf:// files elsewhere: those files are fetched,
    the preset's own layer files are not asked for."""
    add_repo(cache, "org/weights", {"deep/l0.safetensors": b"w0"})
    listed = "transcoders:\n  - hf://org/weights/deep/l0.safetensors\n  - hf://org/weights/deep/l1.safetensors\n"
    add_repo(cache, "org/ct", {"config.yaml": listed.encode()})
    _small_preset(
        monkeypatch,
        repo_id="org/ct",
        files=("config.yaml", "layer_0.safetensors"),
        config_lists_files=True,
    )
    with pytest.raises(
        SparseCircuitsError,
        match="preset test-set: hf://org/weights: missing .*: deep/l1.safetensors ",
    ):
        P.resolve_source("test-set")
    add_repo(cache, "org/weights", {"deep/l0.safetensors": b"w0", "deep/l1.safetensors": b"w1"})
    folder = P.resolve_source("test-set")
    assert [p.name for p in folder.iterdir()] == ["config.yaml"]
    paths = hub.fetch_listed_files(folder / "config.yaml")
    assert [p.read_bytes() for p in paths] == [b"w0", b"w1"]


def test_preset_table_is_consistent():
    names = [row["name"] for row in P.preset_table()]
    assert len(names) == len(set(names)) >= 10
    for preset in P.PRESETS.values():
        assert preset.name == preset.name.lower() and "/" not in preset.name
        assert preset.kind in ("transcoders", "clt", "saes")
        last = int(preset.pattern.rsplit("..", 1)[1])  # "L = 0..N" matches the file count
        per_layer = 2 if preset.kind == "clt" else 1
        layer_files = [f for f in preset.files if f != "config.yaml"]
        assert len(layer_files) == per_layer * (last + 1), preset.name
        assert len(set(preset.files)) == len(preset.files)


def test_preset_with_set_hooks_gets_a_circuit_tracer_config(cache, monkeypatch):
    """Per-layer files with no set description: the preset folder lists them in layer order in
    a circuit-tracer config.yaml (the form of circuit-tracer's own Gemma-2-2B set)."""
    import yaml

    files = {f"layer_{i}/width_16k/average_l0_{9 - i}/params.npz": bytes([i]) for i in range(3)}
    add_repo(cache, "org/scope", files)
    _small_preset(
        monkeypatch,
        repo_id="org/scope",
        files=tuple(files),
        set_hooks=("ln2.hook_normalized", "hook_mlp_out"),
    )
    folder = P.resolve_source("test-set")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config == {
        "model_kind": "transcoder_set",
        "model_name": "org/model",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": list(files),
    }
    assert [(folder / f).read_bytes() for f in config["transcoders"]] == [b"\0", b"\1", b"\2"]
    assert P.resolve_source("test-set") == folder


# preset -> (SAELens release, the ids of the preset's choice, the file in each id's folder)
SAELENS_RELEASES = {
    "gemma-scope-2b-transcoders": ("gemma-scope-2b-pt-transcoders", "", "/params.npz"),
    "gemma-scope-2b-res-saes": ("gemma-scope-2b-pt-res-canonical", "width_16k", "/params.npz"),
    "gemma-scope-2b-mlp-saes": ("gemma-scope-2b-pt-mlp-canonical", "width_16k", "/params.npz"),
    "gemma-scope-2-1b-transcoders": (
        "gemma-scope-2-1b-pt-transcoders-all",
        "width_16k_l0_small_affine",
        "/params.safetensors",
    ),
    "gemma-scope-2-270m-transcoders": (
        "gemma-scope-2-270m-pt-transcoders-all",
        "width_16k_l0_small_affine",
        "/params.safetensors",
    ),
    "qwen3-0.6b-transcoders": ("mwhanna-qwen3-0.6b-transcoders-lowl0", "", ""),
    "qwen3-1.7b-transcoders": ("mwhanna-qwen3-1.7b-transcoders-lowl0", "", ""),
    "qwen3-4b-transcoders": ("mwhanna-qwen3-4b-transcoders", "", ""),
    "qwen3-8b-transcoders": ("mwhanna-qwen3-8b-transcoders", "", ""),
    "qwen3-14b-transcoders": ("mwhanna-qwen3-14b-transcoders-lowl0", "", ""),
}


@pytest.mark.parametrize("name", sorted(SAELENS_RELEASES))
def test_preset_matches_the_saelens_release(name):
    """Repository and files equal SAELens' registry (`pretrained_saes.yaml`) where it is installed."""
    directory = pytest.importorskip("sae_lens.loading.pretrained_saes_directory")
    release_name, id_part, suffix = SAELENS_RELEASES[name]
    release = directory.get_pretrained_saes_directory()[release_name]
    preset = P.PRESETS[name]
    assert release.repo_id == preset.repo_id
    files = {path + suffix for sae_id, path in release.saes_map.items() if id_part in sae_id}
    assert files == {f for f in preset.files if f != "config.yaml"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hf://google/gemma-2-2b/sub@main", "google/gemma-2-2b"),
        ("EleutherAI/pythia-70m@step1000", "EleutherAI/pythia-70m"),
        ("gpt2", "gpt2"),
        ("embedded", "embedded"),
    ],
)
def test_model_id_of_hub_names(name: str, expected: str) -> None:
    assert hub.model_id(name) == expected


def test_model_id_of_a_local_folder_is_its_name_not_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert hub.model_id(str(folder)) == "my-model"
    assert hub.model_id(str(folder) + "/") == "my-model"
