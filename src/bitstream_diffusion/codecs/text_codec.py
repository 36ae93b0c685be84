"""One text <-> bits codec for every CoBit layout, used by the pipeline and by training.

Layouts:

* ``"lm1b"`` (CoBit-S LM1B): bert-base-uncased ids, ``m = 15`` bits, 128 tokens. A text's lines are joined with
  ``[SEP]`` as the packing recipe does (:mod:`~bitstream_diffusion.codecs.lm1b`); a text shorter than the row is
  right-padded with ``[PAD]`` (what the official ``keep_remainder`` packing does; training rows are never padded), a
  longer one is cut. Decoding wraps invalid ids modulo 30522 and keeps special tokens as literal text.
* ``"owt"`` (CoBit OWT): GPT-2 ids re-coded by the code tokenizer (:mod:`~bitstream_diffusion.codecs.code_tokenizer`),
  ``m = 16`` bits, 1024 codes. A text (normalised like an OWT document) becomes one window
  ``[EOS] + ids[:1022] + [EOS]``: the document EOS of the flat stream is not added, since the window's closing EOS
  ends it, so a text comes back unchanged. Decoding follows the official stop/skip/strip rules.
* ``"generic"``: any transformers tokenizer, ``m = ceil(log2 len(tokenizer))``. Ids without special tokens, cut to
  the row and right-padded with the pad token (the EOS token when there is no pad token); decoding applies the
  invalid-id policy (``"wrap"``, as the official raw-binary decoder does for any tokenizer) and skips special tokens
  (so the padding disappears).

Where the official codec is lossless: ids -> bits -> ids always is (every valid id has its own pattern). Text comes
back exactly for OWT (GPT-2 is byte-level and lossless) unless the text is longer than the window; for LM1B text comes
back in BERT's normal form (lower-cased, accents stripped, punctuation spaced, unknown words as ``[UNK]``, lines joined
by ``[SEP]``) and padding shows as literal ``[PAD]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch

from .bits import (
    InvalidIdPolicy,
    apply_invalid_id_policy,
    bits_for_vocab,
    bits_to_ids,
    check_bits_per_token,
    check_invalid_id_policy,
    filter_invalid_ids,
    ids_to_bits,
)
from .code_tokenizer import CodeTokenizer
from .lm1b import LM1B_SEQUENCE_LENGTH, decode_lm1b_ids, lm1b_token_stream
from .owt import OWT_BASE_SEQUENCE_LENGTH, normalize_owt_text

__all__ = ["CODEC_LAYOUTS", "CodecLayout", "TextBitCodec"]

CodecLayout = Literal["lm1b", "owt", "generic"]
CODEC_LAYOUTS: tuple[str, ...] = get_args(CodecLayout)

_DEFAULT_POLICY = {"lm1b": "wrap", "owt": "skip", "generic": "wrap"}
_DEFAULT_NUM_TOKENS = {"lm1b": LM1B_SEQUENCE_LENGTH, "owt": OWT_BASE_SEQUENCE_LENGTH, "generic": None}
_DEFAULT_SKIP_SPECIAL = {"lm1b": False, "owt": False, "generic": True}
_CONFIG_KEYS = (
    "layout",
    "bits_per_token",
    "num_tokens",
    "vocab_size",
    "invalid_id_policy",
    "skip_special_tokens",
    "clean_up_tokenization_spaces",
)


def _check_encodable(text: str, index: int) -> None:
    """Tokenizers need valid Unicode: a lone surrogate (e.g. from bytes decoded with ``errors="surrogateescape"`` or a
    JSON ``"\\ud800"`` escape) cannot be encoded, and the tokenizer's own error does not say so."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start : error.end]
        raise ValueError(
            f"Text {index} holds a lone surrogate {bad!r} (code point U+{ord(bad[0]):04X}) at position {error.start}; "
            "it is not valid Unicode and cannot be tokenised. Fix the source, or drop such characters with "
            "`text.encode('utf-8', errors='replace').decode('utf-8')`."
        ) from None


def _as_texts(texts: str | Sequence[str]) -> list[str]:
    """One text or a sequence of texts as a list of valid Unicode strings (clear errors otherwise)."""
    if isinstance(texts, str):
        texts = [texts]
    elif texts is None or isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}.")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts must be a string or a list of strings, but item {index} is a {type(text).__name__}."
            )
        _check_encodable(text, index)
    return texts


