"""The LM1B text recipe of CoBit-S LM1B: bert-base-uncased ids packed into 128-token rows, and its decode.

Packing (the official LM1B cache builder with the paper's settings; :class:`~.packing.TokenPacker` does the work):

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
official run saw ``False``); pass it explicitly to pin it. See ``docs/design.md#codecs``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from .bits import InvalidIdPolicy, apply_invalid_id_policy, filter_invalid_ids
from .packing import TokenPacker, chunk_token_stream

__all__ = [
    "LM1B_BITS_PER_TOKEN",
    "LM1B_SEQUENCE_LENGTH",
    "LM1B_TOKENIZER_NAME",
    "LM1B_VAL_FRACTION",
    "LM1B_VOCAB_SIZE",
    "LM1BPacking",
    "chunk_token_stream",
    "decode_lm1b_ids",
    "lm1b_packer",
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


def lm1b_packer(
    tokenizer, *, boundary_token_id: int | Literal["sep"] | None = "sep", batch_size: int = 2048
) -> TokenPacker:
    """The LM1B :class:`~.packing.TokenPacker`: stripped lines, ``boundary_token_id`` between consecutive examples.

    Args:
        tokenizer: a transformers tokenizer (bert-base-uncased for LM1B).
        boundary_token_id: id inserted between examples. ``"sep"`` (default) means the tokenizer's ``sep_token_id``
            (the official ``[SEP]`` boundary); ``None`` inserts nothing.
        batch_size: lines tokenised per call (does not change the result).
    """
    if boundary_token_id == "sep":
        boundary_token_id = getattr(tokenizer, "sep_token_id", None)
        if boundary_token_id is None:
            raise ValueError(
                "The tokenizer has no sep_token_id for the [SEP] boundary; pass boundary_token_id explicitly "
                "(or None for no boundary)."
            )
    boundary = "none" if boundary_token_id is None else "between"
    return TokenPacker(tokenizer, boundary=boundary, boundary_token_id=boundary_token_id, batch_size=batch_size)


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
        tokenizer, boundary_token_id, batch_size: see :func:`lm1b_packer`.

    Returns:
        ``(stream, n_nonempty_lines, n_nonempty_examples)``.
    """
    packer = lm1b_packer(tokenizer, boundary_token_id=boundary_token_id, batch_size=batch_size)
    stream = packer.token_stream(lines)
    return stream, packer.stats.nonempty_documents, packer.stats.examples


def pack_lm1b_lines(
    lines: Iterable[str],
    tokenizer,
    *,
    seq_len: int = LM1B_SEQUENCE_LENGTH,
    boundary_token_id: int | Literal["sep"] | None = "sep",
    keep_remainder: bool = False,
    max_rows: int | None = None,
) -> LM1BPacking:
    """The official LM1B packed-block cache for ``lines`` (see the module docstring for the recipe).

    With ``max_rows`` only the first rows are built, reading no more lines than they need (the held-out reference
    of an evaluation).
    """
    packer = lm1b_packer(tokenizer, boundary_token_id=boundary_token_id)
    rows = packer.pack(lines, seq_len, max_rows=max_rows, keep_remainder=keep_remainder, pad_id=tokenizer.pad_token_id)
    stats = packer.stats
    return LM1BPacking(
        rows=rows,
        total_stream_tokens=stats.total_tokens,
        dropped_tail_tokens=stats.dropped_tail_tokens,
        padded_tail_tokens=stats.padded_tail_tokens,
        n_nonempty_lines=stats.nonempty_documents,
        n_nonempty_examples=stats.examples,
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
        invalid_id_policy: ``"wrap"`` is the official rule; see :data:`~.bits.InvalidIdPolicy`.
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
