"""Rows of token ids for an autoregressive baseline: where it starts, and how its rows become text.

The baseline is trained and evaluated on the same rows as CoBit (LM1B: BERT ids joined by `[SEP]`; OWT: GPT-2 windows
`[EOS] + stream tokens + [EOS]`, without the second-stage code tokenizer; generic: any tokenizer). It reads each row
after one start token that is not part of the row, and its samples are decoded and counted by the same rules as
CoBit's, so that both sides of a comparison are scored alike. Training (`bitstream_diffusion.training.autoregressive`)
and the evaluation protocol (`bitstream_diffusion.evaluation.causal_lm_text`) both use this module.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .text_codec import TextBitCodec

__all__ = ["CAUSAL_LM_LAYOUTS", "GPT2WindowCodec", "causal_lm_row_codec", "causal_lm_start_token_id"]

CAUSAL_LM_LAYOUTS = ("lm1b", "owt", "generic")


def causal_lm_start_token_id(tokenizer) -> int:
    """The token every row is read after and generation starts from: BOS, else CLS, else EOS (`[CLS]` for
    bert-base-uncased, `<|endoftext|>` for GPT-2). The model reads `[start] + row[:-1]` and predicts `row`.

    Raises:
        ValueError: the tokenizer has none of the three.
    """
    for name in ("bos_token_id", "cls_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "The tokenizer has no BOS, CLS or EOS token to start rows with; set `tokenizer.bos_token` and save the "
        "tokenizer again."
    )


class GPT2WindowCodec:
    """The OWT rules for rows of GPT-2 ids (windows `[EOS] + stream tokens + [EOS]`, no code tokenizer): one leading
    and one trailing EOS stripped, inner EOS (document boundaries) kept, special tokens kept as text.

    Offers what the training script and the protocol use of a [`~bitstream_diffusion.TextBitCodec`]: `layout`,
    `tokenizer`, `code_tokenizer` (`None`), `num_tokens`, `vocab_size`, `bits_per_token` (reported only: the baseline
    sees no bits), [`decode_ids`] and [`ids_for_token_entropy`].

    Args:
        tokenizer: the GPT-2 tokenizer (any tokenizer with an EOS token).
        num_tokens (`int`): tokens per row, the window length with its two EOS (1024 for OWT).
    """

    layout = "owt"
    code_tokenizer = None

    def __init__(self, tokenizer, num_tokens: int):
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("The 'owt' layout frames windows with EOS; this tokenizer has none. Use 'generic'.")
        if int(num_tokens) < 3:
            raise ValueError(f"An OWT window needs at least 3 tokens (EOS, content, EOS), got num_tokens={num_tokens}.")
        self.tokenizer = tokenizer
        self.num_tokens = int(num_tokens)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.vocab_size = len(tokenizer)
        self.bits_per_token = math.ceil(math.log2(self.vocab_size))

    def ids_for_token_entropy(self, ids) -> list[list[int]]:
        """Each row without one leading and one trailing EOS (ids the tokenizer does not know are dropped)."""
        rows = ids.tolist() if hasattr(ids, "tolist") else [list(row) for row in ids]
        cleaned = []
        for row in rows:
            row = [int(i) for i in row if 0 <= int(i) < self.vocab_size]
            if row and row[0] == self.eos_token_id:
                row = row[1:]
            if row and row[-1] == self.eos_token_id:
                row = row[:-1]
            cleaned.append(row)
        return cleaned

    def decode_ids(self, ids) -> list[str]:
        """`[B, T]` ids -> `B` texts ([`ids_for_token_entropy`], then decoded with special tokens kept)."""
        cleaned = self.ids_for_token_entropy(ids)
        return self.tokenizer.batch_decode(cleaned, skip_special_tokens=False) if cleaned else []


def causal_lm_row_codec(
    layout: Literal["lm1b", "owt", "generic"], tokenizer, num_tokens: int
) -> TextBitCodec | GPT2WindowCodec:
    """The decoding rules of a baseline's rows: the LM1B codec (BERT rows, special tokens kept), the GPT-2 window
    rules, or the generic codec."""
    from .text_codec import TextBitCodec  # loads torch: only when a codec is built, not when the rules are imported

    if layout == "owt":
        return GPT2WindowCodec(tokenizer, num_tokens)
    if layout == "lm1b":
        return TextBitCodec(tokenizer, layout="lm1b", num_tokens=num_tokens, clean_up_tokenization_spaces=False)
    if layout == "generic":
        return TextBitCodec(tokenizer, layout="generic", num_tokens=num_tokens)
    raise ValueError(f"Unknown row layout {layout!r}; choose one of {list(CAUSAL_LM_LAYOUTS)}.")
