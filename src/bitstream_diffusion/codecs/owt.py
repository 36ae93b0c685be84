"""The OpenWebText GPT-2 side of CoBit: the flat token stream and its fixed 1024-token windows.

Stage 1 (flat stream, official ``build_or_load_openwebtext_flat_cache``): each document is normalised (``\\r\\n`` and
``\\r`` become ``\\n``, then ``.strip()``), tokenised with GPT-2 with ``add_special_tokens=False`` (a literal
``<|endoftext|>`` in the text **is** encoded as 50256), EOS 50256 is appended, empty documents are skipped, and all
documents are concatenated.

Stage 2 (windows): with ``content_len = base_seq_len - 2 = 1022``, window ``i`` is
``[BOS] + stream[1022 i : 1022 (i + 1)] + [EOS]``; GPT-2's BOS and EOS are both 50256. Windows do not overlap, ignore
document boundaries, and the tail is dropped. The second-stage code tokenizer
(:mod:`bitstream_diffusion.codecs.code_tokenizer`) turns each window into a fixed row of 1024 codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tokenize import encode_plain

__all__ = [
    "GPT2_EOS_TOKEN_ID",
    "GPT2_VOCAB_SIZE",
    "OWT_BASE_SEQUENCE_LENGTH",
    "OWTFlatStream",
    "build_owt_flat_stream",
    "normalize_owt_text",
    "num_owt_windows",
    "owt_window",
    "owt_windows",
]

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_TOKEN_ID = 50256
OWT_BASE_SEQUENCE_LENGTH = 1024


@dataclass(frozen=True)
class OWTFlatStream:
    """The concatenated GPT-2 stream and the counters of the official cache meta.

    Attributes:
        tokens: ``int64`` ``[n_tokens]``.
        n_docs: documents that contributed tokens (empty ones are skipped).
    """

    tokens: torch.Tensor
    n_docs: int

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())


def normalize_owt_text(text: str | None) -> str:
    """``\\r\\n`` and ``\\r`` become ``\\n``, then surrounding whitespace is stripped (``None`` gives ``""``)."""
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()


def build_owt_flat_stream(
    documents: Iterable[str | None],
    tokenizer,
    *,
    insert_eos: bool = True,
    eos_token_id: int | None = None,
    batch_size: int = 1000,
) -> OWTFlatStream:
    """The official flat GPT-2 stream of ``documents``.

    Args:
        documents: raw document texts (the ``text`` column).
        tokenizer: the GPT-2 tokenizer (any transformers tokenizer with an EOS works).
        insert_eos: append EOS to every non-empty document (the official default).
        eos_token_id: defaults to ``tokenizer.eos_token_id`` (50256).
        batch_size: documents tokenised per call (does not change the result).
    """
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if insert_eos and eos is None:
        raise ValueError("The tokenizer has no eos_token_id; pass eos_token_id or insert_eos=False.")
    texts = [normalize_owt_text(doc) for doc in documents]
    pieces: list[list[int]] = []
    for start in range(0, len(texts), max(1, int(batch_size))):
        for ids in encode_plain(tokenizer, texts[start : start + int(batch_size)]):
            if ids:
                pieces.append(list(ids) + [int(eos)] if insert_eos else list(ids))
    flat = [token for piece in pieces for token in piece]
    return OWTFlatStream(tokens=torch.tensor(flat, dtype=torch.long), n_docs=len(pieces))


def num_owt_windows(n_tokens: int, base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH) -> int:
    """How many full windows a stream of ``n_tokens`` gives (``n_tokens // (base_seq_len - 2)``)."""
    if base_seq_len < 3:
        raise ValueError(f"base_seq_len must be at least 3 (BOS + content + EOS), got {base_seq_len}.")
    return int(n_tokens) // (int(base_seq_len) - 2)


def owt_window(
    stream: torch.Tensor | np.ndarray | Sequence[int],
    index: int,
    *,
    base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
    bos_token_id: int = GPT2_EOS_TOKEN_ID,
    eos_token_id: int = GPT2_EOS_TOKEN_ID,
) -> torch.Tensor:
    """Window ``index`` of a flat stream (a tensor, list or a numpy ``uint16`` memmap): ``int64`` ``[base_seq_len]``."""
    n_windows = num_owt_windows(len(stream), base_seq_len)
    if not 0 <= index < n_windows:
        raise IndexError(f"Window {index} is out of range for a stream with {n_windows} full windows.")
    content_len = int(base_seq_len) - 2
    content = stream[index * content_len : (index + 1) * content_len]
    content = torch.as_tensor(np.asarray(content, dtype=np.int64) if not isinstance(content, torch.Tensor) else content)
    window = torch.empty(int(base_seq_len), dtype=torch.long)
    window[0] = int(bos_token_id)
    window[1:-1] = content.long()
    window[-1] = int(eos_token_id)
    return window


def owt_windows(
    stream: torch.Tensor | np.ndarray | Sequence[int],
    *,
    base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
    bos_token_id: int = GPT2_EOS_TOKEN_ID,
    eos_token_id: int = GPT2_EOS_TOKEN_ID,
    max_windows: int | None = None,
) -> torch.Tensor:
    """All full windows of a flat stream (tail dropped): ``int64`` ``[n_windows, base_seq_len]``."""
    n_windows = num_owt_windows(len(stream), base_seq_len)
    if max_windows is not None:
        n_windows = min(n_windows, int(max_windows))
    content_len = int(base_seq_len) - 2
    content = stream[: n_windows * content_len]
    content = torch.as_tensor(np.asarray(content, dtype=np.int64) if not isinstance(content, torch.Tensor) else content)
    windows = torch.empty((n_windows, int(base_seq_len)), dtype=torch.long)
    windows[:, 0] = int(bos_token_id)
    windows[:, 1:-1] = content.long().view(n_windows, content_len)
    windows[:, -1] = int(eos_token_id)
    return windows
