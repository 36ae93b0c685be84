"""The held-out reference of the evaluation protocol: real rows, turned into bits and decoded like generated samples.

The reference answers "what GenPPL and token entropy does real data get under the same rules?". Its rows are the
first ``num_rows`` rows of a held-out text source, built as the training rows are built (``packing="packed"``):

* LM1B: lines BERT-tokenised and joined by ``[SEP]`` into one stream, cut into blocks of the codec's row length;
* OWT: documents joined with EOS into the flat GPT-2 stream, cut into ``[EOS] + ids + [EOS]`` windows, re-coded by
  the code tokenizer.

Each row is then decoded with the codec's decoding rules, exactly as a generated row (ids -> bits -> ids is the
identity for every valid id), so real and generated text are decoded the same way (``[PAD]``/``[SEP]`` kept for
LM1B, the OWT stop and strip rules), and the token entropy counts the same ids. Every process count uses the same
first rows (see ``docs/design.md#evaluation``).

For an autoregressive model the "codec" is its text rules (:mod:`~bitstream_diffusion.evaluation.causal_lm_text`):
the same packing and decoding in the model's own tokens; OWT rows are then the GPT-2 windows themselves, without the
code tokenizer.

:func:`reference_token_rows` is the only place that packs text into rows; :func:`build_reference_data` turns those
rows into what the protocol scores and measures (the likelihood metrics use the rows themselves).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "PACKING_CHOICES",
    "ReferenceData",
    "ReferenceRows",
    "build_reference",
    "build_reference_data",
    "read_reference_texts",
    "reference_token_rows",
]

logger = logging.getLogger(__name__)

PACKING_CHOICES: tuple[str, ...] = ("auto", "packed", "rows")
"""``packed``: rows as the training data is packed (LM1B/OWT layouts only); ``rows``: one text per row (the codec's
``encode_texts``); ``auto``: ``packed`` for the LM1B and OWT layouts, ``rows`` otherwise."""


class ReferenceRows(NamedTuple):
    """The reference as the protocol scores it (unpacks as ``texts, entropy_ids``).

    Attributes:
        texts: one decoded text per row, decoded from bits exactly like a generated sample.
        entropy_ids: per row, the ids the token entropy counts (``codec.ids_for_token_entropy``).
    """

    texts: list[str]
    entropy_ids: list[list[int]]


@dataclass(frozen=True)
class ReferenceData:
    """The reference rows and what is scored of them.

    Attributes:
        texts: one decoded text per row (decoded exactly like a generated sample).
        entropy_ids: per row, the ids the token entropy counts.
        token_ids: ``int64`` ``[n, num_tokens]``: the rows in the model's tokens (CoBit: the codec's ids, whose bits
            the variational bound measures; a causal LM: its tokenizer's ids).
    """

    texts: list[str]
    entropy_ids: list[list[int]]
    token_ids: torch.Tensor


# ---------------------------------------------------------------------------------------------------- reading


def read_reference_texts(
    path: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    column: str = "text",
) -> Iterator[str]:
    """The reference texts in order, lazily: from a file, or from a ``datasets`` dataset.

    A ``.jsonl`` file holds one JSON string or object (read at ``column``) per line; any other file one text per
    non-empty line. ``dataset`` is passed to ``datasets.load_dataset(dataset, dataset_config, split=split)``.
    """
    if (path is None) == (dataset is None):
        raise ValueError("Pass exactly one of a reference file and a reference dataset.")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Reference file not found: {path}.")
        return _read_text_file(path, column)
    return _read_dataset(dataset, dataset_config, split, column)


def _read_text_file(path: Path, column: str) -> Iterator[str]:
    jsonl = path.suffix.lower() == ".jsonl"
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not jsonl:
                yield line
                continue
            item = json.loads(line)
            if isinstance(item, dict):
                if column not in item:
                    raise KeyError(f"{path}:{number} has no field {column!r} (set --reference-column).")
                item = item[column]
            if not isinstance(item, str):
                raise TypeError(f"{path}:{number}: expected a string, got {type(item).__name__}.")
            yield item


def _read_dataset(name: str, config: str | None, split: str, column: str) -> Iterator[str]:
    import datasets

    data = datasets.load_dataset(name, config, split=split)
    if column not in data.column_names:
        raise KeyError(f"Dataset {name!r} has no column {column!r}; columns: {data.column_names}.")
    for row in data:
        yield row[column]


# ---------------------------------------------------------------------------------------------------- packing


def reference_token_rows(texts: Iterable[str], codec, num_rows: int, packing: str = "auto") -> torch.Tensor:
    """Pack the first reference texts into at most ``num_rows`` rows of token ids.

    Args:
        texts: reference texts in order (read lazily; reading stops once ``num_rows`` rows exist).
        codec: the pipeline's :class:`~bitstream_diffusion.TextBitCodec` (layout, tokenizer, row length).
        num_rows: how many rows.
        packing: one of :data:`PACKING_CHOICES`.

    Returns:
        ``int64`` ``[n, codec.num_tokens]`` with ``n <= num_rows`` (fewer when the texts run out).
    """
    if packing not in PACKING_CHOICES:
        raise ValueError(f"`packing` must be one of {list(PACKING_CHOICES)}, got {packing!r}.")
    if packing == "auto":
        packing = "packed" if codec.layout in ("lm1b", "owt") else "rows"
    if packing == "rows":
        return codec.encode_texts(list(itertools.islice(texts, num_rows)))
    if codec.layout == "lm1b":
        from ..codecs.lm1b import pack_lm1b_lines

        return pack_lm1b_lines(texts, codec.tokenizer, seq_len=codec.num_tokens, max_rows=num_rows).rows
    if codec.layout == "owt" and codec.code_tokenizer is None:  # a causal LM's GPT-2 windows (no code tokenizer)
        from ..codecs.owt import pack_owt_windows

        eos = codec.tokenizer.eos_token_id
        return pack_owt_windows(
            texts, codec.tokenizer, base_seq_len=codec.num_tokens, bos_token_id=eos, eos_token_id=eos,
            max_windows=num_rows,
        )  # fmt: skip
    if codec.layout == "owt":
        from ..codecs.owt import pack_owt_windows

        meta = codec.code_tokenizer.meta
        windows = pack_owt_windows(
            texts,
            codec.tokenizer,
            base_seq_len=meta.base_seq_len_tokens,
            bos_token_id=meta.bos_token_id_gpt2,
            eos_token_id=meta.eos_token_id_gpt2,
            max_windows=num_rows,
        )
        return codec.code_tokenizer.encode_windows(windows, code_seq_len=codec.num_tokens)
    raise ValueError(f"packing='packed' needs the lm1b or owt codec layout, not {codec.layout!r}; use 'rows'.")


def build_reference_data(codec, texts: Iterable[str], num_rows: int, packing: str = "auto") -> ReferenceData:
    """The first ``num_rows`` reference rows, decoded the way the generations are.

    Args:
        codec: a :class:`~bitstream_diffusion.TextBitCodec` (a pipeline's ``codec``) or a causal LM's text rules
            (:func:`~bitstream_diffusion.evaluation.causal_lm_text.causal_lm_text_rules`).
        texts: reference texts in order (:func:`read_reference_texts`).
        num_rows: how many rows.
        packing: ``"packed"``, ``"rows"`` or ``"auto"`` (:data:`PACKING_CHOICES`, :func:`reference_token_rows`).

    Returns:
        :class:`ReferenceData`.

    Raises:
        ValueError: an unknown packing, or no rows at all (an empty file or split).
    """
    ids = reference_token_rows(texts, codec, num_rows, packing)
    if ids.shape[0] == 0:
        raise ValueError("The reference data gave no rows (empty file or split?).")
    if ids.shape[0] < num_rows:
        logger.warning(f"The reference data gave only {ids.shape[0]} of the {num_rows} rows asked for; using those.")
    return ReferenceData(codec.decode_ids(ids), codec.ids_for_token_entropy(ids), ids)


def build_reference(pipe, texts: Iterable[str], num_rows: int, packing: str = "auto") -> ReferenceRows:
    """The first ``num_rows`` reference rows of a pipeline, decoded the way the generations are.

    Args:
        pipe: a :class:`~bitstream_diffusion.BitstreamDiffusionPipeline` (its codec is used).
        texts: reference texts in order (:func:`read_reference_texts`).
        num_rows: how many rows.
        packing: ``"packed"``, ``"rows"`` or ``"auto"`` (:data:`PACKING_CHOICES`, :func:`reference_token_rows`).

    Returns:
        :class:`ReferenceRows`: each row decoded with the codec's rules, and the ids the token entropy counts.

    Raises:
        ValueError: an unknown packing, or no rows at all (an empty file or split).
    """
    data = build_reference_data(pipe.codec, texts, num_rows, packing)
    return ReferenceRows(data.texts, data.entropy_ids)
