"""The on-disk cache of prepared token rows: :func:`prepare_token_rows` writes it, :class:`TokenRows` reads it.

Rows are written while the corpus streams (memory stays bounded by one batch of documents) into
``<cache_dir>/<recipe>-<split>-<key>/`` as a raw little-endian ``tokens.uint16`` (or ``.uint32``) file plus
``meta.json``, the layout of the official caches; the model's bits are computed from them on the fly, so the cache
stays ``bits_per_token`` times smaller. The default root is ``bitstream_diffusion.utils.cache.cache_dir("token_rows")``,
under the ``datasets`` cache.

The key is a ``datasets.fingerprint.Hasher`` hash of everything that decides the rows: the source (name, config,
split, revision, or file paths with sizes and modification times), the tokenizer(s) (their serialized backend or
vocabulary, special ids and the code tokenizer's meta) and every recipe setting. A cache is therefore reused exactly
when it would come out the same (pin ``revision`` for hub datasets: an unpinned dataset that changes on the hub keeps
its old cache). A cache is built in a staging folder next to its final place and moved there only when complete, so
a killed preparation never leaves a half-written cache and concurrent processes may race safely. Training reads the
rows through a memory map, so large caches never load into memory.

The OWT recipe has two stages, both cached: the flat GPT-2 stream (:func:`prepare_owt_flat_stream`, the official
"stage 1", which also feeds the code tokenizer's training) and the code rows cut from its windows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..codecs import CodeTokenizer, TokenPacker, fit_code_row, owt_windows
from ..utils.atomic_io import make_staging_dir, replace_directory, write_json_atomic
from ..utils.cache import cache_dir
from .data_recipes import DataRecipe, build_codec, recipe_packer
from .text_sources import EmptyCorpusError, TextSource

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EmptyCorpusError",
    "TokenRows",
    "default_cache_dir",
    "prepare_owt_flat_stream",
    "prepare_token_rows",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """The ``"token_rows"`` cache of :func:`bitstream_diffusion.utils.cache.cache_dir` (under the datasets cache)."""
    return cache_dir("token_rows")


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
                shape = (self.num_rows, self.num_tokens)
                self._ids = np.memmap(self.data_file, dtype=self.dtype, mode="r", shape=shape)
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


def _storage_dtype(max_id_exclusive: int) -> np.dtype:
    return np.dtype("<u2") if max_id_exclusive <= 2**16 else np.dtype("<u4")


def _data_file_name(dtype: np.dtype) -> str:
    return f"tokens.{'uint16' if dtype.itemsize == 2 else 'uint32'}"


def _tokenizer_key(tokenizer) -> str:
    """A ``Hasher`` hash of what decides a tokenizer's ids: its serialized backend (or its vocabulary and lower-casing),
    its special ids and, for the code tokenizer, its meta. Where it was loaded from does not enter."""
    from datasets.fingerprint import Hasher

    identity: dict[str, Any] = {"class": type(tokenizer).__name__}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        identity["backend"] = backend.to_str()
    else:
        identity["vocab"] = sorted(tokenizer.get_vocab().items())
        identity["do_lower_case"] = getattr(tokenizer, "do_lower_case", None)
    for attr in ("sep_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
        identity[attr] = getattr(tokenizer, attr, None)
    if isinstance(tokenizer, CodeTokenizer):
        identity["code_tokenizer_meta"] = tokenizer.meta.to_dict()
    return Hasher.hash(identity)


def _split_tag(source: TextSource) -> str:
    tag = "".join(ch if ch.isalnum() else "_" for ch in (source.split or "train"))
    return tag.strip("_")[:40] or "split"


def _publish(staging: Path, final_dir: Path, meta: dict[str, Any]) -> TokenRows:
    """Write ``meta.json`` (the cache's completion mark) and move the staging folder into place. If another process
    finished the same cache first, theirs is kept (it holds the same rows)."""
    write_json_atomic(staging / "meta.json", meta)
    if (final_dir / "meta.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
    else:
        replace_directory(staging, final_dir)  # also replaces a broken leftover without meta.json
    return TokenRows(final_dir)


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
    return _prepare(source, DataRecipe(recipe="owt"), tokenizer, None, cache_dir=cache_dir, batch_size=batch_size,
                    show_progress=show_progress, stage="flat")


def prepare_token_rows(
    source: TextSource | Any,
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
        source: the raw text: a :class:`TextSource`, or an in-memory ``datasets.Dataset``/``DatasetDict`` (its
            ``"train"`` split and ``"text"`` column; wrap it in ``TextSource(dataset=..., split=..., text_column=...)``
            for others).
        recipe: how text becomes rows.
        tokenizer: the text tokenizer (bert-base-uncased for ``"lm1b"``, GPT-2 for ``"owt"``, anything for
            ``"generic"``).
        code_tokenizer: the OWT code tokenizer (``"owt"`` only).
        cache_dir: root of the caches (:func:`default_cache_dir` by default).
        batch_size: documents tokenised per call (does not change the result).
        show_progress: a progress bar while preparing.

    Returns:
        the :class:`TokenRows` (memory-mapped).

    Raises:
        EmptyCorpusError: the corpus holds no text or not a single full row.
        ValueError: the tokenizer is too wide for ``bits_per_token``, or the recipe does not fit the tokenizer.
        FileNotFoundError: missing data files or dataset.
    """
    build_codec(recipe, tokenizer, code_tokenizer)  # validates the bit width and the recipe before any work
    if not isinstance(source, TextSource):
        source = TextSource(dataset=source)
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
    from datasets.fingerprint import Hasher

    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    packer = recipe_packer(recipe, tokenizer, batch_size=max(1, int(batch_size)))
    payload = {
        "format_version": CACHE_FORMAT_VERSION,
        "stage": stage,
        "recipe": asdict(recipe) if stage == "rows" else {"recipe": "owt-flat"},
        "boundary": [packer.boundary, packer.boundary_token_id],
        "source": source.fingerprint(),
        "tokenizer": _tokenizer_key(tokenizer),
        "code_tokenizer": None if code_tokenizer is None else _tokenizer_key(code_tokenizer),
    }
    if stage == "rows" and recipe.recipe == "owt":
        payload["recipe"].pop("boundary")
    key = Hasher.hash(payload)
    final_dir = cache_root / f"{'owt-flat' if stage == 'flat' else recipe.recipe}-{_split_tag(source)}-{key}"
    if (final_dir / "meta.json").is_file():
        rows = TokenRows(final_dir)
        logger.info("Reusing the prepared cache %s (%d rows).", final_dir, len(rows))
        return rows
    if stage == "rows" and recipe.recipe == "owt":
        flat = prepare_owt_flat_stream(source, tokenizer, cache_dir=cache_root, batch_size=batch_size,
                                       show_progress=show_progress)
        return _prepare_owt_rows(flat, recipe, code_tokenizer, final_dir, payload, key)
    num_tokens = 1 if stage == "flat" else int(recipe.num_tokens)
    # the flat stream holds GPT-2 ids only; rows may hold any id the tokenizer produces
    vocab = len(tokenizer) if stage == "flat" else max(int(getattr(tokenizer, "vocab_size", 0) or 0), len(tokenizer))
    meta = {"format_version": CACHE_FORMAT_VERSION, "stage": stage,
            "recipe": recipe.recipe if stage == "rows" else "owt-flat", "source": source.describe(),
            "fingerprint": key, "fingerprint_inputs": payload}
    return _write_stream_rows(source, packer, num_tokens, _storage_dtype(vocab), final_dir, meta,
                              show_progress=show_progress)


def _write_stream_rows(
    source: TextSource,
    packer: TokenPacker,
    num_tokens: int,
    dtype: np.dtype,
    final_dir: Path,
    meta: dict[str, Any],
    *,
    show_progress: bool,
) -> TokenRows:
    """Stream the source through the packer into a staging folder, then publish it."""
    from tqdm.auto import tqdm

    from .reporting import progress_bars_enabled

    started = time.time()
    staging = make_staging_dir(final_dir)
    try:
        writer = _RowWriter(staging / _data_file_name(dtype), num_tokens, dtype)
        texts = tqdm(source.iter_texts(), total=source.max_documents, desc=f"Preparing {source.describe()}",
                     unit="doc", disable=not (show_progress and progress_bars_enabled()), mininterval=2.0)
        for rows in packer.iter_rows(texts, num_tokens):
            writer.write(rows)
        texts.close()
        writer.close()
        stats = packer.stats
        if stats.examples == 0:
            raise EmptyCorpusError(
                f"The corpus {source.describe()} holds no text ({stats.documents} documents, all empty): check "
                "the data files, the split and --text_column."
            )
        if writer.num_rows == 0:
            raise EmptyCorpusError(
                f"The corpus {source.describe()} gives {stats.total_tokens} tokens, fewer than one row of "
                f"{num_tokens} tokens: add text or lower --num_tokens."
            )
        meta = {
            **meta,
            "num_rows": writer.num_rows,
            "num_tokens": num_tokens,
            "dtype": dtype.str,
            "data_file": _data_file_name(dtype),
            "total_stream_tokens": stats.total_tokens,
            "dropped_tail_tokens": stats.dropped_tail_tokens,
            "num_documents": stats.documents,
            "num_nonempty_documents": stats.nonempty_documents,
            "num_examples": stats.examples,
            "boundary": [packer.boundary, packer.boundary_token_id],
            "seconds": round(time.time() - started, 3),
        }
        rows = _publish(staging, final_dir, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Prepared %s: %d rows in %.1fs.", final_dir, len(rows), time.time() - started)
    return rows


def _prepare_owt_rows(
    flat: TokenRows,
    recipe: DataRecipe,
    code_tokenizer: CodeTokenizer,
    final_dir: Path,
    payload: dict[str, Any],
    key: str,
    *,
    windows_per_batch: int = 256,
) -> TokenRows:
    """Stage 2 of the OWT recipe: windows of the flat stream -> fixed code rows (``encode_windows``, plus a count of
    the windows that needed more codes than a row holds)."""
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
    num_tokens = int(recipe.num_tokens)
    dtype = _storage_dtype(code_tokenizer.vocab_size)
    staging = make_staging_dir(final_dir)
    try:
        writer = _RowWriter(staging / _data_file_name(dtype), num_tokens, dtype)
        n_truncated = 0
        for start in range(0, n_windows, windows_per_batch):
            stop = min(n_windows, start + windows_per_batch)
            windows = owt_windows(stream[start * content : stop * content], base_seq_len=base,
                                  bos_token_id=meta_code.bos_token_id_gpt2, eos_token_id=meta_code.eos_token_id_gpt2)
            codes = code_tokenizer.encode_gpt2_ids(windows)
            n_truncated += sum(len(c) + 1 > num_tokens for c in codes)
            pad, eoseq = code_tokenizer.pad_id, code_tokenizer.eoseq_id
            writer.write(np.asarray([fit_code_row(c, num_tokens, pad_id=pad, eoseq_id=eoseq) for c in codes]))
        writer.close()
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "stage": "rows",
            "recipe": "owt",
            "num_rows": writer.num_rows,
            "num_tokens": num_tokens,
            "dtype": dtype.str,
            "data_file": _data_file_name(dtype),
            "base_seq_len": base,
            "num_windows": n_windows,
            "num_truncated_windows": n_truncated,
            "dropped_tail_tokens": int(stream.size - n_windows * content),
            "flat_stream": str(flat.path),
            "flat_stream_tokens": int(stream.size),
            "num_documents": flat.meta.get("num_documents"),
            "num_nonempty_documents": flat.meta.get("num_nonempty_documents"),
            "source": flat.meta.get("source"),
            "fingerprint": key,
            "fingerprint_inputs": payload,
            "seconds": round(time.time() - started, 3),
        }
        rows = _publish(staging, final_dir, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if n_truncated:
        logger.warning(
            "%d of %d windows needed more than %d codes and were cut (lossy, as the official recipe); a code tokenizer "
            "with more merges avoids it.", n_truncated, n_windows, num_tokens - 1,
        )
    return rows
