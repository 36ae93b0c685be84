"""Training the OWT code tokenizer (:class:`~.code_tokenizer.CodeTokenizer`) the way the official one was trained.

One training line per GPT-2 window, each ``"\\n"``-terminated (the official trainer read a file line by line with its
line breaks, which is why ``"\\n"`` sits at code 3), a ``tokenizers`` BPE with no normaliser and no pre-tokenizer,
special tokens ``[PAD] [UNK] [EOSEQ]`` and every GPT-2 private-use character in the initial alphabet. On the same
windows this reproduces the official tokenizer JSON byte for byte, and the meta carries the official provenance keys
and encoded-length statistics.

:func:`bitstream_diffusion.training.data.train_code_tokenizer` runs it on a text corpus (through the cached flat GPT-2
stream); ``examples/prepare_data/prepare_data.py train-code-tokenizer`` is its command line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .bits import bits_for_vocab
from .code_tokenizer import (
    CODE_SPECIAL_TOKENS,
    DEFAULT_BASE_CHAR_OFFSET,
    DEFAULT_CODE_VOCAB_SIZE,
    CodeTokenizer,
    CodeTokenizerMeta,
    gpt2_ids_to_pua,
)
from .owt import GPT2_EOS_TOKEN_ID, GPT2_VOCAB_SIZE, OWT_BASE_SEQUENCE_LENGTH, num_owt_windows, owt_window

__all__ = ["FlatStreamWindows", "train_code_tokenizer_on_flat_stream", "train_code_tokenizer_on_windows"]

_MAX_CODEPOINT = 0x10FFFF


class FlatStreamWindows(Sequence):
    """The windows ``[BOS] + 1022 ids + [EOS]`` of a flat GPT-2 stream (a tensor, list or numpy memmap), cut lazily
    so a stream of any size can feed the trainer."""

    def __init__(
        self,
        stream: torch.Tensor | np.ndarray | Sequence[int],
        base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
        bos_token_id: int = GPT2_EOS_TOKEN_ID,
        eos_token_id: int = GPT2_EOS_TOKEN_ID,
    ):
        self.stream, self.base_seq_len = stream, int(base_seq_len)
        self.bos_token_id, self.eos_token_id = int(bos_token_id), int(eos_token_id)
        self.n = num_owt_windows(len(stream), self.base_seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        return owt_window(
            self.stream,
            index,
            base_seq_len=self.base_seq_len,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        ).tolist()


def _encoded_lengths(backend, strings: Iterator[str], batch_size: int = 2048) -> np.ndarray:
    lengths: list[int] = []
    batch: list[str] = []
    for text in strings:
        batch.append(text)
        if len(batch) >= batch_size:
            lengths.extend(len(enc.ids) for enc in backend.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        lengths.extend(len(enc.ids) for enc in backend.encode_batch(batch, add_special_tokens=False))
    return np.asarray(lengths, dtype=np.int64)


def train_code_tokenizer_on_windows(
    gpt2_windows: torch.Tensor | Sequence[Sequence[int]],
    *,
    code_vocab_size: int = DEFAULT_CODE_VOCAB_SIZE,
    min_frequency: int = 2,
    base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET,
    vocab_size_gpt2: int = GPT2_VOCAB_SIZE,
    bos_token_id: int = GPT2_EOS_TOKEN_ID,
    eos_token_id: int = GPT2_EOS_TOKEN_ID,
    compute_length_stats: bool = True,
    show_progress: bool = False,
    meta_extra: dict[str, Any] | None = None,
) -> CodeTokenizer:
    """Train a code tokenizer on GPT-2 windows.

    Args:
        gpt2_windows: ``[n, base_seq_len]`` GPT-2 windows with their BOS/EOS (see
            :func:`~bitstream_diffusion.codecs.owt.owt_windows`), or any re-iterable sequence of id lists.
        code_vocab_size: target number of codes (65536 in the paper; fewer when the corpus is small).
        min_frequency: the BPE trainer's minimum pair frequency (2, the official value).
        base_char_offset, vocab_size_gpt2, bos_token_id, eos_token_id: the GPT-2 side (official defaults).
        compute_length_stats: encode every window again for the meta's ``encoding_length_stats`` (as the official
            trainer does); switch off for very large corpora.
        show_progress: the trainer's progress bar.
        meta_extra: extra meta entries (provenance such as ``root`` or ``source_flat_hf_split``).

    Raises:
        ValueError: no windows, or a ``base_char_offset`` that pushes GPT-2 ids past the last Unicode code point.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if base_char_offset + vocab_size_gpt2 - 1 > _MAX_CODEPOINT:
        raise ValueError(f"base_char_offset={base_char_offset:#x} is too large for {vocab_size_gpt2} GPT-2 ids.")
    if isinstance(gpt2_windows, torch.Tensor):
        gpt2_windows = gpt2_windows.tolist()
    n_windows = len(gpt2_windows)
    if n_windows == 0:
        raise ValueError("No GPT-2 windows to train the code tokenizer on: pass at least one window.")

    def lines() -> Iterator[str]:
        for window in gpt2_windows:
            yield gpt2_ids_to_pua(window, base_char_offset) + "\n"

    backend = Tokenizer(BPE(unk_token=CODE_SPECIAL_TOKENS[1]))
    trainer = BpeTrainer(
        vocab_size=int(code_vocab_size),
        min_frequency=int(min_frequency),
        show_progress=show_progress,
        special_tokens=list(CODE_SPECIAL_TOKENS),
        initial_alphabet=[chr(base_char_offset + t) for t in range(int(vocab_size_gpt2))],
    )
    backend.train_from_iterator(lines(), trainer, length=n_windows)
    vocab = backend.get_vocab(with_added_tokens=True)
    actual = backend.get_vocab_size(with_added_tokens=True)

    extra: dict[str, Any] = {
        "format": "gpt2id_bpe16",
        "root": None,
        "source_flat_cache_path": None,
        "source_flat_meta_path": None,
        "source_flat_hf_split": None,
        "tokenizer_name_gpt2": "gpt2",
        "content_len_tokens": len(gpt2_windows[0]) - 2,
        "special_tokens": list(CODE_SPECIAL_TOKENS),
        "train_strings_path": None,
        "num_training_sequences": n_windows,
    }
    if compute_length_stats:
        lengths = _encoded_lengths(backend, (line[:-1] for line in lines()))
        extra["encoding_length_stats"] = {
            "num_sequences_scanned": int(lengths.size),
            "encoded_len_min": int(lengths.min()),
            "encoded_len_mean": float(lengths.mean()),
            "encoded_len_max": int(lengths.max()),
            "encoded_len_p50": int(np.percentile(lengths, 50)),
            "encoded_len_p90": int(np.percentile(lengths, 90)),
            "encoded_len_p95": int(np.percentile(lengths, 95)),
            "encoded_len_p99": int(np.percentile(lengths, 99)),
            "encoded_len_p999": int(np.percentile(lengths, 99.9)),
        }
        extra["recommended_code_seq_len_tokens"] = int(lengths.max()) + 1
    extra["bits_per_code_token"] = bits_for_vocab(max(2, actual))
    extra.update(meta_extra or {})
    meta = CodeTokenizerMeta(
        actual_code_vocab_size=actual,
        pad_id=vocab[CODE_SPECIAL_TOKENS[0]],
        unk_id=vocab[CODE_SPECIAL_TOKENS[1]],
        eoseq_id=vocab[CODE_SPECIAL_TOKENS[2]],
        base_char_offset=int(base_char_offset),
        vocab_size_gpt2=int(vocab_size_gpt2),
        bos_token_id_gpt2=int(bos_token_id),
        eos_token_id_gpt2=int(eos_token_id),
        base_seq_len_tokens=len(gpt2_windows[0]),
        target_code_vocab_size=int(code_vocab_size),
        extra=extra,
    )
    return CodeTokenizer(tokenizer_object=backend, **meta.to_init_kwargs())


def train_code_tokenizer_on_flat_stream(
    stream: torch.Tensor | np.ndarray | Sequence[int],
    *,
    base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
    bos_token_id: int = GPT2_EOS_TOKEN_ID,
    eos_token_id: int = GPT2_EOS_TOKEN_ID,
    **kwargs,
) -> CodeTokenizer:
    """:func:`train_code_tokenizer_on_windows` on every window of a flat GPT-2 stream (cut lazily, so a memmap works);
    ``kwargs`` are its other arguments."""
    windows = FlatStreamWindows(stream, base_seq_len, bos_token_id, eos_token_id)
    return train_code_tokenizer_on_windows(windows, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
