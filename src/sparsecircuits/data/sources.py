"""Text sources: where the documents that feed harvesting come from (deterministic, re-iterable;
formats in docs/internals.md)."""

from __future__ import annotations

import glob
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from sparsecircuits.errors import SparseCircuitsError

__all__ = [
    "EmbeddedSource",
    "FileSource",
    "HFDatasetSource",
    "TextSource",
    "make_source",
]

_TEXT_SUFFIXES = (".txt", ".txt.gz")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_PARQUET_SUFFIXES = (".parquet",)
_SUPPORTED = _TEXT_SUFFIXES + _JSONL_SUFFIXES + _PARQUET_SUFFIXES
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@runtime_checkable
class TextSource(Protocol):
    """Anything with a deterministic, re-iterable stream of documents.

    Built-in sources also carry a `name` used in error messages.
    """

    def iter_texts(self) -> Iterator[str]:
        """Return a fresh iterator over the documents, each a non-empty `str`."""
        ...


def _nonempty(texts: Iterable[Any], name: str, hint: str) -> Iterator[str]:
    """Yield the non-blank strings of `texts`; raise if there were none at all."""
    n_yielded = 0
    for text in texts:
        if text is None:
            continue
        if not isinstance(text, str):
            raise SparseCircuitsError(
                f"dataset {name} holds a value of type {type(text).__name__} where text was expected; "
                "point text_field at a string column"
            )
        if text.strip():
            n_yielded += 1
            yield text
    if n_yielded == 0:
        raise SparseCircuitsError(f"dataset {name} yielded no text; {hint}")


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _resolve_files(path_or_glob: str | Path) -> list[Path]:
    """Return the supported files named by a file, a directory (recursive) or a glob, sorted."""
    text = str(path_or_glob)
    path = Path(text).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(_SUPPORTED))
        if not files:
            raise SparseCircuitsError(
                f"directory {path} holds no {'/'.join(_SUPPORTED)} files; point at a folder of text data"
            )
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise SparseCircuitsError(f"no files match {text}; check the pattern")
    else:
        raise SparseCircuitsError(
            f"data path {text} does not exist; pass a file, a folder or a glob"
        )
    for file in files:
        if not file.name.endswith(_SUPPORTED):
            raise SparseCircuitsError(
                f"cannot read {file}: unsupported file type; use {', '.join(_SUPPORTED)}"
            )
    return files


class FileSource:
    """Documents from local ``.txt`` / ``.jsonl`` / ``.parquet`` files: a file, a directory (searched
    recursively) or a glob, read in sorted path order. `text_field` names the JSON key or parquet
    column; `split` (``.txt`` only) makes each file (``"document"``) or paragraph one document."""

    def __init__(
        self, path_or_glob: str | Path, text_field: str = "text", split: str = "document"
    ) -> None:
        if split not in ("document", "paragraph"):
            raise SparseCircuitsError(f"split must be 'document' or 'paragraph', not {split!r}")
        self.files = _resolve_files(path_or_glob)
        self.text_field = text_field
        self.split = split
        self.name = str(path_or_glob)

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, {len(self.files)} file(s))"

    def iter_texts(self) -> Iterator[str]:
        """Return an iterator over the documents of every file, in sorted file order."""
        return _nonempty(
            self._raw_texts(),
            self.name,
            f"check that the files hold text (field/column {self.text_field!r})",
        )

    def _raw_texts(self) -> Iterator[Any]:
        for file in self.files:
            if file.name.endswith(_TEXT_SUFFIXES):
                yield from self._txt(file)
            elif file.name.endswith(_JSONL_SUFFIXES):
                yield from self._jsonl(file)
            else:
                yield from self._parquet(file)

    def _txt(self, file: Path) -> Iterator[str]:
        try:
            with _open_text(file) as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise SparseCircuitsError(f"cannot read {file}: {exc}; use UTF-8 text") from None
        if self.split == "paragraph":
            yield from _PARAGRAPH_BREAK.split(text)
        else:
            yield text

    def _jsonl(self, file: Path) -> Iterator[Any]:
        try:
            with _open_text(file) as handle:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SparseCircuitsError(
                            f"{file}:{line_number} is not valid JSON ({exc.msg}); fix or remove that line"
                        ) from None
                    if not isinstance(record, dict) or self.text_field not in record:
                        keys = (
                            ", ".join(record) if isinstance(record, dict) else type(record).__name__
                        )
                        raise SparseCircuitsError(
                            f"{file}:{line_number} has no field {self.text_field!r} (found: {keys}); "
                            "set text_field"
                        )
                    yield record[self.text_field]
        except (OSError, UnicodeDecodeError) as exc:
            raise SparseCircuitsError(f"cannot read {file}: {exc}; use UTF-8 JSON lines") from None

    def _parquet(self, file: Path) -> Iterator[Any]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises several unrelated types for bad files
            raise SparseCircuitsError(f"cannot read parquet file {file}: {exc}") from None
        columns = parquet.schema_arrow.names
        if self.text_field not in columns:
            raise SparseCircuitsError(
                f"{file} has no column {self.text_field!r} (found: {', '.join(columns)}); set text_field"
            )
        for batch in parquet.iter_batches(batch_size=1024, columns=[self.text_field]):
            yield from batch.column(0).to_pylist()


_LOCAL_BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".txt": "text",
    ".csv": "csv",
}


