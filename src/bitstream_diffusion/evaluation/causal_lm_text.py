"""How the protocol turns an autoregressive model's token rows into text, entropy ids and reference rows.

A causal LM compared with a CoBit model must be judged on the same text under the same rules, so its rows are
packed and decoded like the CoBit rows of the same data recipe, in the AR model's own tokens:

* ``"lm1b"`` (a BERT-tokenizer model, e.g. trained with the ``lm1b`` recipe): reference rows are the LM1B packing
  (lines joined by ``[SEP]``, cut into ``num_tokens`` rows); a row decodes exactly as the LM1B codec decodes (ids
  wrapped modulo the BERT vocabulary, ``[SEP]``/``[PAD]`` kept as literal text, no space clean-up), and the token
  entropy counts every position (special tokens included, after the wrap). This is :class:`~bitstream_diffusion.
  TextBitCodec` with ``layout="lm1b"`` itself.
* ``"owt"`` (a GPT-2-tokenizer model trained on the OWT windows): reference rows are the OWT windows
  ``[EOS] + 1022 stream tokens + [EOS]`` of ``num_tokens`` GPT-2 tokens (:func:`~bitstream_diffusion.codecs.
  pack_owt_windows`); a row decodes like the OWT codec's GPT-2 side: one leading and one trailing EOS are stripped,
  internal EOS (document boundaries) kept, special tokens kept as text; the entropy counts those same ids
  (:class:`GPT2WindowRules`).
* ``"generic"``: any other tokenizer: :class:`~bitstream_diffusion.TextBitCodec` with ``layout="generic"``
  (reference rows one text per row, padded; decoding skips special tokens; entropy over every position).

``"auto"`` takes the ``data_recipe`` recorded by the training run when there is one, else ``"lm1b"`` for a tokenizer
with ``[SEP]``/``[PAD]``/``[CLS]`` and no EOS (BERT), else ``"generic"``.

Generation starts from one *start token* that is not part of the row (:func:`start_token_id`: the tokenizer's BOS,
else its CLS, else its EOS: ``<|endoftext|>`` for GPT-2, ``[CLS]`` for BERT): the model reads
``[start] + row[:-1]`` and predicts ``row``, both when it samples and when its held-out likelihood is measured.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AR_TEXT_LAYOUTS", "GPT2WindowRules", "causal_lm_text_rules", "detect_text_layout", "start_token_id"]

AR_TEXT_LAYOUTS: tuple[str, ...] = ("auto", "lm1b", "owt", "generic")
"""The ``--ar-layout`` choices (see the module docstring)."""


def start_token_id(tokenizer) -> int:
    """The token generation starts from: BOS, else CLS, else EOS of ``tokenizer``.

    Raises:
        ValueError: the tokenizer has none of the three.
    """
    for name in ("bos_token_id", "cls_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(
        "The causal LM's tokenizer has no BOS, CLS or EOS token to start generation from; set `tokenizer.bos_token` "
        "and save the tokenizer again."
    )


def detect_text_layout(tokenizer, recorded_recipe: str | None = None) -> str:
    """The layout ``"auto"`` resolves to (see the module docstring)."""
    if recorded_recipe in ("lm1b", "owt", "generic"):
        return recorded_recipe
    has = {name: getattr(tokenizer, f"{name}_token_id", None) is not None for name in ("sep", "pad", "cls", "eos")}
    if has["sep"] and has["pad"] and has["cls"] and not has["eos"]:
        return "lm1b"
    return "generic"


class GPT2WindowRules:
    """The OWT rules for rows of GPT-2 tokens (windows ``[EOS] + stream tokens + [EOS]``, no code tokenizer).

    Offers what the protocol uses of a :class:`~bitstream_diffusion.TextBitCodec`: ``layout``, ``tokenizer``,
    ``num_tokens``, ``code_tokenizer`` (``None``), :meth:`decode_ids` and :meth:`ids_for_token_entropy`.

    Args:
        tokenizer: the GPT-2 tokenizer (any tokenizer with an EOS token).
        num_tokens: tokens per row (the window length with its two EOS, 1024 for OWT).
    """

    layout = "owt"
    code_tokenizer = None

    def __init__(self, tokenizer, num_tokens: int):
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError(
                "The 'owt' layout frames windows with EOS; this tokenizer has none. Use --ar-layout generic."
            )
        if int(num_tokens) < 3:
            raise ValueError(f"An OWT window needs at least 3 tokens (EOS, content, EOS), got num_tokens={num_tokens}.")
        self.tokenizer = tokenizer
        self.num_tokens = int(num_tokens)
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.vocab_size = len(tokenizer)

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
        """Rows of GPT-2 ids -> texts (:meth:`ids_for_token_entropy`, then decoded with special tokens kept)."""
        cleaned = self.ids_for_token_entropy(ids)
        return self.tokenizer.batch_decode(cleaned, skip_special_tokens=False) if cleaned else []


def causal_lm_text_rules(tokenizer, layout: str, num_tokens: int, recorded_recipe: str | None = None) -> Any:
    """The decoding, entropy and packing rules of an AR model's rows (see the module docstring).

    Args:
        tokenizer: the AR model's tokenizer.
        layout: one of :data:`AR_TEXT_LAYOUTS`.
        num_tokens: tokens per row.
        recorded_recipe: the training run's ``data_recipe``, if recorded (used by ``"auto"``).

    Returns:
        a :class:`~bitstream_diffusion.TextBitCodec` (``"lm1b"``, ``"generic"``) or a :class:`GPT2WindowRules`.
    """
    from ..codecs import TextBitCodec

    if layout not in AR_TEXT_LAYOUTS:
        raise ValueError(f"`ar_layout` must be one of {list(AR_TEXT_LAYOUTS)}, got {layout!r}.")
    if layout == "auto":
        layout = detect_text_layout(tokenizer, recorded_recipe)
    if layout == "owt":
        return GPT2WindowRules(tokenizer, num_tokens)
    if layout == "lm1b":
        return TextBitCodec(tokenizer, layout="lm1b", num_tokens=num_tokens, clean_up_tokenization_spaces=False)
    return TextBitCodec(tokenizer, layout="generic", num_tokens=num_tokens)

