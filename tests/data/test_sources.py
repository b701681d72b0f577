"""Text sources: file formats, HF datasets on disk, the embedded corpus, spec parsing, errors."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsecircuits.data.sources import (
    EmbeddedSource,
    FileSource,
    HFDatasetSource,
    TextSource,
    make_source,
)
from sparsecircuits.errors import SparseCircuitsError


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))


def test_txt_is_one_document_unless_paragraph_split(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first para\nstill first\n\n  \nsecond para\n\n\nthird")
    assert list(FileSource(path).iter_texts()) == [path.read_text()]
    paragraphs = list(FileSource(path, split="paragraph").iter_texts())
    assert paragraphs == ["first para\nstill first", "second para", "third"]


def test_jsonl_and_gzip(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["one", "", "two"])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"body": "three"}) + "\n\n")
    assert list(FileSource(tmp_path / "a.jsonl").iter_texts()) == ["one", "two"]
    assert list(FileSource(tmp_path / "b.jsonl.gz", text_field="body").iter_texts()) == ["three"]


def test_parquet_column(tmp_path):
    table = pa.table({"content": [f"doc {i}" for i in range(2500)], "n": list(range(2500))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=700)
    texts = list(FileSource(tmp_path / "a.parquet", text_field="content").iter_texts())
    assert texts == [f"doc {i}" for i in range(2500)]
    with pytest.raises(SparseCircuitsError, match="no column 'text'.*content"):
        list(FileSource(tmp_path / "a.parquet").iter_texts())


def test_directory_and_glob_read_sorted_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.txt").write_text("A")
    write_jsonl(tmp_path / "sub" / "c.jsonl", ["C1", "C2"])
    (tmp_path / "notes.md").write_text("ignored in a folder")
    assert list(FileSource(tmp_path).iter_texts()) == ["A", "B", "C1", "C2"]
    assert list(FileSource(str(tmp_path / "*.txt")).iter_texts()) == ["A", "B"]
    source = FileSource(tmp_path)
    assert list(source.iter_texts()) == list(source.iter_texts())  # re-iterable
    assert isinstance(source, TextSource)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "e.txt").write_text("  \n\n "), "yielded no text"),
        (lambda p: (p / "e.jsonl").write_text(""), "yielded no text"),
        (
            lambda p: (p / "e.jsonl").write_text('{"text": "x"}\n{oops\n'),
            r"e.jsonl:2 is not valid JSON",
        ),
        (lambda p: (p / "e.jsonl").write_text('{"body": "x"}\n'), "no field 'text'"),
        (lambda p: (p / "e.jsonl").write_text('{"text": 3}\n'), "value of type int"),
        (lambda p: (p / "e.parquet").write_text("not parquet"), "cannot read parquet"),
        (lambda p: (p / "e.txt").write_bytes(b"\xff\xfe\xfa"), "use UTF-8"),
    ],
)
def test_bad_or_empty_files_raise(tmp_path, setup, message):
    setup(tmp_path)
    (path,) = list(tmp_path.iterdir())
    with pytest.raises(SparseCircuitsError, match=message):
        list(FileSource(path).iter_texts())


def test_missing_paths_and_types(tmp_path):
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        FileSource(tmp_path / "nope.txt")
    with pytest.raises(SparseCircuitsError, match="no files match"):
        FileSource(str(tmp_path / "*.jsonl"))
    with pytest.raises(SparseCircuitsError, match="holds no"):
        FileSource(tmp_path)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SparseCircuitsError, match="unsupported file type"):
        FileSource(tmp_path / "x.csv")


def test_hf_saved_dataset_and_parquet(tmp_path):
    import datasets

    texts = [f"document number {i}" for i in range(30)]
    dataset = datasets.Dataset.from_dict({"text": texts, "label": list(range(30))})
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "data.parquet"))
    datasets.DatasetDict({"train": dataset, "validation": dataset.select(range(3))}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert list(HFDatasetSource(str(tmp_path / "saved")).iter_texts()) == texts
    assert list(HFDatasetSource(str(tmp_path / "data.parquet")).iter_texts()) == texts
    assert (
        list(HFDatasetSource(str(tmp_path / "data.parquet"), streaming=False).iter_texts()) == texts
    )
    assert (
        list(HFDatasetSource(str(tmp_path / "dict"), split="validation").iter_texts()) == texts[:3]
    )
    with pytest.raises(SparseCircuitsError, match="no split 'test'"):
        list(HFDatasetSource(str(tmp_path / "dict"), split="test").iter_texts())
    with pytest.raises(SparseCircuitsError, match="no column 'body'"):
        list(HFDatasetSource(str(tmp_path / "saved"), text_field="body").iter_texts())
    # a folder of data files goes through load_dataset's folder builder
    (tmp_path / "folder").mkdir()
    dataset.to_json(str(tmp_path / "folder" / "train.jsonl"))
    assert list(HFDatasetSource(str(tmp_path / "folder")).iter_texts()) == texts


def test_hf_hub_id_offline_raises_clear_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SparseCircuitsError, match="cannot load dataset.*someone/no-such-dataset"):
        list(HFDatasetSource("someone/no-such-dataset").iter_texts())


def test_embedded_source_reads_jsonl_or_txt(tmp_path):
    with pytest.raises(SparseCircuitsError, match="no heldout.jsonl or heldout.txt"):
        list(EmbeddedSource(tmp_path).iter_texts())
    (tmp_path / "heldout.txt").write_text("alpha\n\nbeta")
    assert list(EmbeddedSource(tmp_path).iter_texts()) == ["alpha", "beta"]
    write_jsonl(tmp_path / "heldout.jsonl", ["gamma"])
    assert list(EmbeddedSource(tmp_path).iter_texts()) == ["gamma"]


def test_embedded_source_default_folder_is_usable_or_clear():
    try:
        texts = EmbeddedSource().iter_texts()
        first = next(texts)
    except SparseCircuitsError as exc:
        assert "embedded" in str(exc)
    else:
        assert isinstance(first, str) and first.strip()


def test_make_source_parses_specs(tmp_path):
    import datasets

    assert isinstance(make_source("embedded"), EmbeddedSource)
    hf = make_source("hf:org/name")
    assert isinstance(hf, HFDatasetSource) and (hf.name_or_path, hf.split) == ("org/name", "train")
    hf = make_source("hf:wikitext:validation")
    assert (hf.name_or_path, hf.split, hf.config) == ("wikitext", "validation", None)
    hf = make_source("hf:wikitext:wikitext-2-raw-v1:test")
    assert (hf.name_or_path, hf.config, hf.split) == ("wikitext", "wikitext-2-raw-v1", "test")
    for bad in ("hf:", "hf:a::b", "hf:a:b:c:d"):
        with pytest.raises(SparseCircuitsError, match="cannot parse data spec"):
            make_source(bad)
    (tmp_path / "a.txt").write_text("text")
    assert isinstance(make_source(str(tmp_path / "a.txt")), FileSource)
    assert isinstance(make_source(str(tmp_path / "*.txt")), FileSource)
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "saved"))
    assert isinstance(make_source(str(tmp_path / "saved")), HFDatasetSource)
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        make_source(str(tmp_path / "missing"))
