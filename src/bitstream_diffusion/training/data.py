"""Training data for CoBit: raw text -> fixed rows of token ids, cached on disk -> bit rows for the model.

This module is the front door; each concept has its own file and every name is importable from here:

* :mod:`.text_sources`: :class:`TextSource`, where the raw text of a split comes from (``datasets`` datasets from the
  hub, a folder or ``save_to_disk``, an in-memory ``Dataset``/``DatasetDict``, local files, the built-in Wikipedia
  summaries);
* :mod:`.data_recipes`: :class:`DataRecipe` (``"lm1b"``, ``"owt"``, ``"generic"``), the packer and the
  :func:`build_codec` of each recipe, and the tokenizer loaders;
* :mod:`.token_cache`: :func:`prepare_token_rows`, the on-disk cache of rows (:class:`TokenRows`, memory-mapped);
* here: the PyTorch side (:class:`TokenRowsDataset`, :func:`split_train_validation`, :class:`EpochShuffleSampler`)
  and :func:`train_code_tokenizer`, which trains the OWT code tokenizer on a corpus.

Determinism: preparation is a pure function of its inputs; :class:`EpochShuffleSampler` draws epoch ``e``'s order
from ``seed + e`` only, so a resumed run sees exactly the batches the uninterrupted run would have seen.

``examples/prepare_data/prepare_data.py`` is the command line (prepare caches ahead of a multi-node job, or train the
OWT code tokenizer).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from ..codecs import CodeTokenizer, lm1b_split_ranges, train_code_tokenizer_on_flat_stream
from .data_recipes import (
    DATA_RECIPES,
    DataRecipe,
    DataRecipeName,
    build_codec,
    load_code_tokenizer,
    load_text_tokenizer,
    recipe_packer,
)
from .reporting import progress_bars_enabled
from .text_sources import BUILTIN_SOURCES, TextSource
from .token_cache import (
    CACHE_FORMAT_VERSION,
    EmptyCorpusError,
    TokenRows,
    default_cache_dir,
    prepare_owt_flat_stream,
    prepare_token_rows,
)

__all__ = [
    "BUILTIN_SOURCES",
    "CACHE_FORMAT_VERSION",
    "DATA_RECIPES",
    "DataRecipe",
    "DataRecipeName",
    "EmptyCorpusError",
    "EpochShuffleSampler",
    "TextSource",
    "TokenRows",
    "TokenRowsDataset",
    "build_codec",
    "default_cache_dir",
    "load_code_tokenizer",
    "load_text_tokenizer",
    "prepare_owt_flat_stream",
    "prepare_token_rows",
    "recipe_packer",
    "split_train_validation",
    "train_code_tokenizer",
]


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
    """Train the OWT code tokenizer on the windows of a corpus, as the official one was trained.

    The flat GPT-2 stream is prepared (and cached, :func:`prepare_owt_flat_stream`) first; the BPE then trains on its
    ``[EOS] + (base_seq_len - 2) + [EOS]`` windows (all of them, or the first ``max_windows``;
    :func:`~bitstream_diffusion.codecs.train_code_tokenizer_on_flat_stream`). With ``output_dir`` the tokenizer is
    written both the transformers way (``save_pretrained``) and as the official pair
    ``tokenizer_gpt2id_bpe16_{V}_base{L}.json`` + ``.meta.json``.

    Raises:
        EmptyCorpusError: the corpus gives less than one window.
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
    code_tokenizer = train_code_tokenizer_on_flat_stream(
        stream,
        base_seq_len=int(base_seq_len),
        bos_token_id=eos,
        eos_token_id=eos,
        code_vocab_size=int(code_vocab_size),
        min_frequency=int(min_frequency),
        vocab_size_gpt2=len(tokenizer),
        show_progress=show_progress and progress_bars_enabled(),
        meta_extra={"source_flat_cache_path": str(flat.data_file), "source_flat_hf_split": source.split},
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        code_tokenizer.save_pretrained(output_dir)
        code_tokenizer.save_official_files(
            output_dir / f"tokenizer_gpt2id_bpe16_{code_tokenizer.vocab_size}_base{int(base_seq_len)}.json"
        )
    return code_tokenizer
