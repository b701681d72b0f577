"""Readers and writers checked against the libraries' own code.

circuit-tracer 0.5.0 and sparsify 1.3.3 cannot be installed beside sparsecircuits (pins), so
their side runs in the benchmark environments (`make bench-env`: `.venv-bench` with sparsify,
`.venv-bench-ct` with circuit-tracer) through the workers in `format_workers/`: each builds
dictionaries with the library's own classes and save code, or loads our files with the
library's own loaders, and records feature activations and reconstructions on the same random
inputs. We load the same files and compare: max |difference| <= 1e-6 in fp32, relative to the
outputs' scale where that exceeds 1 (`max_diff`). The tests skip
when an environment is absent. SAELens installs beside us (`make compat-deps`) and runs in
process.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsecircuits.dictionaries import (
    CrossLayerTranscoder,
    DictionaryConfig,
    PerLayerTranscoders,
    formats,
    load,
    load_transcoders,
    make,
)
from testkit import build_dictionary, randomize_parameters

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "format_workers"
REPO = HERE.parents[1]
TOLERANCE = 1e-6
D, D_TC, N = 16, 32, 48


def _checkouts() -> list[Path]:
    """This checkout, and the main one when this is a git worktree (the environments live there)."""
    roots = [REPO]
    git = REPO / ".git"
    if git.is_file():  # "gitdir: <main>/.git/worktrees/<name>"
        gitdir = Path(git.read_text().split(":", 1)[1].strip())
        roots.append(gitdir.parents[2])
    return roots


def bench_python(env: str) -> Path | None:
    """The python of benchmark environment `env` (installed: its `.installed` stamp exists)."""
    for root in _checkouts():
        python = root / env / "bin" / "python"
        if python.is_file() and (root / env / ".installed").is_file():
            return python
    return None


def run_worker(env: str, script: str, jobs: list[list[Any]], tmp: Path) -> None:
    """Run `format_workers/<script>` in `env` on `jobs` (one process); skip without `env`."""
    python = bench_python(env)
    if python is None:
        pytest.skip(f"{env} is not installed (make bench-env)")
    job_file = tmp / f"{script}.jobs.json"
    job_file.write_text(json.dumps(jobs))
    done = subprocess.run(
        [str(python), str(WORKERS / script), str(job_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| relative to the larger of 1 and max |theirs|: an absolute difference
    where values are of order 1, a relative one above (fp32 sums of many terms in another order,
    such as circuit-tracer's CLT decoding by index_add, round at that scale)."""
    assert ours.shape == theirs.shape
    scale = max(1.0, float(theirs.abs().max()))
    absolute = float((ours.detach() - theirs).abs().max())
    MEASURED.append((absolute, scale))
    return absolute / scale


MEASURED: list[tuple[float, float]] = []  # (max |diff|, scale) of each comparison, for the log


def _log(name: str, acts: float, outs: float) -> None:
    worst = max(MEASURED, key=lambda m: m[0])
    MEASURED.clear()
    print(
        f"{name}: relative max |diff| activations {acts:.1e}, reconstructions {outs:.1e}; "
        f"largest absolute {worst[0]:.1e} at output scale {worst[1]:.1f}"
    )


