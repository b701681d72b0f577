"""Bad input to every subcommand: each case exits with status 2, prints exactly one line on stderr
starting `error:`, no traceback, and leaves every file that existed before unchanged (and
present).

One parametrised test runs the real CLI entry (`sparsecircuits.cli.main`) on a table of cases; a
case names its arguments with placeholders for the shared fixtures ({model}, {data}, {config},
{transcoders}, {dictionary}, {graphs}) and {tmp}, its own folder, which `prepare` fills first.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import sparsecircuits
from sparsecircuits.cli import main
from sparsecircuits.dictionaries import DictionaryConfig, make, save_dictionary
from testkit import tiny_run_config

D_MODEL = 32  # the tiny gpt2's width
N_LAYERS = 3


def transcoder(layer: int, d_in: int = D_MODEL) -> DictionaryConfig:
    return DictionaryConfig(
        architecture="topk",
        kind="transcoder",
        d_in=d_in,
        d_sae=16,
        k=2,
        hook_in=f"blocks.{layer}.mlp.hook_in",
        hook_out=f"blocks.{layer}.hook_mlp_out",
        seed=layer,
    )


@pytest.fixture(scope="module")
def shared(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The valid inputs the cases spoil one at a time: a tiny model, a text file, a run config,
    per-layer transcoders, one saved SAE and a folder with a graph."""
    root = tmp_path_factory.mktemp("bad-input")
    config = tiny_run_config(
        root,
        tiny_model_dir("gpt2"),
        [{"kind": "sae", "architecture": "topk", "layer": 1, "d_sae": 16, "k": 2}],
        {"total_tokens": 128, "batch_tokens": 64, "lr": 1e-3},
    )
    data = Path(config["dataset"])
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    for layer in range(N_LAYERS):
        save_dictionary(make(transcoder(layer)), root / "transcoders" / f"layer{layer}")
    sae = DictionaryConfig(
        architecture="topk",
        kind="sae",
        d_in=D_MODEL,
        d_sae=16,
        k=2,
        hook_in="blocks.1.hook_mlp_out",
    )
    save_dictionary(make(sae), root / "sae")
    (root / "graphs").mkdir()
    (root / "graphs" / "graph.json").write_text("{}")
    return {
        "root": root,
        "model": config["model"],
        "data": str(data),
        "config": str(root / "run.yaml"),
        "transcoders": str(root / "transcoders"),
        "dictionary": str(root / "sae"),
        "graphs": str(root / "graphs"),
    }


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str  # a phrase the error line holds (case-insensitive)
    prepare: Callable[[Path, dict], None] | None = None
    unwritable: bool = False  # needs chmod to take effect (skipped as root)


def write(name: str, content: str | bytes) -> Callable[[Path, dict], None]:
    """`prepare`: write `content` to {tmp}/name."""

    def prepare(tmp: Path, shared: dict) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return prepare


def config_with(change: dict) -> Callable[[Path, dict], None]:
    """`prepare`: {tmp}/c.yaml, the shared run config with `change` applied (nested one level)."""

    def prepare(tmp: Path, shared: dict) -> None:
        config = yaml.safe_load(Path(shared["config"]).read_text())
        for key, value in change.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))

    return prepare


def mkdir(name: str) -> Callable[[Path, dict], None]:
    def prepare(tmp: Path, shared: dict) -> None:
        (tmp / name).mkdir(parents=True)

    return prepare


def locked_folder(tmp: Path, shared: dict) -> None:
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o500)


def saved_dictionary(change: Callable[[Path], None] | None = None, d_in: int = D_MODEL):
    """`prepare`: a transcoder for layer 1 saved in {tmp}/dict (width `d_in`), then `change(folder)`."""

    def prepare(tmp: Path, shared: dict) -> None:
        folder = save_dictionary(make(transcoder(1, d_in)), tmp / "dict")
        if change is not None:
            change(Path(folder))

    return prepare


def truncate_weights(folder: Path) -> None:
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])


def garble_weights(folder: Path) -> None:
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(b"\x00\xff" * 500)


def drop_weights(folder: Path) -> None:
    for p in folder.iterdir():
        if p.suffix == ".safetensors":
            p.unlink()


