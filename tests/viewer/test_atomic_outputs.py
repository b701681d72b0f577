"""What the viewer reads is never half-written: `trace --out`'s graph.json and `dashboards`'
folder survive a writer that dies mid-write (simulated: the write stops halfway and raises)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sparsecircuits.circuits.graph.neuronpedia import load_graph, save_graph
from sparsecircuits.interpret import load_dashboards, save_dashboards
from sparsecircuits.interpret import store as store_module


class SimulatedKill(BaseException):
    """The writing process dying: nothing after the half-written bytes runs."""


def die_halfway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every `Path.write_text` / `Path.write_bytes` write half its data, then die."""

    def write_bytes(self: Path, data: bytes) -> int:
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise SimulatedKill

    def write_text(self: Path, text: str, *args: object, **kwargs: object) -> int:
        return write_bytes(self, text.encode())

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", write_text)


def visible_json(folder: Path) -> list[Path]:
    """The .json files a viewer would list in `folder`."""
    return sorted(folder.glob("*.json"))


def test_graph_json_is_old_or_new_never_half(viewer_data, tmp_path, monkeypatch):
    graph = load_graph(viewer_data.dir / "graph.json")
    out = tmp_path / "trace"
    save_graph(graph, out / "graph.json")
    before = (out / "graph.json").read_bytes()
    changed = dataclasses.replace(graph, metadata=dataclasses.replace(graph.metadata, slug="b"))
    with monkeypatch.context() as patch:
        die_halfway(patch)
        with pytest.raises(SimulatedKill):
            save_graph(changed, out / "graph.json")
    assert (out / "graph.json").read_bytes() == before
    assert visible_json(out) == [out / "graph.json"]
    with monkeypatch.context() as patch:  # a first write that dies leaves no graph.json at all
        die_halfway(patch)
        with pytest.raises(SimulatedKill):
            save_graph(changed, tmp_path / "fresh" / "graph.json")
    assert visible_json(tmp_path / "fresh") == []
    save_graph(changed, out / "graph.json")
    assert json.loads((out / "graph.json").read_text())["metadata"]["slug"] == "b"


def features(folder: Path) -> dict:
    store = load_dashboards(folder)
    return {
        name: [store.feature(name, i) for i in range(store.info(name)["d_sae"])]
        for name in store.names
    }


@pytest.mark.parametrize("where", ["index", "tensors"])
def test_dashboards_stay_whole_when_a_rewrite_dies(viewer_data, tmp_path, monkeypatch, where):
    folder = save_dashboards(viewer_data.dashboards, tmp_path / "dash")
    want = features(folder)
    subset = {"layer1": viewer_data.dashboards["layer1"]}  # another set, another index
    with monkeypatch.context() as patch:
        if where == "index":
            die_halfway(patch)
        else:  # the second dictionary's tensor file dies halfway through
            calls = []
            original = store_module.save_file

            def save_file(tensors, path):
                calls.append(path)
                original(tensors, path)
                if len(calls) == 1:
                    data = Path(path).read_bytes()
                    Path(path).unlink()
                    with open(path, "wb") as fh:
                        fh.write(data[: len(data) // 2])
                    raise SimulatedKill

            patch.setattr(store_module, "save_file", save_file)
        with pytest.raises(SimulatedKill):
            save_dashboards(subset, folder)
    assert features(folder) == want  # every latent of the earlier set still reads
    save_dashboards(subset, folder)
    assert list(features(folder)) == ["layer1"]
    assert len(list(folder.glob("*.safetensors"))) == 1  # the replaced files are gone