class TextBitCodec:
    """Texts <-> token ids <-> flat {0, 1} bit rows, with the official rules of one layout.

    Args:
        tokenizer: the text tokenizer: bert-base-uncased (``"lm1b"``), GPT-2 (``"owt"``) or any transformers tokenizer.
        code_tokenizer: the OWT code tokenizer (a :class:`CodeTokenizer`); required for and only used by ``"owt"``.
        layout: ``"lm1b"``, ``"owt"`` or ``"generic"``; by default ``"owt"`` when a code tokenizer is given, else
            ``"generic"``.
        bits_per_token: defaults to ``ceil(log2 vocab_size)`` (15, 16, ...); a smaller value is an error.
        num_tokens: tokens (codes) per row: 128 for ``"lm1b"``, 1024 for ``"owt"``; ``"generic"`` has no default and
            then needs ``num_tokens`` in the encode calls.
        invalid_id_policy: what decoding does with ids ``>= vocab_size``: ``"wrap"`` (official LM1B, the default for
            ``"lm1b"`` and ``"generic"``), ``"skip"`` (official OWT, its default), ``"unk"``, ``"clip"`` or ``"error"``.
        skip_special_tokens: passed to the text tokenizer's decode; ``False`` (official) for ``"lm1b"``/``"owt"``,
            ``True`` for ``"generic"``.
        clean_up_tokenization_spaces: ``None`` keeps the tokenizer's setting; the official LM1B run had ``False``.

    Shapes: ids ``[B, T]`` int64; bits ``[B, T * bits_per_token]`` (uint8 by default).
    """

    def __init__(
        self,
        tokenizer,
        code_tokenizer: CodeTokenizer | None = None,
        *,
        layout: CodecLayout | None = None,
        bits_per_token: int | None = None,
        num_tokens: int | None = None,
        invalid_id_policy: InvalidIdPolicy | None = None,
        skip_special_tokens: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
    ):
        if layout is None:
            layout = "owt" if code_tokenizer is not None else "generic"
        if layout not in CODEC_LAYOUTS:
            raise ValueError(f"Unknown codec layout {layout!r}; choose one of {list(CODEC_LAYOUTS)}.")
        if layout == "owt":
            if code_tokenizer is None:
                raise ValueError(
                    "The 'owt' layout needs the second-stage code tokenizer: pass code_tokenizer="
                    "CodeTokenizer.from_official_files(json, meta) or CodeTokenizer.from_pretrained(folder)."
                )
            if not isinstance(code_tokenizer, CodeTokenizer):
                raise TypeError(
                    f"code_tokenizer must be a CodeTokenizer, got {type(code_tokenizer).__name__}: load it with "
                    "CodeTokenizer.from_pretrained(folder) or CodeTokenizer.from_official_files(json) (a tokenizer "
                    "saved by version 0.1 converts with CodeTokenizer.from_legacy_tokenizer)."
                )
            text_vocab = int(tokenizer.vocab_size)
            if text_vocab < code_tokenizer.meta.vocab_size_gpt2:
                raise ValueError(
                    f"The code tokenizer maps {code_tokenizer.meta.vocab_size_gpt2} GPT-2 ids but the text tokenizer "
                    f"has only {text_vocab}; pass the GPT-2 tokenizer the code tokenizer was trained for."
                )
            vocab_size = code_tokenizer.vocab_size
        elif code_tokenizer is not None:
            raise ValueError(f"A code tokenizer is only used by the 'owt' layout, not {layout!r}.")
        elif layout == "lm1b":
            if getattr(tokenizer, "sep_token_id", None) is None or getattr(tokenizer, "pad_token_id", None) is None:
                raise ValueError(
                    "The 'lm1b' layout joins lines with [SEP] and pads with [PAD]; this tokenizer lacks one of them. "
                    "Pass bert-base-uncased, or use layout='generic' for other tokenizers."
                )
            vocab_size = int(tokenizer.vocab_size)  # what the official decoder wraps by
        else:
            vocab_size = len(tokenizer)
        if int(vocab_size) < 1 or getattr(tokenizer, "vocab_size", 1) == 0:
            raise ValueError(
                f"The tokenizer {type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '') or 'unnamed'}) has "
                "an empty vocabulary, so no text can be written as ids. Its vocabulary files are missing or empty: "
                "load the tokenizer the model was trained with (e.g. `AutoTokenizer.from_pretrained(folder)`)."
            )
        self.tokenizer = tokenizer
        self.code_tokenizer: CodeTokenizer | None = code_tokenizer
        self.layout: str = layout
        self.vocab_size: int = int(vocab_size)
        self.bits_per_token: int = (
            bits_for_vocab(self.vocab_size)
            if bits_per_token is None
            else check_bits_per_token(bits_per_token, self.vocab_size)
        )
        self.num_tokens: int | None = _DEFAULT_NUM_TOKENS[layout] if num_tokens is None else int(num_tokens)
        if self.num_tokens is not None and self.num_tokens < 1:
            raise ValueError(f"num_tokens must be positive, got {self.num_tokens}.")
        self.invalid_id_policy: str = check_invalid_id_policy(
            _DEFAULT_POLICY[layout] if invalid_id_policy is None else invalid_id_policy
        )
        if self.invalid_id_policy == "unk" and self._unk_id is None:
            raise ValueError("invalid_id_policy='unk' needs a tokenizer with an unknown token; choose another policy.")
        self.skip_special_tokens: bool = (
            _DEFAULT_SKIP_SPECIAL[layout] if skip_special_tokens is None else bool(skip_special_tokens)
        )
        self.clean_up_tokenization_spaces: bool | None = clean_up_tokenization_spaces
        if layout == "generic" and self._pad_id is None:
            raise ValueError(
                "The 'generic' layout pads rows with the tokenizer's pad token (or EOS), and this tokenizer has "
                "neither; set `tokenizer.pad_token` first."
            )

    # -- configuration --------------------------------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The codec's settings as a JSON-serialisable dict (for ``model_index.json`` / a pipeline config)."""
        return {
            "layout": self.layout,
            "bits_per_token": self.bits_per_token,
            "num_tokens": self.num_tokens,
            "vocab_size": self.vocab_size,
            "invalid_id_policy": self.invalid_id_policy,
            "skip_special_tokens": self.skip_special_tokens,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], tokenizer, code_tokenizer=None) -> TextBitCodec:
        """Rebuild a codec from :meth:`to_config` and its tokenizers.

        Raises:
            ValueError: unknown keys, or a ``vocab_size`` that does not match the given tokenizers.
        """
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"Unknown codec config keys {unknown}; expected a subset of {list(_CONFIG_KEYS)}.")
        settings = {k: v for k, v in config.items() if k not in ("vocab_size", "bits_per_token")}
        codec = cls(tokenizer, code_tokenizer, **settings)
        expected = config.get("vocab_size")
        if expected is not None and int(expected) != codec.vocab_size:
            raise ValueError(
                f"The codec config was saved with vocab_size={expected}, but the given tokenizers give "
                f"{codec.vocab_size}; load the tokenizer (and code tokenizer) saved with this config."
            )
        if config.get("bits_per_token") is not None:
            codec.bits_per_token = check_bits_per_token(config["bits_per_token"], codec.vocab_size)
        return codec

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"TextBitCodec({settings})"

    @property
    def num_bits(self) -> int | None:
        """Bits per row, ``num_tokens * bits_per_token`` (the model's sequence length S)."""
        return None if self.num_tokens is None else self.num_tokens * self.bits_per_token

    @property
    def _pad_id(self) -> int | None:
        if self.layout == "owt":
            return self.code_tokenizer.pad_id
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else getattr(self.tokenizer, "eos_token_id", None)

    @property
    def _unk_id(self) -> int | None:
        if self.layout == "owt":
            return self.code_tokenizer.unk_id
        return getattr(self.tokenizer, "unk_token_id", None)

    def _resolve_num_tokens(self, num_tokens: int | None) -> int:
        num_tokens = self.num_tokens if num_tokens is None else int(num_tokens)
        if num_tokens is None:
            raise ValueError("This codec has no default num_tokens; pass num_tokens (tokens per row).")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}.")
        return num_tokens

    # -- text -> ids ----------------------------------------------------------------------------------------------

    def _owt_content(self, texts: list[str]) -> list[list[int]]:
        normalised = [normalize_owt_text(t) for t in texts]
        content_len = self.code_tokenizer.meta.base_seq_len_tokens - 2
        encoded = self.tokenizer(normalised, add_special_tokens=False)["input_ids"] if normalised else []
        return [list(ids)[:content_len] for ids in encoded]

    def prompt_ids(self, texts: str | Sequence[str], num_tokens: int | None = None) -> list[list[int]]:
        """Token (code) ids of each text as the start of a row, without padding or any closing marker.

        ``"lm1b"``: the packed ids (lines joined by ``[SEP]``); ``"owt"``: codes of ``[EOS] + GPT-2 ids`` (no closing
        EOS, no ``[EOSEQ]``); ``"generic"``: ids without special tokens. Each list is cut to ``num_tokens``.
        """
        texts = _as_texts(texts)
        limit = self.num_tokens if num_tokens is None else int(num_tokens)
        if self.layout == "lm1b":
            rows = [lm1b_token_stream(t.splitlines(), self.tokenizer)[0] for t in texts]
        elif self.layout == "owt":
            bos = self.code_tokenizer.meta.bos_token_id_gpt2
            rows = self.code_tokenizer.encode_gpt2_ids([[bos] + ids for ids in self._owt_content(texts)])
        else:
            rows = [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        return [row[:limit] if limit is not None else row for row in rows]

    def encode_texts(self, texts: str | Sequence[str], num_tokens: int | None = None) -> torch.Tensor:
        """Texts -> fixed rows of ids as training sees them.

        Returns:
            ``int64`` ``[B, num_tokens]``: LM1B ids (``[PAD]``-padded), OWT code rows (codes, ``[EOSEQ]``, ``[PAD]``),
            or generic ids (pad-token padded).
        """
        texts = _as_texts(texts)
        num_tokens = self._resolve_num_tokens(num_tokens)
        if self.layout == "owt":
            meta = self.code_tokenizer.meta
            windows = [[meta.bos_token_id_gpt2] + ids + [meta.eos_token_id_gpt2] for ids in self._owt_content(texts)]
            if not windows:
                return torch.empty((0, num_tokens), dtype=torch.long)
            return self.code_tokenizer.encode_windows(windows, code_seq_len=num_tokens)
        rows = self.prompt_ids(texts, num_tokens)
        out = torch.full((len(rows), num_tokens), int(self._pad_id), dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def text_to_bits(
        self, texts: str | Sequence[str], num_tokens: int | None = None, *, dtype: torch.dtype = torch.uint8
    ) -> torch.Tensor:
        """Texts -> ``[B, num_tokens * bits_per_token]`` {0, 1} bits (MSB first), exactly the official layout."""
        return self.ids_to_bits(self.encode_texts(texts, num_tokens), dtype=dtype)

    # -- ids <-> bits ---------------------------------------------------------------------------------------------

    def ids_to_bits(self, ids: torch.Tensor, *, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """``[..., T]`` ids -> ``[..., T * bits_per_token]`` bits (see :func:`~.bits.ids_to_bits`)."""
        return ids_to_bits(ids, self.bits_per_token, dtype=dtype)

    def bits_to_ids(self, bits: torch.Tensor) -> torch.Tensor:
        """``[..., T * m]`` bits or probabilities (``clamp(p, 0, 1) > 0.5``) -> raw ``[..., T]`` ids (not wrapped)."""
        return bits_to_ids(bits, self.bits_per_token)

    # -- ids -> text ----------------------------------------------------------------------------------------------

    def _as_id_rows(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"ids must be integers, got {ids.dtype}; decode bits with `bits_to_text`.")
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2:
            raise ValueError(f"Expected ids [B, T] or [T], got shape {tuple(ids.shape)}.")
        return ids.long()

    def _apply_policy(self, ids: torch.Tensor) -> torch.Tensor:
        return apply_invalid_id_policy(ids, self.vocab_size, self.invalid_id_policy, unk_id=self._unk_id)

    def _cleanup_kwargs(self) -> dict[str, bool]:
        if self.clean_up_tokenization_spaces is None:
            return {}
        return {"clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}

    def decode_ids(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """``[B, T]`` ids (any values a bit pattern can give) -> ``B`` texts with the layout's official rules."""
        ids = self._apply_policy(self._as_id_rows(ids))
        if self.layout == "owt":
            gpt2_ids = self.code_tokenizer.decode_to_gpt2_ids(ids)
            return (
                self.tokenizer.batch_decode(
                    gpt2_ids, skip_special_tokens=self.skip_special_tokens, **self._cleanup_kwargs()
                )
                if gpt2_ids
                else []
            )
        if self.layout == "lm1b" and not self.skip_special_tokens:
            return decode_lm1b_ids(
                ids,
                self.tokenizer,
                vocab_size=self.vocab_size,
                invalid_id_policy=self.invalid_id_policy,
                clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
            )
        rows = filter_invalid_ids(ids, self.vocab_size) if self.invalid_id_policy == "skip" else ids.tolist()
        return self.tokenizer.batch_decode(rows, skip_special_tokens=self.skip_special_tokens, **self._cleanup_kwargs())

    def bits_to_text(self, bits: torch.Tensor) -> list[str]:
        """``[B, T * m]`` (or ``[T * m]``) bits or probabilities -> ``B`` texts."""
        if not isinstance(bits, torch.Tensor):
            raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}.")
        if bits.dim() not in (1, 2):
            raise ValueError(
                f"Expected bits [B, T * {self.bits_per_token}] or [T * {self.bits_per_token}], got shape "
                f"{tuple(bits.shape)}."
            )
        return self.decode_ids(self.bits_to_ids(bits))

    def ids_for_token_entropy(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
        """The ids the paper's token entropy counts, one list per row.

        ``"lm1b"``/``"generic"``: all positions after the invalid-id policy (the official LM1B rule: BERT ids after the
        modulo wrap, specials included); ``"owt"``: the decoded GPT-2 ids (stop/strip rules, internal EOS kept).
        """
        ids = self._apply_policy(self._as_id_rows(ids))
        if self.layout == "owt":
            return self.code_tokenizer.decode_to_gpt2_ids(ids)
        if self.invalid_id_policy == "skip":
            return filter_invalid_ids(ids, self.vocab_size)
        return ids.tolist()