def garble_cfg(folder: Path) -> None:
    (folder / "cfg.json").write_text('{"d_in": 32, ')


def transcoder_set(d_in: int) -> Callable[[Path, dict], None]:
    def prepare(tmp: Path, shared: dict) -> None:
        for layer in range(N_LAYERS):
            save_dictionary(make(transcoder(layer, d_in)), tmp / "set" / f"layer{layer}")

    return prepare


def earlier(*names: str) -> Callable[[Path, dict], None]:
    """`prepare`: {tmp}/out holding files an earlier run wrote."""

    def prepare(tmp: Path, shared: dict) -> None:
        (tmp / "out").mkdir()
        for name in names:
            (tmp / "out" / name).write_text('{"earlier": true}')

    return prepare


TRAIN = ["train", "--config", "{config}", "--quiet"]
TRAIN_OUT = [*TRAIN, "--out", "{tmp}/out"]
EVAL = ["eval", "{dictionary}", "--model", "{model}", "--dataset", "{data}", "--contexts", "2"]
EVAL += ["--context-size", "16"]
TRACE = ["trace", "The cat sat", "--model", "{model}", "--transcoders", "{transcoders}"]
TRACE += ["--device", "cpu"]
DASH = ["dashboards", "--model", "{model}", "--dictionary", "{dictionary}", "--dataset", "{data}"]
DASH += ["--tokens", "64", "--context-size", "16", "--quiet"]
PATHS = ["paths", "--model", "{model}", "--transcoders", "{transcoders}", "--target", "logit:1"]
GT = ["case-study", "greater-than", "--model", "{model}", "--transcoders", "{transcoders}"]
GT += ["--quiet"]
MISSING = "{tmp}/no-such-thing"

