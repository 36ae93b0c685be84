"""The rows of the autoregressive baseline and how they become text.

For the ``lm1b`` and ``generic`` recipes the baseline trains on the very rows CoBit trains on, and a row decodes with
the recipe's :class:`~bitstream_diffusion.TextBitCodec` (the LM1B rules: ``[SEP]``/``[PAD]`` kept, no space clean-up).

For ``owt`` CoBit's rows are codes of a second-stage tokenizer, each the re-coding of one GPT-2 window
``[EOS] + 1022 stream tokens + [EOS]``. A language model over GPT-2 tokens is the standard OWT baseline, so the
autoregressive rows are those windows themselves (:class:`GPT2WindowRows`, read from the cached flat GPT-2 stream
without a copy): the same text per row, the GPT-2 vocabulary, no code tokenizer. They decode as the OWT codec's
GPT-2 side does (:class:`~bitstream_diffusion.codecs.causal_lm_rows.GPT2WindowCodec`: one leading and one trailing
EOS stripped, inner EOS kept).

:func:`ar_row_codec` gives the decoding rules of a recipe; the exported folder records the recipe, so the rules are
rebuilt from the folder alone.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..codecs import TextBitCodec
from ..codecs.causal_lm_rows import GPT2WindowCodec, causal_lm_row_codec
from .token_cache import EmptyCorpusError, TokenRows, prepare_owt_flat_stream

if TYPE_CHECKING:
    from .data_recipes import DataRecipe
    from .text_sources import TextSource

__all__ = ["GPT2WindowCodec", "GPT2WindowRows", "ar_row_codec", "prepare_gpt2_windows"]


class GPT2WindowRows(TokenRows):
    """The OWT windows of a flat GPT-2 stream cache as rows: row ``i`` is ``[EOS] + stream[i*C:(i+1)*C] + [EOS]``
    with ``C = base_seq_len - 2`` (the tail that fills no window is dropped, as in the OWT recipe).

    Args:
        flat: the flat stream (:func:`~bitstream_diffusion.training.data.prepare_owt_flat_stream`).
        base_seq_len: tokens per window, both EOS included (1024 for OWT).
        eos_token_id: GPT-2's ``<|endoftext|>``.
    """

    def __init__(self, flat: TokenRows, base_seq_len: int, eos_token_id: int):  # a view of `flat`, no file of its own
        content = int(base_seq_len) - 2
        if content < 1:
            raise ValueError(f"An OWT window needs at least 3 tokens, got base_seq_len={base_seq_len}.")
        self.flat, self.path, self.meta = flat, flat.path, dict(flat.meta)
        self.num_tokens, self.dtype, self.data_file = int(base_seq_len), flat.dtype, flat.data_file
        self.num_rows = len(flat) // content
        self.eos_token_id = int(eos_token_id)
        self._ids = None
        if self.num_rows == 0:
            raise EmptyCorpusError(f"The GPT-2 stream holds {len(flat)} tokens, fewer than one window of {content} "
                                   "content tokens: add documents or lower --owt_base_seq_len.")

    @property
    def ids(self) -> np.ndarray:
        raise AttributeError("GPT2WindowRows reads windows one at a time (rows[i]); the flat stream is rows.flat.ids.")

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= int(index) < self.num_rows:
            raise IndexError(index)
        content = self.num_tokens - 2
        tokens = np.asarray(self.flat.ids.reshape(-1)[index * content : (index + 1) * content], dtype=np.int64)
        row = np.empty(self.num_tokens, dtype=np.int64)
        row[0] = row[-1] = self.eos_token_id
        row[1:-1] = tokens
        return torch.from_numpy(row)

    def __repr__(self) -> str:
        return f"GPT2WindowRows({self.path}, rows={self.num_rows}, num_tokens={self.num_tokens})"


def prepare_gpt2_windows(
    source: TextSource,
    recipe: DataRecipe,
    tokenizer,
    code_tokenizer=None,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 1000,
    show_progress: bool = True,
) -> GPT2WindowRows:
    """The autoregressive baseline's OWT rows of one split, called like
    :func:`~bitstream_diffusion.training.data.prepare_token_rows`: the flat GPT-2 stream is prepared (or reused: the
    cache CoBit's OWT recipe makes too) and read as windows of ``recipe.base_seq_len`` tokens. The code tokenizer is
    not used."""
    if recipe.recipe != "owt":
        raise ValueError(f"GPT-2 windows are the owt recipe's rows; got the {recipe.recipe!r} recipe.")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError("The OWT windows are framed by EOS; this tokenizer has none (use GPT-2).")
    flat = prepare_owt_flat_stream(source, tokenizer, cache_dir=cache_dir, batch_size=batch_size,
                                   show_progress=show_progress)
    return GPT2WindowRows(flat, recipe.base_seq_len, tokenizer.eos_token_id)


def ar_row_codec(recipe: str, tokenizer, num_tokens: int) -> TextBitCodec | GPT2WindowCodec:
    """The decoding rules of the baseline's rows for ``recipe`` (``"lm1b"``, ``"owt"`` or ``"generic"``)."""
    return causal_lm_row_codec(recipe, tokenizer, num_tokens)
