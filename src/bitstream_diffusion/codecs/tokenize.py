"""Plain tokenisation as every CoBit data recipe does it: no special tokens, no padding, no truncation."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["encode_plain"]


def encode_plain(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, `add_special_tokens=False`, untruncated (the official LM1B/OWT cache builders)."""
    if not texts:
        return []
    return tokenizer(
        list(texts),
        add_special_tokens=False,
        padding=False,
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
