"""The OpenWebText GPT-2 side of CoBit: the flat token stream and its fixed 1024-token windows.

Stage 1 (the flat stream, as the official OWT cache): each document is normalised (``\\r\\n`` and ``\\r`` become
``\\n``, then ``.strip()``), tokenised with GPT-2 with ``add_special_tokens=False`` (a literal ``<|endoftext|>`` in
the text **is** encoded as 50256), EOS 50256 is appended, empty documents are skipped, and all documents are
concatenated. :func:`owt_packer` is this recipe as a :class:`~.packing.TokenPacker`.

Stage 2 (windows): with ``content_len = base_seq_len - 2 = 1022``, window ``i`` is
``[BOS] + stream[1022 i : 1022 (i + 1)] + [EOS]``; GPT-2's BOS and EOS are both 50256. Windows do not overlap, ignore
document boundaries, and the tail is dropped. The second-stage code tokenizer
(:mod:`bitstream_diffusion.codecs.code_tokenizer`) turns each window into a fixed row of 1024 codes. See
``docs/design.md#codecs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .packing import TokenPacker

__all__ = [
    "GPT2_EOS_TOKEN_ID",
    "GPT2_VOCAB_SIZE",
    "OWT_BASE_SEQUENCE_LENGTH",
    "OWTFlatStream",
    "build_owt_flat_stream",
    "normalize_owt_text",
    "num_owt_windows",
    "owt_packer",
    "owt_window",
    "owt_windows",
    "pack_owt_windows",
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


def owt_packer(
    tokenizer, *, insert_eos: bool = True, eos_token_id: int | None = None, batch_size: int = 1000
) -> TokenPacker:
    """The OWT :class:`~.packing.TokenPacker`: normalised documents, each followed by EOS.

    Args:
        tokenizer: the GPT-2 tokenizer (any transformers tokenizer with an EOS works).
        insert_eos: append EOS to every non-empty document (the official default).
        eos_token_id: defaults to ``tokenizer.eos_token_id`` (50256).
        batch_size: documents tokenised per call (does not change the result).
    """
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    if insert_eos and eos is None:
        raise ValueError("The tokenizer has no eos_token_id; pass eos_token_id or insert_eos=False.")
    return TokenPacker(
        tokenizer,
        boundary="after" if insert_eos else "none",
        boundary_token_id=eos if insert_eos else None,
        normalize=normalize_owt_text,
        batch_size=batch_size,
    )


def build_owt_flat_stream(
    documents: Iterable[str | None],
    tokenizer,
    *,
    insert_eos: bool = True,
    eos_token_id: int | None = None,
    batch_size: int = 1000,
) -> OWTFlatStream:
    """The official flat GPT-2 stream of ``documents`` (the ``text`` column); the arguments are :func:`owt_packer`'s."""
    packer = owt_packer(tokenizer, insert_eos=insert_eos, eos_token_id=eos_token_id, batch_size=batch_size)
    pieces = list(packer.stream(documents))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return OWTFlatStream(tokens=torch.from_numpy(flat), n_docs=packer.stats.examples)


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
    return _wrap_windows(content.long().view(1, content_len), bos_token_id, eos_token_id)[0]


def _wrap_windows(content: torch.Tensor, bos_token_id: int, eos_token_id: int) -> torch.Tensor:
    """``[n, content_len]`` stream slices -> ``[n, content_len + 2]`` windows ``[BOS] + slice + [EOS]``."""
    windows = torch.empty((content.shape[0], content.shape[1] + 2), dtype=torch.long)
    windows[:, 0] = int(bos_token_id)
    windows[:, 1:-1] = content.long()
    windows[:, -1] = int(eos_token_id)
    return windows


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
    return _wrap_windows(content.long().view(n_windows, content_len), bos_token_id, eos_token_id)


def pack_owt_windows(
    documents: Iterable[str | None],
    tokenizer,
    *,
    base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
    bos_token_id: int = GPT2_EOS_TOKEN_ID,
    eos_token_id: int = GPT2_EOS_TOKEN_ID,
    max_windows: int | None = None,
    batch_size: int = 1000,
) -> torch.Tensor:
    """The windows of ``documents`` straight from the text, streaming: ``int64`` ``[n_windows, base_seq_len]``.

    The same windows as ``owt_windows(build_owt_flat_stream(documents, tokenizer, eos_token_id=eos_token_id).tokens,
    ...)``, but only the first ``max_windows`` are built and no more documents are read than they need. The code
    tokenizer's :meth:`~bitstream_diffusion.codecs.CodeTokenizer.encode_windows` turns them into code rows.
    """
    num_owt_windows(0, base_seq_len)  # validates base_seq_len
    packer = owt_packer(tokenizer, eos_token_id=eos_token_id, batch_size=batch_size)
    content = packer.pack(documents, int(base_seq_len) - 2, max_rows=max_windows)
    return _wrap_windows(content, bos_token_id, eos_token_id)
