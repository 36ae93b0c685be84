"""The one streaming packer of CoBit's data recipes: text documents -> one token stream -> fixed rows of token ids.

Every recipe builds its rows the same way, and only three choices differ:

1. ``normalize``: how a document is cleaned before tokenisation (LM1B and generic: ``str.strip``; OWT: line endings
   unified, then stripped). Documents that are empty after it are dropped; ``None`` counts as empty.
2. the tokenizer, always called without special tokens, padding or truncation (:func:`~.tokenize.encode_plain`).
   A document whose ids are empty is dropped too; the others are the stream's *examples*.
3. ``boundary``: ``"between"`` puts ``boundary_token_id`` between consecutive examples, never before the first (LM1B's
   ``[SEP]``); ``"after"`` appends it to every example (OWT's EOS); ``"none"`` concatenates the examples as they are.

The stream is then cut into rows of ``row_length`` tokens; the incomplete tail is dropped (or, with
``keep_remainder``, right-padded). Rows start and end anywhere in a document and carry no padding, so a row is a
window on the stream, not a document. The packer reads documents in batches and keeps only the unfinished row in
memory, so a corpus of any size streams through it; :attr:`TokenPacker.stats` holds the counters of the last pass.

See ``docs/design.md#codecs`` for the recipes built on it (:func:`~.lm1b.pack_lm1b_lines`,
:func:`~.owt.pack_owt_windows`, and the training cache).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from .tokenize import encode_plain

__all__ = [
    "BOUNDARY_MODES",
    "BoundaryMode",
    "PackingStats",
    "TokenPacker",
    "chunk_token_stream",
]

BoundaryMode = Literal["between", "after", "none"]
BOUNDARY_MODES: tuple[str, ...] = get_args(BoundaryMode)


@dataclass
class PackingStats:
    """Counters of one pass of a :class:`TokenPacker` (the fields of the official cache metadata).

    Attributes:
        documents: documents read.
        nonempty_documents: documents left after ``normalize`` (LM1B's "non-empty lines").
        examples: documents whose ids were non-empty: the ones that entered the stream.
        total_tokens: length of the stream, boundary tokens included.
        dropped_tail_tokens: stream tokens after the last full row (0 with ``keep_remainder``).
        padded_tail_tokens: pad ids added to the last row (only with ``keep_remainder``).
    """

    documents: int = 0
    nonempty_documents: int = 0
    examples: int = 0
    total_tokens: int = 0
    dropped_tail_tokens: int = 0
    padded_tail_tokens: int = 0


def chunk_token_stream(
    stream: Sequence[int] | torch.Tensor | np.ndarray,
    seq_len: int,
    *,
    keep_remainder: bool = False,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Cut a token stream into ``int64`` ``[n_rows, seq_len]`` rows; the tail is dropped, or right-padded with
    ``pad_id`` when ``keep_remainder`` is set."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    stream = torch.as_tensor(np.asarray(stream, dtype=np.int64) if not isinstance(stream, torch.Tensor) else stream)
    stream = stream.long().view(-1)
    n_full = stream.numel() // seq_len
    rows = stream[: n_full * seq_len].view(n_full, seq_len)
    tail = stream[n_full * seq_len :]
    if keep_remainder and tail.numel() > 0:
        if pad_id is None:
            raise ValueError("keep_remainder=True needs a pad_id to right-pad the last row.")
        last = torch.full((1, seq_len), int(pad_id), dtype=torch.long)
        last[0, : tail.numel()] = tail
        rows = torch.cat([rows, last])
    return rows


class TokenPacker:
    """Documents -> token stream -> fixed rows, in bounded memory (see the module docstring for the rules).

    Args:
        tokenizer: any transformers tokenizer; called with ``add_special_tokens=False``.
        boundary: ``"between"``, ``"after"`` or ``"none"``.
        boundary_token_id: the boundary id (required unless ``boundary="none"``).
        normalize: the document clean-up (``str.strip`` by default).
        batch_size: documents tokenised per call (does not change the result).

    A packer is cheap; each call of :meth:`stream`, :meth:`iter_rows` or :meth:`pack` is one pass over its documents
    and resets :attr:`stats`.
    """

    def __init__(
        self,
        tokenizer,
        *,
        boundary: BoundaryMode = "none",
        boundary_token_id: int | None = None,
        normalize: Callable[[str], str] = str.strip,
        batch_size: int = 1000,
    ):
        if boundary not in BOUNDARY_MODES:
            raise ValueError(f"boundary must be one of {list(BOUNDARY_MODES)}, got {boundary!r}.")
        if boundary != "none" and boundary_token_id is None:
            raise ValueError(
                f"boundary={boundary!r} needs a boundary_token_id (the tokenizer's [SEP] or EOS id); pass it, or use "
                "boundary='none'."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.tokenizer = tokenizer
        self.boundary: str = boundary
        self.boundary_token_id: int | None = None if boundary == "none" else int(boundary_token_id)
        self.normalize = normalize
        self.batch_size = int(batch_size)
        self.stats = PackingStats()

    def __repr__(self) -> str:
        return (
            f"TokenPacker(boundary={self.boundary!r}, boundary_token_id={self.boundary_token_id}, "
            f"normalize={getattr(self.normalize, '__name__', self.normalize)!r})"
        )

    def stream(self, documents: Iterable[str | None]) -> Iterator[np.ndarray]:
        """The token stream of ``documents``, as consecutive ``int64`` pieces (one per batch of documents that gave
        tokens). Concatenated, they are the whole stream."""
        self.stats = stats = PackingStats()
        documents = iter(documents)
        while batch := list(itertools.islice(documents, self.batch_size)):
            cleaned = [self.normalize("" if text is None else text) for text in batch]
            nonempty = [text for text in cleaned if text]
            stats.documents += len(batch)
            stats.nonempty_documents += len(nonempty)
            pieces: list[list[int]] = []
            for ids in encode_plain(self.tokenizer, nonempty):
                if not ids:
                    continue
                if self.boundary == "between" and stats.examples > 0:
                    pieces.append([self.boundary_token_id])
                pieces.append(list(ids))
                if self.boundary == "after":
                    pieces.append([self.boundary_token_id])
                stats.examples += 1
            if pieces:
                size = sum(len(piece) for piece in pieces)
                stats.total_tokens += size
                yield np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=size)

    def iter_rows(
        self, documents: Iterable[str | None], row_length: int, *, max_rows: int | None = None
    ) -> Iterator[np.ndarray]:
        """Full rows of the stream as ``int64`` ``[n, row_length]`` blocks, in order, while the documents stream.

        The unfinished tail is counted in ``stats.dropped_tail_tokens``. With ``max_rows`` reading stops as soon as
        that many rows are out (the last block is cut), so only the documents those rows need are read.
        """
        row_length = int(row_length)
        if row_length < 1:
            raise ValueError(f"row_length must be positive, got {row_length}.")
        if max_rows is not None and int(max_rows) < 0:
            raise ValueError(f"max_rows must be non-negative, got {max_rows}.")
        pending = np.zeros(0, dtype=np.int64)
        emitted = 0
        pieces = self.stream(documents)
        for piece in pieces:
            joined = np.concatenate([pending, piece]) if pending.size else piece
            n_rows = joined.size // row_length
            if max_rows is not None:
                n_rows = min(n_rows, int(max_rows) - emitted)
            pending = joined[n_rows * row_length :].copy()  # let the batch's array go
            if n_rows:
                emitted += n_rows
                yield joined[: n_rows * row_length].reshape(n_rows, row_length)
            if max_rows is not None and emitted >= int(max_rows):
                pieces.close()
                break
        self.stats.dropped_tail_tokens = int(pending.size)

    def pack(
        self,
        documents: Iterable[str | None],
        row_length: int,
        *,
        max_rows: int | None = None,
        keep_remainder: bool = False,
        pad_id: int | None = None,
    ) -> torch.Tensor:
        """All rows at once: ``int64`` ``[n_rows, row_length]`` (at most ``max_rows``).

        With ``keep_remainder`` the tail becomes a last row right-padded with ``pad_id`` (counted in
        ``stats.padded_tail_tokens``) instead of being dropped.
        """
        if keep_remainder and pad_id is None:
            raise ValueError("keep_remainder=True needs a pad_id to right-pad the last row.")
        if keep_remainder and max_rows is not None:
            raise ValueError("keep_remainder and max_rows cannot be combined: the padded tail is the stream's end.")
        if keep_remainder:
            stream = np.concatenate([np.zeros(0, dtype=np.int64), *self.stream(documents)])
            rows = chunk_token_stream(stream, int(row_length), keep_remainder=True, pad_id=pad_id)
            self.stats.padded_tail_tokens = rows.numel() - int(stream.size)
            return rows
        blocks = list(self.iter_rows(documents, row_length, max_rows=max_rows))
        if not blocks:
            return torch.empty((0, int(row_length)), dtype=torch.long)
        return torch.from_numpy(np.concatenate(blocks))

    def token_stream(self, documents: Iterable[str | None]) -> list[int]:
        """The whole stream as one list of ids (small inputs; use :meth:`stream` or :meth:`iter_rows` for corpora)."""
        return [int(token) for piece in self.stream(documents) for token in piece]