CASES = [
    # flags out of range
    Case("train-lr-negative", [*TRAIN_OUT, "--lr", "-0.001"], "lr"),
    Case("train-lr-zero", [*TRAIN_OUT, "--lr", "0"], "lr"),
    Case("train-k-negative", [*TRAIN_OUT, "--k", "-4"], "k"),
    Case("train-d-sae-zero", [*TRAIN_OUT, "--d-sae", "0"], "d_sae"),
    Case("train-tokens-negative", [*TRAIN_OUT, "--tokens", "-100"], "total_tokens"),
    Case("train-batch-tokens-zero", [*TRAIN_OUT, "--batch-tokens", "0"], "batch_tokens"),
    Case("train-context-size-zero", [*TRAIN_OUT, "--context-size", "0"], "context_size"),
    Case("train-layer-beyond-model", [*TRAIN_OUT, "--layer", "9"], "blocks.9"),
    Case("train-checkpoint-every-negative", [*TRAIN_OUT, "--checkpoint-every", "-1"], "checkpoint"),
    Case("train-lr-not-a-number", [*TRAIN_OUT, "--lr", "fast"], "--lr"),
    Case("train-dtype-unknown", [*TRAIN_OUT, "--dtype", "int8"], "--dtype"),
    Case("train-unknown-flag", [*TRAIN_OUT, "--learning-rate", "1"], "--learning-rate"),
    Case("demo-d-sae-negative", ["demo", "--out", "{tmp}/out", "--d-sae", "-8"], "d_sae"),
    Case("sweep-lr-negative", ["sweep", "--out", "{tmp}/out", "--lr", "-1"], "lr"),
    Case("tc-vs-sae-ks-not-ints", ["tc-vs-sae", "--out", "{tmp}/o", "--ks", "16,x"], "--ks"),
    Case(
        "tc-vs-sae-tolerance-above-1",
        ["tc-vs-sae", "--out", "{tmp}/o", "--tolerance", "2"],
        "--tolerance",
    ),
    Case(
        "tc-vs-sae-budget-below-batch",
        ["tc-vs-sae", "--out", "{tmp}/o", "--first-budget", "100"],
        "first_budget",
    ),
    Case("tc-vs-sae-lr-negative", ["tc-vs-sae", "--out", "{tmp}/o", "--lr", "-1"], "lr"),
    Case(
        "tc-vs-sae-report-without-results",
        ["tc-vs-sae", "--out", "{tmp}/o", "--report-only"],
        "no results",
    ),
    Case("eval-contexts-zero", [*EVAL, "--contexts", "0", "--out", "{tmp}/out"], "--contexts"),
    Case("eval-context-size-neg", [*EVAL, "--context-size", "-3", "--out", "{tmp}/o"], "context"),
    Case("trace-node-threshold-above-1", [*TRACE, "--node-threshold", "1.5"], "node"),
    Case("trace-batch-size-zero", [*TRACE, "--batch-size", "0", "--out", "{tmp}/o"], "batch_size"),
    Case("dashboards-tokens-zero", [*DASH, "--tokens", "0", "--out", "{tmp}/out"], "--tokens"),
    Case("dashboards-n-top-negative", [*DASH, "--n-top", "-2", "--out", "{tmp}/out"], "--n-top"),
    Case("tasks-n-zero", ["tasks", "--model", "{model}", "--n", "0"], "--n"),
    Case("case-study-n-prompts-zero", [*GT, "--n-prompts", "0", "--out", "{tmp}/o"], "n-prompts"),
    Case("paths-num-iters-zero", [*PATHS, "--num-iters", "0", "--out", "{tmp}/o"], "num-iters"),
    Case("paths-target-unparsable", [*PATHS, "--target", "logit", "--out", "{tmp}/o"], "target"),
    Case("serve-port-out-of-range", ["serve", "{graphs}", "--port", "70000"], "port"),
    Case("presets-unknown-flag", ["presets", "--yaml"], "--yaml"),
    Case("adapters-eval-missing-folder", ["adapters", "eval", MISSING], "no-such-thing"),
    Case(
        "adapters-train-reference-missing",
        ["adapters", "train", "--reference", MISSING, "--out", "{tmp}/o"],
        "no-such-thing",
    ),
    Case("identify-unknown-task", ["identify", "sorting", "--out", "{tmp}/o"], "sorting"),
    Case(
        "identify-model-missing-folder",
        ["identify", "ioi", "--model", MISSING, "--out", "{tmp}/o"],
        "no-such-thing",
    ),
    Case("unknown-command", ["fly"], "fly"),
    # config files
    Case(
        "config-unknown-key",
        ["train", "--config", "{tmp}/c.yaml"],
        "unknown key",
        config_with({"learning_rate": 1}),
    ),
    Case(
        "config-wrong-type",
        ["train", "--config", "{tmp}/c.yaml"],
        "lr",
        config_with({"train": {"lr": "fast"}}),
    ),
    Case(
        "config-wrong-type-run",
        ["train", "--config", "{tmp}/c.yaml"],
        "context_size",
        config_with({"context_size": "long"}),
    ),
    Case(
        "config-yaml-syntax",
        ["train", "--config", "{tmp}/c.yaml"],
        "cannot parse",
        write("c.yaml", "model: [embedded\n"),
    ),
    Case(
        "config-json-syntax",
        ["train", "--config", "{tmp}/c.json"],
        "cannot parse",
        write("c.json", '{"model": "embedded",}'),
    ),
    Case(
        "config-not-a-mapping",
        ["train", "--config", "{tmp}/c.yaml"],
        "mapping",
        write("c.yaml", "- 1\n- 2\n"),
    ),
    Case("config-is-a-folder", ["train", "--config", "{tmp}"], "config"),
    Case(
        "config-binary",
        ["train", "--config", "{tmp}/c.yaml"],
        "config",
        write("c.yaml", b"\xff\xfe\x00\x81" * 20),
    ),
    # data
    Case(
        "data-empty-file", [*TRAIN_OUT, "--dataset", "{tmp}/d.txt"], "no text", write("d.txt", "")
    ),
    Case(
        "data-binary",
        [*TRAIN_OUT, "--dataset", "{tmp}/d.txt"],
        "d.txt",
        write("d.txt", bytes(range(256)) * 8),
    ),
    Case(
        "data-jsonl-wrong-field",
        [*TRAIN_OUT, "--dataset", "{tmp}/d.jsonl"],
        "text",
        write("d.jsonl", '{"body": "hello there"}\n' * 20),
    ),
    Case(
        "data-jsonl-not-json",
        [*TRAIN_OUT, "--dataset", "{tmp}/d.jsonl"],
        "d.jsonl",
        write("d.jsonl", "hello\nthere\n"),
    ),
    Case(
        "data-wrong-extension",
        [*TRAIN_OUT, "--dataset", "{tmp}/d.csv"],
        "csv",
        write("d.csv", "a,b\n1,2\n"),
    ),
    Case("data-missing", [*TRAIN_OUT, "--dataset", MISSING], "no-such-thing"),
    Case("data-empty-folder", [*TRAIN_OUT, "--dataset", "{tmp}/empty"], "empty", mkdir("empty")),
    Case("eval-data-missing", [*EVAL, "--dataset", MISSING, "--out", "{tmp}/o"], "no-such-thing"),
    Case(
        "dashboards-data-binary",
        [*DASH, "--dataset", "{tmp}/d.txt", "--out", "{tmp}/o"],
        "d.txt",
        write("d.txt", bytes(range(256)) * 8),
    ),
    # dictionaries
    Case("eval-dictionary-missing", ["eval", MISSING, "--model", "{model}"], "no-such-thing"),
    Case(
        "eval-dictionary-empty-folder",
        ["eval", "{tmp}/empty", "--model", "{model}"],
        "empty",
        mkdir("empty"),
    ),
    Case(
        "eval-weights-truncated",
        ["eval", "{tmp}/dict", "--model", "{model}"],
        "dict",
        saved_dictionary(truncate_weights),
    ),
    Case(
        "eval-weights-corrupt",
        ["eval", "{tmp}/dict", "--model", "{model}"],
        "dict",
        saved_dictionary(garble_weights),
    ),
    Case(
        "eval-weights-missing",
        ["eval", "{tmp}/dict", "--model", "{model}"],
        "dict",
        saved_dictionary(drop_weights),
    ),
    Case(
        "eval-cfg-corrupt",
        ["eval", "{tmp}/dict", "--model", "{model}"],
        "cfg.json",
        saved_dictionary(garble_cfg),
    ),
    Case(
        "eval-wrong-width", [*EVAL[:1], "{tmp}/dict", *EVAL[2:]], "width", saved_dictionary(d_in=48)
    ),
    Case(
        "trace-another-models-transcoders",
        [*TRACE[:4], "--transcoders", "{tmp}/set", "--device", "cpu", "--out", "{tmp}/o"],
        "wide",
        transcoder_set(48),
    ),
    Case(
        "dashboards-dictionary-missing",
        [*DASH[:3], "--dictionary", MISSING, "--out", "{tmp}/o"],
        "no-such-thing",
    ),
    Case(
        "convert-src-missing", ["convert", MISSING, "{tmp}/out", "--to", "saelens"], "no-such-thing"
    ),
    Case(
        "convert-src-corrupt",
        ["convert", "{tmp}/dict", "{tmp}/out", "--to", "sparsify"],
        "dict",
        saved_dictionary(garble_weights),
    ),
    # prompts
    Case("trace-prompt-empty", ["trace", "", *TRACE[2:], "--out", "{tmp}/o"], "prompt"),
    Case("trace-prompt-whitespace", ["trace", "  \t ", *TRACE[2:], "--out", "{tmp}/o"], "prompt"),
    Case(
        "trace-prompt-too-long",
        ["trace", "the cat " * 400, *TRACE[2:], "--out", "{tmp}/o"],
        "tokens",
    ),
    Case(
        "trace-prompt-control-chars",
        ["trace", "the \x00cat\x1b[2J", *TRACE[2:], "--out", "{tmp}/o"],
        "control",
    ),
    Case("paths-prompt-empty", [*PATHS, "--prompt", "", "--out", "{tmp}/o"], "prompt"),
    # models
    Case(
        "train-model-unknown-name",
        [*TRAIN_OUT, "--model", "no-such-org/no-such-model"],
        "no-such-model",
    ),
    Case(
        "trace-model-not-a-model-folder",
        [*TRACE[:2], "--model", "{tmp}/m", *TRACE[4:], "--out", "{tmp}/o"],
        "config.json",
        write("m/weights.bin", b"x"),
    ),
    Case("tasks-model-missing-folder", ["tasks", "--model", MISSING], "no-such-thing"),
    Case(
        "eval-model-corrupt-config",
        ["eval", "{dictionary}", "--model", "{tmp}/m"],
        "m",
        write("m/config.json", "{not json"),
    ),
    # output folders
    Case("train-out-is-a-file", [*TRAIN, "--out", "{tmp}/f"], "f", write("f", "keep me")),
    Case(
        "train-out-not-writable",
        [*TRAIN, "--out", "{tmp}/locked/run"],
        "locked",
        locked_folder,
        unwritable=True,
    ),
    Case("trace-out-is-a-file", [*TRACE, "--out", "{tmp}/f"], "f", write("f", "keep me")),
    Case(
        "trace-out-not-writable",
        [*TRACE, "--out", "{tmp}/locked"],
        "locked",
        locked_folder,
        unwritable=True,
    ),
    Case(
        "trace-out-earlier-graph",
        [*TRACE, "--out", "{tmp}/out"],
        "--overwrite",
        earlier("graph.json"),
    ),
    Case(
        "eval-out-earlier-metrics",
        [*EVAL, "--out", "{tmp}/out"],
        "--overwrite",
        earlier("metrics.json"),
    ),
    Case("eval-out-is-a-file", [*EVAL, "--out", "{tmp}/f"], "f", write("f", "keep me")),
    Case(
        "dashboards-out-earlier",
        [*DASH, "--out", "{tmp}/out"],
        "--overwrite",
        earlier("index.json"),
    ),
    Case(
        "dashboards-out-not-writable",
        [*DASH, "--out", "{tmp}/locked/d"],
        "locked",
        locked_folder,
        unwritable=True,
    ),
    Case(
        "paths-out-earlier-graph",
        [*PATHS, "--out", "{tmp}/out"],
        "--overwrite",
        earlier("graph.json"),
    ),
    Case("case-study-out-is-a-file", [*GT, "--out", "{tmp}/f"], "f", write("f", "keep me")),
    Case(
        "trace-out-under-a-file", [*TRACE, "--out", "{tmp}/f/g"], "under the file", write("f", "x")
    ),
    Case("trace-out-read-only-system", [*TRACE, "--out", "/proc/sc"], "cannot write in /proc"),
    Case(
        "convert-out-not-empty",
        ["convert", "{dictionary}", "{tmp}/out", "--to", "saelens"],
        "not empty",
        earlier("x.json"),
    ),
    # serving
    Case(
        "serve-port-in-use", ["serve", "{graphs}", "--no-interventions", "--port", "{port}"], "port"
    ),
    Case("serve-dir-missing", ["serve", MISSING, "--no-interventions"], "no-such-thing"),
]


