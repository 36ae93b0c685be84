"""The LM1B text recipe of CoBit-S LM1B: bert-base-uncased ids packed into 128-token rows, and its decode.

Packing (the official ``build_lm1b_bert_caches.py`` with its benchmark settings):

1. every line is stripped and empty lines are dropped (one line = one sentence);
2. each line becomes bert-base-uncased ids **without** special tokens (no ``[CLS]``/``[SEP]`` per sentence);
3. ``[SEP]`` (102) goes **between** consecutive non-empty examples, never before the first;
4. everything is concatenated into one stream and cut into 128-token rows; the incomplete tail is **dropped**
   (with ``keep_remainder=True`` it is right-padded with ``[PAD]`` instead, the official opt-in).

Rows therefore start and end mid-sentence and carry no padding. The validation split is the **last**
``max(1, round(0.005 * n_rows))`` rows of the train cache (contiguous, Python's ``round``); "test" is the test cache.

Decoding wraps ids modulo the vocabulary (15-bit codes 30522..32767 become ids 0..2245) and calls
``tokenizer.batch_decode(ids, skip_special_tokens=False)``, so ``[SEP]``, ``[PAD]`` and ``[unusedN]`` stay literal.
Space clean-up follows the tokenizer's ``clean_up_tokenization_spaces``, which depends on how it was loaded (the
official run saw ``False``); pass it explicitly to pin it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .bits import InvalidIdPolicy, apply_invalid_id_policy, filter_invalid_ids
from .tokenize import encode_plain

__all__ = [
    "LM1B_BITS_PER_TOKEN",
    "LM1B_SEQUENCE_LENGTH",
    "LM1B_TOKENIZER_NAME",
    "LM1B_VAL_FRACTION",
    "LM1B_VOCAB_SIZE",
    "LM1BPacking",
    "chunk_token_stream",
    "decode_lm1b_ids",
    "lm1b_split_ranges",
    "lm1b_token_stream",
    "pack_lm1b_lines",
]

LM1B_TOKENIZER_NAME = "bert-base-uncased"
LM1B_VOCAB_SIZE = 30522
LM1B_BITS_PER_TOKEN = 15
LM1B_SEQUENCE_LENGTH = 128
LM1B_VAL_FRACTION = 0.005


@dataclass(frozen=True)
class LM1BPacking:
    """Packed LM1B rows and the counters of the official cache meta.

    Attributes:
        rows: ``int64`` ``[n_rows, seq_len]`` token ids.
        total_stream_tokens: length of the concatenated stream (boundary tokens included).
        dropped_tail_tokens: stream tokens after the last full row (0 with ``keep_remainder``).
        padded_tail_tokens: ``[PAD]`` ids added to the last row (only with ``keep_remainder``).
        n_nonempty_lines: lines left after stripping.
        n_nonempty_examples: lines whose ids were non-empty (the ones that entered the stream).
    """

    rows: torch.Tensor
    total_stream_tokens: int
    dropped_tail_tokens: int
    padded_tail_tokens: int
    n_nonempty_lines: int
    n_nonempty_examples: int


def lm1b_token_stream(
    lines: Iterable[str],
    tokenizer,
    *,
    boundary_token_id: int | Literal["sep"] | None = "sep",
    batch_size: int = 2048,
) -> tuple[list[int], int, int]:
    """Concatenate the ids of the non-empty lines, with a boundary token between consecutive examples.

    Args:
        lines: text lines (one sentence each); each is stripped, empty ones are dropped.
        tokenizer: a transformers tokenizer (bert-base-uncased for LM1B); called with ``add_special_tokens=False``.
        boundary_token_id: id inserted between examples. ``"sep"`` (default) means the tokenizer's ``sep_token_id``
            (the official ``boundary_mode="sep"``); ``None`` inserts nothing.
        batch_size: lines tokenised per call (does not change the result).

    Returns:
        ``(stream, n_nonempty_lines, n_nonempty_examples)``.
    """
    if boundary_token_id == "sep":
        boundary_token_id = getattr(tokenizer, "sep_token_id", None)
        if boundary_token_id is None:
            raise ValueError(
                "The tokenizer has no sep_token_id for the [SEP] boundary; pass boundary_token_id explicitly "
                "(or None for no boundary)."
            )
    stripped = [line.strip() for line in lines]
    nonempty = [line for line in stripped if line]
    stream: list[int] = []
    n_examples = 0
    for start in range(0, len(nonempty), max(1, int(batch_size))):
        batch = nonempty[start : start + int(batch_size)]
        for ids in encode_plain(tokenizer, batch):
            if not ids:
                continue
            if n_examples > 0 and boundary_token_id is not None:
                stream.append(int(boundary_token_id))
            stream.extend(int(i) for i in ids)
            n_examples += 1
    return stream, len(nonempty), n_examples


def chunk_token_stream(
    stream: Sequence[int] | torch.Tensor,
    seq_len: int,
    *,
    keep_remainder: bool = False,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Cut a token stream into ``[n_rows, seq_len]`` rows; the tail is dropped, or right-padded with ``pad_id``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}.")
    stream = torch.as_tensor(stream, dtype=torch.long).view(-1)
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


def pack_lm1b_lines(
    lines: Iterable[str],
    tokenizer,
    *,
    seq_len: int = LM1B_SEQUENCE_LENGTH,
    boundary_token_id: int | Literal["sep"] | None = "sep",
    keep_remainder: bool = False,
) -> LM1BPacking:
    """The official LM1B packed-block cache for ``lines`` (see the module docstring for the recipe)."""
    stream, n_lines, n_examples = lm1b_token_stream(lines, tokenizer, boundary_token_id=boundary_token_id)
    rows = chunk_token_stream(stream, seq_len, keep_remainder=keep_remainder, pad_id=tokenizer.pad_token_id)
    covered = rows.shape[0] * seq_len
    return LM1BPacking(
        rows=rows,
        total_stream_tokens=len(stream),
        dropped_tail_tokens=0 if keep_remainder else len(stream) - covered,
        padded_tail_tokens=covered - len(stream) if keep_remainder else 0,
        n_nonempty_lines=n_lines,
        n_nonempty_examples=n_examples,
    )


def lm1b_split_ranges(n_train_rows: int, n_test_rows: int | None = None, *, val_fraction: float = LM1B_VAL_FRACTION):
    """Row ranges ``[start, end)`` of the official LM1B splits.

    Validation is the last ``max(1, round(val_fraction * n_train_rows))`` rows of the train cache; train is the rest;
    test is the whole test cache.

    Returns:
        ``{"train": (0, n_train), "val": (n_train, n_train_rows)}`` plus ``"test": (0, n_test_rows)`` when given.
    """
    n_val = max(1, round(int(n_train_rows) * float(val_fraction)))  # Python round: half to even
    n_train = int(n_train_rows) - n_val
    if n_train <= 0:
        raise ValueError(
            f"{n_train_rows} train rows leave no training rows after carving out {n_val} validation rows; "
            "pack more text or lower val_fraction."
        )
    ranges = {"train": (0, n_train), "val": (n_train, int(n_train_rows))}
    if n_test_rows is not None:
        ranges["test"] = (0, int(n_test_rows))
    return ranges


def decode_lm1b_ids(
    ids: torch.Tensor,
    tokenizer,
    *,
    vocab_size: int | None = None,
    invalid_id_policy: InvalidIdPolicy = "wrap",
    clean_up_tokenization_spaces: bool | None = None,
) -> list[str]:
    """The official LM1B decode: invalid ids wrapped modulo the vocabulary, then ``batch_decode`` keeping specials.

    Args:
        ids: ``[B, T]`` (or ``[T]``) ids, possibly ``>= vocab_size`` (15-bit codes).
        tokenizer: bert-base-uncased (any transformers tokenizer works).
        vocab_size: defaults to ``tokenizer.vocab_size`` (30522), what the official decoder wraps by.
        invalid_id_policy: ``"wrap"`` is the official rule; see :data:`~bitstream_diffusion.codecs.bits.InvalidIdPolicy`.
        clean_up_tokenization_spaces: ``None`` keeps the tokenizer's own setting; ``False`` is the official run.

    Returns:
        ``B`` strings.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"Expected ids [B, T] or [T], got shape {tuple(ids.shape)}.")
    vocab_size = int(tokenizer.vocab_size if vocab_size is None else vocab_size)
    mapped = apply_invalid_id_policy(ids, vocab_size, invalid_id_policy, unk_id=tokenizer.unk_token_id)
    rows = filter_invalid_ids(mapped, vocab_size) if invalid_id_policy == "skip" else mapped.tolist()
    kwargs = (
        {} if clean_up_tokenization_spaces is None else {"clean_up_tokenization_spaces": clean_up_tokenization_spaces}
    )
    return tokenizer.batch_decode(rows, skip_special_tokens=False, **kwargs)
