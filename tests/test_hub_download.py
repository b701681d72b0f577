"""Downloads through huggingface_hub's own code from a local fake hub (HF_ENDPOINT): only the
needed files are requested, the cache it writes is the layout tests/hubkit.py builds, and the
same calls then work offline from that cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparsecircuits
from hubkit import add_repo, serve_fake_hub

REPOS = {
    "org/set": {
        "config.yaml": b"model_kind: cross_layer_transcoder\n",
        "W_enc_0.safetensors": b"e" * 3000,
        "W_dec_0.safetensors": b"d" * 3000,
        "features/index.json.gz": b"viewer",
        "features/layer_0.bin": b"viewer",
        "README.md": b"readme",
    },
    "org/scope": {
        "layer_0/width_16k/average_l0_5/params.npz": b"a",
        "layer_0/width_16k/average_l0_9/params.npz": b"b",
        "layer_1/width_16k/average_l0_7/params.npz": b"c",
    },
    "org/model": {
        "config.json": b"{}",
        "tokenizer.json": b'{"model": {}}',
        "model.safetensors": b"w" * 2000,
        "pytorch_model.bin": b"pickle",
        "original/consolidated.safetensors": b"other",
    },
    "org/sparsify": {
        "run/config.json": b'{"transcode": true}',
        "run/state.pt": b"state",
        "run/optimizer_0.pt": b"state",
        "run/layers.3.mlp/cfg.json": b'{"k": 4}',
        "run/layers.3.mlp/sae.safetensors": b"s" * 100,
        "run/layers.4.mlp/sae.safetensors": b"t" * 100,
    },
    "org/listing": {
        "config.yaml": b"transcoders:\n  - hf://org/scope/layer_1/width_16k/average_l0_7/params.npz\n"
    },
}

SCRIPT = """
import json, sys
from sparsecircuits import hub
from sparsecircuits.errors import SparseCircuitsError
calls = {
    "set": lambda: hub.dictionary_path("hf://org/set"),
    "scope": lambda: hub.fetch_files("org/scope", ["layer_0/width_16k/average_l0_9/params.npz"]),
    "model": lambda: hub.model_folder("hf://org/model"),
    "listing": lambda: hub.dictionary_path("hf://org/listing"),
    "sparsify": lambda: hub.dictionary_path("hf://org/sparsify/run/layers.3.mlp"),
    "no_file": lambda: hub.fetch_files("org/set", ["W_enc_9.safetensors"]),
    "no_repo": lambda: hub.dictionary_path("hf://org/absent"),
}
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = str(calls[name]())
    except SparseCircuitsError as exc:
        out[name] = "error: " + str(exc)
print(json.dumps(out))
"""


def _run(env: dict[str, str], *calls: str) -> tuple[dict[str, str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *calls], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def fake_hub():
    server, log = serve_fake_hub(REPOS)
    yield f"http://127.0.0.1:{server.server_port}", log
    server.shutdown()


def _env(tmp_path: Path, endpoint: str, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_CACHE=str(tmp_path / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(Path(sparsecircuits.__file__).parents[1]),
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _downloaded(log: list[str], repo: str) -> set[str]:
    """Repo paths fetched with GET .../resolve/<commit>/<path>."""
    prefix = f"GET /{repo}/resolve/"
    return {line[len(prefix) :].split("/", 1)[1] for line in log if line.startswith(prefix)}


def test_only_the_needed_files_are_downloaded_then_work_offline(fake_hub, tmp_path):
    endpoint, log = fake_hub
    log.clear()
    calls = ("set", "scope", "model", "listing", "sparsify", "no_file", "no_repo")
    online, stderr = _run(_env(tmp_path, endpoint, offline=False), *calls)
    assert _downloaded(log, "org/set") == {
        "config.yaml",
        "W_enc_0.safetensors",
        "W_dec_0.safetensors",
    }
    assert _downloaded(log, "org/scope") == {
        "layer_0/width_16k/average_l0_9/params.npz",
        "layer_1/width_16k/average_l0_7/params.npz",  # listed by org/listing's config.yaml
    }
    assert _downloaded(log, "org/model") == {"config.json", "tokenizer.json", "model.safetensors"}
    assert _downloaded(log, "org/sparsify") == {
        "run/config.json",  # the run's config: whether the coder transcodes
        "run/layers.3.mlp/cfg.json",
        "run/layers.3.mlp/sae.safetensors",
    }
    assert "Fetching 3 files" in stderr  # huggingface_hub's progress bar is shown
    assert online["no_file"] == "error: hf://org/set has no file W_enc_9.safetensors"
    assert online["no_repo"].startswith("error: no hub repository org/absent")
    assert (Path(online["set"]) / "W_enc_0.safetensors").read_bytes() == b"e" * 3000

    log.clear()
    offline, _ = _run(_env(tmp_path, endpoint, offline=True), *calls[:5])
    assert offline == {name: online[name] for name in calls[:5]}
    assert log == []  # nothing asked of the hub


def test_hubkit_writes_the_layout_huggingface_hub_writes(fake_hub, tmp_path):
    endpoint, _ = fake_hub
    online, _ = _run(_env(tmp_path, endpoint, offline=False), "scope")
    real = Path(online["scope"])  # a snapshot folder written by huggingface_hub
    ours = add_repo(tmp_path / "ours", "org/scope", REPOS["org/scope"])
    name = "layer_0/width_16k/average_l0_9/params.npz"
    assert os.readlink(real / name) == os.readlink(ours / name)  # ../../../../../blobs/<sha256>
    for snapshot in (real, ours):
        repo = snapshot.parents[1]
        assert (repo / "refs" / "main").read_text() == snapshot.name
        assert {"blobs", "refs", "snapshots"} <= {p.name for p in repo.iterdir()}
