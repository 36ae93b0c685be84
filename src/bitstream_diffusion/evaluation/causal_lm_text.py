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
  (:class:`~bitstream_diffusion.codecs.causal_lm_rows.GPT2WindowCodec`).
* ``"generic"``: any other tokenizer: :class:`~bitstream_diffusion.TextBitCodec` with ``layout="generic"``
  (reference rows one text per row, padded; decoding skips special tokens; entropy over every position).

``"auto"`` takes the ``data_recipe`` recorded by the training run when there is one, else ``"lm1b"`` for a tokenizer
with ``[SEP]``/``[PAD]``/``[CLS]`` and no EOS (BERT), else ``"generic"``.

Generation starts from one *start token* that is not part of the row (:func:`start_token_id`, from
:mod:`bitstream_diffusion.codecs.causal_lm_rows`, which training uses too: the tokenizer's BOS,
else its CLS, else its EOS: ``<|endoftext|>`` for GPT-2, ``[CLS]`` for BERT): the model reads
``[start] + row[:-1]`` and predicts ``row``, both when it samples and when its held-out likelihood is measured.
"""

from __future__ import annotations

from typing import Any

from ..codecs.causal_lm_rows import GPT2WindowCodec, causal_lm_row_codec
from ..codecs.causal_lm_rows import causal_lm_start_token_id as start_token_id

__all__ = ["AR_TEXT_LAYOUTS", "GPT2WindowCodec", "causal_lm_text_rules", "detect_text_layout", "start_token_id"]

AR_TEXT_LAYOUTS: tuple[str, ...] = ("auto", "lm1b", "owt", "generic")
"""The ``--ar-layout`` choices (see the module docstring)."""


def detect_text_layout(tokenizer, recorded_recipe: str | None = None) -> str:
    """The layout ``"auto"`` resolves to (see the module docstring)."""
    if recorded_recipe in ("lm1b", "owt", "generic"):
        return recorded_recipe
    has = {name: getattr(tokenizer, f"{name}_token_id", None) is not None for name in ("sep", "pad", "cls", "eos")}
    if has["sep"] and has["pad"] and has["cls"] and not has["eos"]:
        return "lm1b"
    return "generic"


def causal_lm_text_rules(tokenizer, layout: str, num_tokens: int, recorded_recipe: str | None = None) -> Any:
    """The decoding, entropy and packing rules of an AR model's rows (see the module docstring).

    Args:
        tokenizer: the AR model's tokenizer.
        layout: one of :data:`AR_TEXT_LAYOUTS`.
        num_tokens: tokens per row.
        recorded_recipe: the training run's ``data_recipe``, if recorded (used by ``"auto"``).

    Returns:
        a :class:`~bitstream_diffusion.TextBitCodec` (``"lm1b"``, ``"generic"``) or a :class:`GPT2WindowCodec`.
    """
    if layout not in AR_TEXT_LAYOUTS:
        raise ValueError(f"`ar_layout` must be one of {list(AR_TEXT_LAYOUTS)}, got {layout!r}.")
    if layout == "auto":
        layout = detect_text_layout(tokenizer, recorded_recipe)
    return causal_lm_row_codec(layout, tokenizer, num_tokens)