def tree_hashes(*roots: Path) -> dict[str, str]:
    """`{path: sha256}` of every file under `roots`."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file() and os.access(p, os.R_OK)
    }


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    shared: dict,
    tmp_path: Path,
    busy_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if case.unwritable and os.geteuid() == 0:
        pytest.skip("root writes into any folder: chmod cannot make one unwritable")
    monkeypatch.chdir(tmp_path)  # a default output folder would land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case.prepare is not None:
        case.prepare(tmp_path, shared)
    values = {**shared, "tmp": str(tmp_path), "port": str(busy_port)}
    args = [arg.format(**values) if "{" in arg else arg for arg in case.args]
    before = tree_hashes(shared["root"], tmp_path)
    try:
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse
            code = exit_.code
    finally:
        if case.unwritable:
            (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expect.lower() in lines[0].lower(), lines[0]
    after = tree_hashes(shared["root"], tmp_path)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"files that existed changed: {changed}"


def test_the_table_covers_every_subcommand() -> None:
    from sparsecircuits.cli import COMMANDS

    covered = {case.args[0] for case in CASES}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


def test_the_module_entry_point_gives_one_line(tmp_path: Path) -> None:
    """`python -m sparsecircuits` in its own process: status 2, one `error:` line on stderr (no
    warnings from the libraries it imports), nothing written."""
    src = Path(sparsecircuits.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(src)}
    args = ["train", "--lr", "-0.001", "--tokens", "1", "--out", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "sparsecircuits", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "lr" in done.stderr and not any(tmp_path.iterdir())
