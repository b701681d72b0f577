"""CLI: help for every command, a train → eval round trip on a tiny model, and bad input."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sparsecircuits.cli import COMMANDS, main
from testkit import tiny_run_config


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    config = tiny_run_config(
        root,
        tiny_model_dir("gpt2"),
        [
            {"kind": "transcoder", "architecture": "topk", "layer": 1, "d_sae": 64, "k": 4},
            {"kind": "sae", "architecture": "topk", "layer": 1, "d_sae": 64, "k": 4},
        ],
        {"total_tokens": 4096, "batch_tokens": 256, "lr": 3e-3},
        texts=600,
        context_size=32,
        buffer_tokens=2048,
        contexts_per_forward=8,
        eval_contexts=4,
    )
    data = Path(config["dataset"])
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path, "data": data, "model": config["model"]}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: sparsecircuits" in capsys.readouterr().out


def test_train_then_eval(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "run"
    code, stdout, _ = run_cli(
        ["train", "--config", str(setup["config"]), "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, stdout
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert {line["name"] for line in lines} == {"transcoder-topk-L1-64-k4", "sae-topk-L1-64-k4"}
    assert (out / "dictionaries" / "transcoder-topk-L1-64-k4" / "cfg.json").is_file()
    saved_cfg = json.loads(
        (out / "dictionaries" / "transcoder-topk-L1-64-k4" / "cfg.json").read_text()
    )
    assert saved_cfg["d_sae"] == 64
    code, stdout, err = run_cli(
        [
            "eval",
            str(out / "dictionaries"),
            "--model",
            setup["model"],
            "--dataset",
            str(setup["data"]),
            "--context-size",
            "32",
            "--contexts",
            "4",
            "--out",
            str(setup["root"] / "eval"),
        ],
        capsys,
    )
    assert code == 0, err
    records = json.loads((setup["root"] / "eval" / "metrics.json").read_text())
    assert len(records) == 2
    for r in records:
        assert r["l0"] <= 4.0 + 1e-6 and r["fvu"] >= 0
        assert r["ce_loss_clean"] > 0 and r["kl_div"] >= 0
    assert (setup["root"] / "eval" / "frontier.png").stat().st_size > 1000


def test_resume_without_checkpoint_is_a_clear_error(
    setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        [
            "train",
            "--config",
            str(setup["config"]),
            "--out",
            str(setup["root"] / "fresh"),
            "--resume",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "holds no checkpoint" in err and "Traceback" not in err


def test_train_then_eval_a_cross_layer_transcoder(
    setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(setup["config"].read_text())
    config["dictionaries"] = [
        {"kind": "clt", "architecture": "topk", "n_layers": 2, "d_sae": 32, "k": 4},
        {"kind": "transcoder", "architecture": "topk", "layer": 0, "d_sae": 32, "k": 4},
    ]
    config["train"] = {"total_tokens": 2048, "batch_tokens": 256, "lr": 3e-3}
    path = setup["root"] / "clt.yaml"
    path.write_text(yaml.safe_dump(config))
    out = setup["root"] / "clt-run"
    code, stdout, err = run_cli(
        ["train", "--config", str(path), "--out", str(out), "--quiet"], capsys
    )
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert {line["name"] for line in lines} == {"clt-topk-L0-1-32-k4", "transcoder-topk-L0-32-k4"}
    saved = json.loads((out / "dictionaries" / "clt-topk-L0-1-32-k4" / "cfg.json").read_text())
    assert saved["architecture"] == "clt_topk"
    eval_out = setup["root"] / "clt-eval"
    eval_args = ["--model", setup["model"], "--dataset", str(setup["data"])]
    eval_args += ["--context-size", "32", "--contexts", "4", "--out", str(eval_out)]
    code, _, err = run_cli(["eval", str(out / "dictionaries"), *eval_args], capsys)
    assert code == 0, err
    records = {r["name"]: r for r in json.loads((eval_out / "metrics.json").read_text())}
    clt = records["clt-topk-L0-1-32-k4"]
    assert clt["kind"] == "clt" and clt["n_layers"] == 2
    assert [layer["hook_out"] for layer in clt["layers"]] == [
        "blocks.0.mlp.hook_out",
        "blocks.1.mlp.hook_out",
    ]
    assert clt["l0"] == pytest.approx(sum(layer["l0"] for layer in clt["layers"]))
    assert clt["l0"] <= 8.0 + 1e-6 and clt["kl_div"] >= 0 and clt["fvu"] >= 0
    assert clt["ce_loss_clean"] == pytest.approx(
        records["transcoder-topk-L0-32-k4"]["ce_loss_clean"]
    )
    summary = (eval_out / "summary.md").read_text()
    assert "blocks.{0..1}.mlp.hook_in" in summary and "clt-topk-L0-1-32-k4 by layer" in summary
    # one CLT folder on its own evaluates too
    code, stdout, err = run_cli(
        ["eval", str(out / "dictionaries" / "clt-topk-L0-1-32-k4"), *eval_args, "--overwrite"],
        capsys,
    )
    assert code == 0, err
    assert json.loads(stdout)[0]["ce_loss_spliced"] == pytest.approx(clt["ce_loss_spliced"])
    # dashboards take the saved CLT too (one entry per layer)
    code, stdout, err = run_cli(
        [
            "dashboards",
            "--model",
            setup["model"],
            "--dictionary",
            str(out / "dictionaries" / "clt-topk-L0-1-32-k4"),
            "--dataset",
            str(setup["data"]),
            "--tokens",
            "256",
            "--context-size",
            "32",
            "--out",
            str(setup["root"] / "clt-dash"),
            "--quiet",
            "--circuit-tracer-features",
        ],
        capsys,
    )
    assert code == 0, err
    names = {json.loads(line)["name"] for line in stdout.splitlines() if line.startswith("{")}
    assert names == {"clt-topk-L0-1-32-k4.layer0", "clt-topk-L0-1-32-k4.layer1"}
    index = json.loads(
        gzip.decompress((setup["root"] / "clt-dash" / "features" / "index.json.gz").read_bytes())
    )
    assert [len(entry["offsets"]) for entry in index] == [33, 33]  # d_sae + 1 per layer


def test_eval_rejects_a_clt_deeper_than_the_model(
    setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsecircuits.dictionaries import DictionaryConfig, make, save_dictionary

    folder = setup["root"] / "deep-clt"
    cfg = DictionaryConfig(
        architecture="topk",
        kind="clt",
        d_in=32,
        d_sae=8,
        k=2,
        n_layers=4,
        hook_in="blocks.{layer}.hook_mlp_in",
        hook_out="blocks.{layer}.hook_mlp_out",
    )
    save_dictionary(make(cfg), folder)
    code, _, err = run_cli(
        ["eval", str(folder), "--model", setup["model"], "--dataset", str(setup["data"])],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "cross-layer transcoder over 4 layers but the model has 3" in err


BAD_INPUTS = [
    ({"dictionaries": [{"kind": "sae", "hook_in": "blocks.1.hook_nonsense"}]}, "hook"),
    ({"dictionaries": [{"kind": "clt", "n_layers": 7}]}, "n_layers=7 is out of range"),
    ({"dictionaries": [{"kind": "clt", "hook_in": "blocks.{layer}.mlp.hook_out"}]}, "kind sae"),
    ({"dictionaries": [{"kind": "clt", "hook_out": "blocks.2.hook_mlp_out"}]}, "{layer}"),
    ({"dictionaries": [{"kind": "transcoder", "layer": 1, "colour": "red"}]}, "unknown key"),
    ({"learning_rate": 0.1}, "unknown key"),
    ({"train": {"total_tokens": 100, "momentum": 0.9}}, "unknown key"),
    ({"context_size": 100000}, "context"),
    ({"dataset": "EMPTY"}, "no text"),
    ({"dataset": "/nonexistent/file.jsonl"}, "nonexistent"),
    ({"dictionaries": [{"kind": "autoencoder"}]}, "unknown dictionary kind"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_INPUTS)
def test_bad_input_gives_one_clear_line(
    setup: dict, change: dict, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = yaml.safe_load(setup["config"].read_text())
    if change.get("dataset") == "EMPTY":
        empty = tmp_path / "empty.txt"
        empty.write_text("")
        change = {"dataset": str(empty)}
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = run_cli(
        ["train", "--config", str(path), "--out", str(tmp_path / "o"), "--quiet"], capsys
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected.lower() in err.lower()


def test_eval_rejects_dictionary_of_another_width(
    setup: dict, capsys: pytest.CaptureFixture[str], tiny_model_dir: Callable[[str], Path]
) -> None:
    from sparsecircuits.dictionaries import DictionaryConfig, make, save_dictionary

    folder = setup["root"] / "wrong"
    save_dictionary(
        make(
            DictionaryConfig(
                architecture="topk",
                kind="sae",
                d_in=999,
                d_sae=8,
                k=2,
                hook_in="blocks.0.hook_mlp_out",
            )
        ),
        folder,
    )
    code, _, err = run_cli(
        [
            "eval",
            str(folder),
            "--model",
            setup["model"],
            "--dataset",
            str(setup["data"]),
            "--context-size",
            "32",
            "--contexts",
            "2",
        ],
        capsys,
    )
    assert code == 2 and "width 999" in err


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--config", "/nope.yaml"], capsys)
    assert code == 2 and "does not exist" in err