class HFDatasetSource:
    """Documents from a Hugging Face `datasets` dataset: a hub id (needs network access), a local
    data folder or file, or a `save_to_disk` folder; `config` is its configuration name."""

    def __init__(
        self,
        name_or_path: str,
        split: str = "train",
        text_field: str = "text",
        streaming: bool = True,
        config: str | None = None,
    ) -> None:
        self.name_or_path = name_or_path
        self.split = split
        self.text_field = text_field
        self.streaming = streaming
        self.config = config
        self.name = name_or_path if split == "train" else f"{name_or_path}:{split}"

    def __repr__(self) -> str:
        return f"HFDatasetSource({self.name_or_path!r}, split={self.split!r})"

    def iter_texts(self) -> Iterator[str]:
        """Return an iterator over the `text_field` values of the split, in stored order."""
        return _nonempty(
            self._raw_texts(), self.name, f"check the split ({self.split!r}) and text_field"
        )

    def _raw_texts(self) -> Iterator[Any]:
        dataset = self._load()
        columns = getattr(dataset, "column_names", None)
        if columns is not None and self.text_field not in columns:
            raise SparseCircuitsError(
                f"dataset {self.name} has no column {self.text_field!r} "
                f"(found: {', '.join(columns)}); set text_field"
            )
        try:
            if hasattr(dataset, "iter"):
                for batch in dataset.iter(batch_size=1000):
                    if self.text_field not in batch:
                        raise SparseCircuitsError(
                            f"dataset {self.name} has no column {self.text_field!r} "
                            f"(found: {', '.join(batch)}); set text_field"
                        )
                    yield from batch[self.text_field]
            else:
                for record in dataset:
                    yield record.get(self.text_field)
        except SparseCircuitsError:
            raise
        except Exception as exc:  # streaming datasets fail lazily, with any error type
            raise SparseCircuitsError(
                f"reading dataset {self.name} failed: {_first_line(exc)}"
            ) from None

    def _load(self) -> Any:
        import datasets

        path = Path(self.name_or_path).expanduser()
        try:
            if path.is_dir() and _is_saved_dataset(path):
                loaded = datasets.load_from_disk(str(path))
                if isinstance(loaded, datasets.DatasetDict):
                    if self.split not in loaded:
                        raise SparseCircuitsError(
                            f"dataset {path} has no split {self.split!r} "
                            f"(found: {', '.join(loaded)}); choose one of those"
                        )
                    loaded = loaded[self.split]
                return loaded
            if path.is_file():
                suffix = path.suffix if path.suffix != ".gz" else Path(path.stem).suffix
                builder = _LOCAL_BUILDERS.get(suffix)
                if builder is None:
                    raise SparseCircuitsError(
                        f"cannot load {path} with datasets: unsupported type; "
                        f"use {', '.join(_LOCAL_BUILDERS)}"
                    )
                return datasets.load_dataset(
                    builder, data_files=str(path), split="train", streaming=self.streaming
                )
            return datasets.load_dataset(
                str(path) if path.is_dir() else self.name_or_path,
                self.config,
                split=self.split,
                streaming=self.streaming,
            )
        except SparseCircuitsError:
            raise
        except Exception as exc:  # datasets raises many types (ConnectionError, ValueError, ...)
            where = "local dataset" if path.exists() else "dataset (Hugging Face hub id)"
            raise SparseCircuitsError(
                f"cannot load {where} {self.name_or_path!r}: {_first_line(exc)}; "
                "check the name, split and network access, or pass a local path"
            ) from None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EmbeddedSource:
    """The held-out corpus shipped with the embedded model: ``heldout.jsonl`` (field ``text``) or
    ``heldout.txt`` (paragraphs) from `folder`, by default `models.embedded.embedded_dir()`."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.name = "embedded"

    def __repr__(self) -> str:
        return f"EmbeddedSource({str(self.folder) if self.folder else 'embedded'!r})"

    def _file_source(self) -> FileSource:
        folder = self.folder
        if folder is None:
            try:
                from sparsecircuits.models.embedded import embedded_dir
            except ImportError:
                raise SparseCircuitsError(
                    "the embedded model is not installed in this copy of sparsecircuits; "
                    "pass a data path instead of 'embedded'"
                ) from None
            folder = Path(embedded_dir())
        for name, split in (("heldout.jsonl", "document"), ("heldout.txt", "paragraph")):
            candidate = folder / name
            if candidate.is_file():
                return FileSource(candidate, split=split)
        raise SparseCircuitsError(
            f"the embedded model folder {folder} has no heldout.jsonl or heldout.txt; "
            "reinstall sparsecircuits or pass a data path"
        )

    def iter_texts(self) -> Iterator[str]:
        """Return an iterator over the held-out documents."""
        return self._file_source().iter_texts()


def make_source(spec: str | Path) -> TextSource:
    """Return the `TextSource` a command-line data spec names: ``"embedded"`` (`EmbeddedSource`),
    ``"hf:NAME[:CONFIG][:SPLIT]"`` or a ``save_to_disk`` folder (`HFDatasetSource`), any other file,
    folder or glob (`FileSource`)."""
    text = str(spec)
    if text == "embedded":
        return EmbeddedSource()
    if text.startswith("hf:"):
        parts = text[3:].split(":")
        if not parts[0] or len(parts) > 3 or not all(parts):
            raise SparseCircuitsError(
                f"cannot parse data spec {text!r}; write hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"
            )
        if len(parts) == 1:
            return HFDatasetSource(parts[0])
        if len(parts) == 2:
            return HFDatasetSource(parts[0], split=parts[1])
        return HFDatasetSource(parts[0], config=parts[1], split=parts[2])
    path = Path(text).expanduser()
    if path.is_dir() and _is_saved_dataset(path):
        return HFDatasetSource(str(path))
    return FileSource(text)