def _inputs(folder: Path, n_layers: int | None, seed: int) -> torch.Tensor:
    """Random inputs `[n_layers, N, D]` (`[N, D]` for None) saved as `folder/x.safetensors`."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = (N, D) if n_layers is None else (n_layers, N, D)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    save_file({"x": x}, str(folder / "x.safetensors"))
    return x


# ------------------------------------------------------------------------------- circuit-tracer
PLT_MADE = ["relu", "jumprelu", "topk", "skip"]
CLT_MADE = ["relu", "jumprelu"]
PLT_OURS = ["relu", "jumprelu", "skip", "topk"]
CLT_OURS = ["relu", "jumprelu"]


def _our_plt(kind: str) -> PerLayerTranscoders:
    architecture = {"skip": "relu"}.get(kind, kind)
    found = {}
    for layer in range(2):
        coder = build_dictionary(
            architecture,
            "skip_transcoder" if kind == "skip" else "transcoder",
            d_in=D,
            d_sae=D_TC,
            d_out=D,
            **({"topk_relu": False} if kind == "topk" else {}),
        )
        coder.cfg.hook_in, coder.cfg.hook_out = (
            f"blocks.{layer}.mlp.hook_in",
            f"blocks.{layer}.mlp.hook_out",
        )
        randomize_parameters(coder, seed=layer)  # nonzero b_in: the writer must fold it
        if kind == "topk":
            with torch.no_grad():
                coder.b_enc.sub_(1.5)  # few positive pre-activations: negatives survive TopK
        found[layer] = coder
    return PerLayerTranscoders(found)


def _our_clt(architecture: str) -> CrossLayerTranscoder:
    cfg = DictionaryConfig(
        architecture=architecture, kind="clt", n_layers=3, d_in=D, d_sae=D_TC, model_name="tiny",
        hook_in="blocks.{layer}.hook_resid_mid", hook_out="blocks.{layer}.hook_mlp_out",
    )  # fmt: skip
    clt = make(cfg)
    assert isinstance(clt, CrossLayerTranscoder)
    randomize_parameters(clt, seed=9)
    return clt


def _gemma_scope_files(root: Path, gen: torch.Generator) -> dict[str, Path]:
    """Files in the documented Gemma Scope layouts (§1.4, §1.5; SAELens `gemma_2_*` and
    `gemma_3_sae_huggingface_loader`, circuit-tracer `load_gemma_scope*`)."""

    def arrays(d_layers: int | None = None) -> dict[str, torch.Tensor]:
        shape_dec = (D_TC, d_layers, D) if d_layers else (D_TC, D)
        return {
            "w_enc": torch.randn(D, D_TC, generator=gen) * 0.4,
            "w_dec": torch.randn(*shape_dec, generator=gen) * 0.4,
            "b_enc": torch.randn(D_TC, generator=gen) * 0.2,
            "b_dec": torch.randn(D, generator=gen) * 0.2,
            "threshold": torch.rand(D_TC, generator=gen) * 0.3 + 0.01,
        }

    files = {}
    npz = root / "gs1" / "gemma-scope-2b-pt-transcoders/layer_0/width_16k/average_l0_76/params.npz"
    npz.parent.mkdir(parents=True)
    np.savez(
        npz, **{"W" + k[1:] if k.startswith("w_") else k: v.numpy() for k, v in arrays().items()}
    )
    files["gemma-scope"] = npz
    for affine in (False, True):
        name = "layer_0_width_16k_l0_small" + ("_affine" if affine else "")
        path = (
            root
            / f"gs2-{affine}"
            / "gemma-scope-2-1b-pt/transcoder_all"
            / name
            / "params.safetensors"
        )
        path.parent.mkdir(parents=True)
        tensors = arrays()
        if affine:
            tensors["affine_skip_connection"] = torch.randn(D, D, generator=gen) * 0.3
        save_file(tensors, str(path))
        files[f"gemma-scope-2-{affine}"] = path
    clt = root / "gs2-clt" / "set"
    clt.mkdir(parents=True)
    for layer in range(3):
        save_file(arrays(3), str(clt / f"layer_{layer}.safetensors"))
    files["gemma-scope-2-clt"] = clt
    return files


@pytest.fixture(scope="module")
def circuit_tracer_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One circuit-tracer process for every case; returns the root of the case folders."""
    root = tmp_path_factory.mktemp("ct")
    jobs: list[list[Any]] = []
    for kind in PLT_MADE:
        _inputs(root / f"made-plt-{kind}", 2, seed=1)
        jobs.append(["make-plt", str(root / f"made-plt-{kind}"), kind])
    for kind in CLT_MADE:
        _inputs(root / f"made-clt-{kind}", 3, seed=2)
        jobs.append(["make-clt", str(root / f"made-clt-{kind}"), kind])
    for kind in PLT_OURS:
        _inputs(root / f"ours-plt-{kind}", 2, seed=3)
        with warnings.catch_warnings():  # the TopK writer's note on circuit-tracer's TopK
            warnings.simplefilter("ignore")
            formats.write(_our_plt(kind), "circuit-tracer", root / f"ours-plt-{kind}" / "set")
        jobs.append(["load-plt", str(root / f"ours-plt-{kind}"), None])
    for kind in CLT_OURS:
        _inputs(root / f"ours-clt-{kind}", 3, seed=4)
        formats.write(_our_clt(kind), "circuit-tracer", root / f"ours-clt-{kind}" / "set")
        jobs.append(["load-clt", str(root / f"ours-clt-{kind}"), None])
    files = _gemma_scope_files(root, torch.Generator().manual_seed(5))
    for name, path in files.items():
        folder = root / f"gs-{name}"
        _inputs(folder, 3 if name.endswith("clt") else 1, seed=6)
        if name.endswith("clt"):
            (folder / "set").symlink_to(path, target_is_directory=True)
            jobs.append(["load-gemma-scope-2-clt", str(folder), None])
        else:
            action = "load-gemma-scope" if name == "gemma-scope" else "load-gemma-scope-2"
            jobs.append([action, str(folder), str(path)])
        (folder / "source").write_text(str(path))
    run_worker(".venv-bench-ct", "circuit_tracer_worker.py", jobs, root)
    return root


def _compare_set(coder: Any, folder: Path, n_layers: int) -> tuple[float, float]:
    """Max |ours - theirs| over layers, for activations and reconstructions."""
    x = load_file(str(folder / "x.safetensors"))["x"]
    theirs = load_file(str(folder / "theirs.safetensors"))
    acts = outs = 0.0
    with torch.no_grad():
        if isinstance(coder, CrossLayerTranscoder):
            recon = coder(x.transpose(0, 1)).out.transpose(0, 1)
            for layer in range(n_layers):
                acts = max(
                    acts, max_diff(coder.encode_layer(x[layer], layer), theirs[f"acts_{layer}"])
                )
                outs = max(outs, max_diff(recon[layer], theirs[f"out_{layer}"]))
        else:
            for layer in range(n_layers):
                transcoder = coder[coder.layers[layer]]
                acts = max(acts, max_diff(transcoder.encode(x[layer]), theirs[f"acts_{layer}"]))
                outs = max(outs, max_diff(transcoder(x[layer]).out, theirs[f"out_{layer}"]))
    _log(folder.name, acts, outs)
    return acts, outs


@pytest.mark.parametrize("kind", PLT_MADE)
def test_we_read_circuit_tracer_sets(kind, circuit_tracer_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = circuit_tracer_runs / f"made-plt-{kind}"
    coder = load_transcoders(folder / "set")
    assert isinstance(coder, PerLayerTranscoders) and coder.layers == [0, 1]
    assert (coder.hook_in(1), coder.hook_out(1)) == (
        "blocks.1.mlp.hook_in",
        "blocks.1.mlp.hook_out",
    )
    expected = {"relu": "relu", "skip": "relu", "jumprelu": "jumprelu", "topk": "topk"}[kind]
    assert coder[0].cfg.architecture == expected
    if kind == "topk":
        assert not coder[0].cfg.topk_relu
    assert max(_compare_set(coder, folder, 2)) <= TOLERANCE


@pytest.mark.parametrize("kind", CLT_MADE)
def test_we_read_circuit_tracer_clts(kind, circuit_tracer_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = circuit_tracer_runs / f"made-clt-{kind}"
    clt = load_transcoders(folder / "set")
    assert isinstance(clt, CrossLayerTranscoder) and clt.cfg.n_layers == 3
    assert clt.hook_in(2) == "blocks.2.hook_resid_mid"
    assert max(_compare_set(clt, folder, 3)) <= TOLERANCE


@pytest.mark.parametrize("kind", PLT_OURS)
def test_circuit_tracer_reads_our_sets(kind, circuit_tracer_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = circuit_tracer_runs / f"ours-plt-{kind}"
    theirs = load_file(str(folder / "theirs.safetensors"))
    hooks = "".join(chr(int(c)) for c in theirs["hooks"])
    assert hooks == "mlp.hook_in>mlp.hook_out"
    if kind == "topk":  # the inputs do reach circuit-tracer's signed TopK
        assert (theirs["acts_0"] < 0).any()
    assert max(_compare_set(_our_plt(kind), folder, 2)) <= TOLERANCE


@pytest.mark.parametrize("kind", CLT_OURS)
def test_circuit_tracer_reads_our_clts(kind, circuit_tracer_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = circuit_tracer_runs / f"ours-clt-{kind}"
    assert max(_compare_set(_our_clt(kind), folder, 3)) <= TOLERANCE


@pytest.mark.parametrize(
    "name", ["gemma-scope", "gemma-scope-2-False", "gemma-scope-2-True", "gemma-scope-2-clt"]
)
def test_gemma_scope_reads_agree_with_circuit_tracer(name, circuit_tracer_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = circuit_tracer_runs / f"gs-{name}"
    source = Path((folder / "source").read_text())
    if name.endswith("clt"):
        coder = load_transcoders(source)
        assert isinstance(coder, CrossLayerTranscoder)
        assert max(_compare_set(coder, folder, 3)) <= TOLERANCE
        return
    dictionary = load(source)
    assert dictionary.cfg.architecture == "jumprelu"
    assert dictionary.cfg.kind == ("skip_transcoder" if name.endswith("True") else "transcoder")
    assert max(_compare_set(PerLayerTranscoders({0: dictionary}), folder, 1)) <= TOLERANCE


# ------------------------------------------------------------------------------- sparsify
SPARSIFY_MADE = ["sae", "transcoder", "skip_transcoder"]


def _our_sparsify(kind: str) -> Any:
    coder = build_dictionary(
        "topk", kind, d_in=D, d_sae=40, d_out=None if kind == "sae" else D, k=5
    )
    randomize_parameters(coder, seed=2)  # b_in differs from b_dec (SAE) and from 0: folded
    coder.cfg.hook_in = "blocks.3.hook_resid_post" if kind == "sae" else "blocks.3.mlp.hook_in"
    coder.cfg.hook_out = coder.cfg.hook_in if kind == "sae" else "blocks.3.mlp.hook_out"
    return coder


@pytest.fixture(scope="module")
def sparsify_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sparsify")
    jobs: list[list[Any]] = []
    for kind in SPARSIFY_MADE:
        _inputs(root / f"made-{kind}", None, seed=7)
        jobs.append(["make", str(root / f"made-{kind}"), kind])
        _inputs(root / f"ours-{kind}", None, seed=8)
        formats.write(_our_sparsify(kind), "sparsify", root / f"ours-{kind}" / "run")
        jobs.append(["load", str(root / f"ours-{kind}"), None])
    run_worker(".venv-bench", "sparsify_worker.py", jobs, root)
    return root


def _compare_sparsify(coder: Any, folder: Path, hookpoint: str) -> tuple[float, float]:
    x = load_file(str(folder / "x.safetensors"))["x"]
    theirs = load_file(str(folder / "theirs.safetensors"))
    with torch.no_grad():
        acts = max_diff(coder.encode(x), theirs[f"acts_{hookpoint}"])
        outs = max_diff(coder(x).out, theirs[f"out_{hookpoint}"])
    _log(folder.name, acts, outs)
    return acts, outs


@pytest.mark.parametrize("kind", SPARSIFY_MADE)
def test_we_read_sparsify_coders(kind, sparsify_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = sparsify_runs / f"made-{kind}"
    hookpoint = "layers.2" if kind == "sae" else "layers.2.mlp"
    coder = load(folder / "run" / hookpoint)
    assert coder.cfg.kind == kind
    assert coder.cfg.hook_in == (
        "blocks.2.hook_resid_post" if kind == "sae" else "blocks.2.mlp.hook_in"
    )
    assert max(_compare_sparsify(coder, folder, hookpoint)) <= TOLERANCE


@pytest.mark.parametrize("kind", SPARSIFY_MADE)
def test_sparsify_reads_our_coders(kind, sparsify_runs: Path) -> None:  # type: ignore[no-untyped-def]
    folder = sparsify_runs / f"ours-{kind}"
    hookpoint = "layers.3" if kind == "sae" else "layers.3.mlp"
    assert (folder / "run" / hookpoint / "cfg.json").is_file()
    assert max(_compare_sparsify(_our_sparsify(kind), folder, hookpoint)) <= TOLERANCE


# ------------------------------------------------------------------------------- SAELens
SAELENS_SAVED = [
    ("TranscoderConfig", "Transcoder", "relu", "transcoder"),
    ("SkipTranscoderConfig", "SkipTranscoder", "relu", "skip_transcoder"),
    ("JumpReLUSAEConfig", "JumpReLUSAE", "jumprelu", "sae"),
    ("JumpReLUTranscoderConfig", "JumpReLUTranscoder", "jumprelu", "transcoder"),
    ("JumpReLUSkipTranscoderConfig", "JumpReLUSkipTranscoder", "jumprelu", "skip_transcoder"),
]


@pytest.mark.parametrize(("cfg_cls", "sae_cls", "architecture", "kind"), SAELENS_SAVED)
def test_we_read_folders_saelens_saves(
    cfg_cls, sae_cls, architecture, kind, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`SAE.save_model` of SAELens 6.54.12's own classes (standard/topk SAEs: test_saelens_compat)."""
    sae_lens = pytest.importorskip("sae_lens")
    extra = {} if kind == "sae" else {"d_out": 20, "apply_b_dec_to_input": False}
    theirs = getattr(sae_lens, sae_cls)(getattr(sae_lens, cfg_cls)(d_in=D, d_sae=D_TC, **extra))
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            fresh = torch.randn(param.shape, generator=gen) * 0.3
            param.copy_(fresh.abs() + 0.05 if "threshold" in name else fresh)
    theirs.save_model(str(tmp_path))
    ours = load(tmp_path)
    assert (ours.cfg.architecture, ours.cfg.kind) == (architecture, kind)
    x = torch.randn(N, D, generator=gen)
    with torch.no_grad():
        acts = max_diff(ours.encode(x), theirs.encode(x))
        outs = max_diff(ours(x).out, theirs(x))
    _log(f"saelens {sae_cls}", acts, outs)
    assert max(acts, outs) <= TOLERANCE


# ------------------------------------------------------------------------------- Gemma Scope in SAELens
GEMMA_SCOPE_CASES = [
    # (repo, folder, SAELens loader, our hook_in, our hook_out)
    ("google/gemma-scope-2b-pt-res", "layer_3/width_16k/average_l0_40", "gemma_2_sae_huggingface_loader",
     "blocks.3.hook_resid_post", None),
    ("google/gemma-scope-2b-pt-mlp", "layer_3/width_16k/average_l0_40", "gemma_2_sae_huggingface_loader",
     "blocks.3.hook_mlp_out", None),
    ("google/gemma-scope-9b-pt-att", "layer_3/width_16k/average_l0_40", "gemma_2_sae_huggingface_loader",
     "blocks.3.attn.hook_z", None),
    ("google/gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_40",
     "gemma_2_transcoder_huggingface_loader", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"),
    ("google/gemma-scope-2-1b-pt", "transcoder_all/layer_3_width_16k_l0_small_affine",
     "gemma_3_sae_huggingface_loader", "blocks.3.mlp.hook_in", "blocks.3.hook_mlp_out"),
    ("google/gemma-scope-2-1b-pt", "resid_post/layer_3_width_16k_l0_small",
     "gemma_3_sae_huggingface_loader", "blocks.3.hook_resid_post", None),
]  # fmt: skip


@pytest.mark.parametrize(("repo", "folder", "loader", "hook_in", "hook_out"), GEMMA_SCOPE_CASES)
def test_gemma_scope_reads_agree_with_saelens_loaders(  # type: ignore[no-untyped-def]
    repo, folder, loader, hook_in, hook_out, tmp_path: Path, monkeypatch
) -> None:
    """SAELens' own Gemma Scope loaders read the same files (a local stand-in for the hub): same
    sites, same outputs. Gemma Scope 2 transcoders read `pre_feedforward_layernorm.output` (the
    MLP input with the norm's gain), our `mlp.hook_in`; SAELens names it `hook_mlp_in`, so for
    them the test compares the Hugging Face hook point it records."""
    pytest.importorskip("sae_lens")
    from huggingface_hub.errors import EntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
    from safetensors import safe_open

    from sparsecircuits.dictionaries.formats import hooks

    gen = torch.Generator().manual_seed(12)
    hub = tmp_path / "hub"
    target = hub / repo / folder
    target.mkdir(parents=True)
    arrays = {
        "w_enc": torch.randn(D, D_TC, generator=gen) * 0.4,
        "w_dec": torch.randn(D_TC, D, generator=gen) * 0.4,
        "b_enc": torch.randn(D_TC, generator=gen) * 0.2,
        "b_dec": torch.randn(D, generator=gen) * 0.2,
        "threshold": torch.rand(D_TC, generator=gen) * 0.3 + 0.01,
    }
    if "gemma-scope-2-" in repo:
        if "affine" in folder:
            arrays["affine_skip_connection"] = torch.randn(D, D, generator=gen) * 0.3
        path = target / "params.safetensors"
        save_file(arrays, str(path))
    else:
        path = target / "params.npz"
        np.savez(path, **{k: v.numpy() for k, v in arrays.items()})

    def local_download(repo_id: str, filename: str, subfolder: str | None = None, **_: Any) -> str:
        found = hub / repo_id / (subfolder or "") / filename
        if not found.is_file():
            raise EntryNotFoundError(f"{found} not in the local hub")
        return str(found)

    def local_shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        with safe_open(str(hub / repo_id / filename), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118

    monkeypatch.setattr(loaders, "hf_hub_download", local_download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", local_shapes)
    overrides = {"d_in": D, "d_sae": D_TC, **({"d_out": D} if hook_out else {})}
    if "att" in repo:  # their hook_z SAEs reshape [..., heads, d_head] inputs; ours take them flat
        overrides["reshape_activations"] = "none"
    raw_cfg, state_dict, _ = getattr(loaders, loader)(
        repo, folder, device="cpu", cfg_overrides=overrides
    )
    cfg_dict = handle_config_defaulting(dict(raw_cfg))  # then as SAE.from_pretrained builds it
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg_dict["architecture"]).from_dict(
        cfg_dict
    )
    theirs = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
    theirs.process_state_dict_for_loading(state_dict)
    theirs.load_state_dict(state_dict)

    ours = load(path)
    assert (ours.cfg.hook_in, ours.cfg.hook_out if hook_out else None) == (hook_in, hook_out)
    if "gemma-scope-2-" in repo:
        assert hooks.to_ours("huggingface", raw_cfg["hf_hook_name"]) == hook_in
    else:
        assert theirs.cfg.metadata.hook_name == hook_in
        assert getattr(theirs.cfg.metadata, "hook_name_out", None) in (None, hook_out)
    x = torch.randn(N, D, generator=gen)
    with torch.no_grad():
        acts = max_diff(ours.encode(x), theirs.encode(x))
        outs = max_diff(ours(x).out, theirs(x))
    _log(f"saelens {loader} {repo.split('/')[1]}", acts, outs)
    assert max(acts, outs) <= TOLERANCE
