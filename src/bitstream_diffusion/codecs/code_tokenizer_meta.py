"""The meta of the OWT code tokenizer: what it needs beyond its vocabulary, and the official ``*.meta.json`` format.

:class:`CodeTokenizerMeta` validates the official meta dict, writes it back in the official key order, and gives the
``CodeTokenizer.__init__`` arguments that carry it. Like :mod:`.code_tokenizer`, this file travels with a saved
tokenizer folder (``trust_remote_code`` loading), so it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CODE_SPECIAL_TOKENS",
    "DEFAULT_BASE_CHAR_OFFSET",
    "DEFAULT_CODE_VOCAB_SIZE",
    "META_CONFIG_KEY",
    "CodeTokenizerMeta",
]

DEFAULT_BASE_CHAR_OFFSET = 0xF0000
DEFAULT_CODE_VOCAB_SIZE = 65536
CODE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[EOSEQ]")
META_CONFIG_KEY = "code_tokenizer_meta"
"""Key under which folders saved by version 0.1 kept the whole meta in ``tokenizer_config.json`` (still read)."""

# GPT-2's facts, the same as `codecs.owt.GPT2_VOCAB_SIZE`, `GPT2_EOS_TOKEN_ID` and `OWT_BASE_SEQUENCE_LENGTH`: repeated
# here because this file must work without the package in a saved tokenizer folder.
_GPT2_VOCAB_SIZE = 50257
_GPT2_EOS_TOKEN_ID = 50256
_BASE_SEQUENCE_LENGTH = 1024
_MAX_CODEPOINT = 0x10FFFF

# Key order of the official `*.meta.json`.
_OFFICIAL_META_KEYS = (
    "format",
    "root",
    "source_flat_cache_path",
    "source_flat_meta_path",
    "source_flat_hf_split",
    "tokenizer_name_gpt2",
    "vocab_size_gpt2",
    "bos_token_id_gpt2",
    "eos_token_id_gpt2",
    "base_seq_len_tokens",
    "content_len_tokens",
    "base_char_offset",
    "target_code_vocab_size",
    "actual_code_vocab_size",
    "special_tokens",
    "pad_id",
    "unk_id",
    "eoseq_id",
    "train_strings_path",
    "num_training_sequences",
    "encoding_length_stats",
    "recommended_code_seq_len_tokens",
    "bits_per_code_token",
)
_LENGTH_STATS_KEYS = (
    "num_sequences_scanned",
    "encoded_len_min",
    "encoded_len_mean",
    "encoded_len_max",
    "encoded_len_p50",
    "encoded_len_p90",
    "encoded_len_p95",
    "encoded_len_p99",
    "encoded_len_p999",
)
_REQUIRED_META_KEYS = ("actual_code_vocab_size", "pad_id", "eoseq_id", "base_char_offset")


def _as_int(value: Any, key: str, source: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{source}: `{key}` must be a non-negative integer, got {value!r}. Re-create the meta with "
            "`CodeTokenizer.save_official_files` or fix the value by hand."
        )
    return int(value)


@dataclass
class CodeTokenizerMeta:
    """The facts a code tokenizer needs beyond its vocabulary (the official ``*.meta.json``).

    Attributes:
        actual_code_vocab_size: number of codes (65536 for the release); codes at or above it are invalid.
        pad_id, unk_id, eoseq_id: special code ids (``[PAD]``, ``[UNK]``, ``[EOSEQ]``).
        base_char_offset: code point of GPT-2 id 0 (``0xF0000``).
        vocab_size_gpt2: GPT-2 ids ``[0, vocab_size_gpt2)`` map to characters (50257).
        bos_token_id_gpt2, eos_token_id_gpt2: the window's synthetic BOS and EOS (both 50256 for GPT-2).
        base_seq_len_tokens: GPT-2 window length the tokenizer was trained on (1024; "base1024").
        target_code_vocab_size: the size asked of the trainer (``None`` when unknown).
        extra: every other key of the official meta (provenance, length statistics, ...), kept verbatim.
    """

    actual_code_vocab_size: int
    pad_id: int
    eoseq_id: int
    unk_id: int | None = None
    base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET
    vocab_size_gpt2: int = _GPT2_VOCAB_SIZE
    bos_token_id_gpt2: int = _GPT2_EOS_TOKEN_ID
    eos_token_id_gpt2: int = _GPT2_EOS_TOKEN_ID
    base_seq_len_tokens: int = _BASE_SEQUENCE_LENGTH
    target_code_vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _TYPED = (
        "actual_code_vocab_size",
        "pad_id",
        "eoseq_id",
        "unk_id",
        "base_char_offset",
        "vocab_size_gpt2",
        "bos_token_id_gpt2",
        "eos_token_id_gpt2",
        "base_seq_len_tokens",
        "target_code_vocab_size",
    )

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "code tokenizer meta") -> CodeTokenizerMeta:
        """Validate an official meta dict.

        Raises:
            ValueError: not a dict, a required key (``actual_code_vocab_size``, ``pad_id``, ``eoseq_id``,
                ``base_char_offset``) is missing, a value has the wrong type, or the PUA range overflows Unicode.
        """
        if not isinstance(data, dict):
            message = f"{source} must be a JSON object (the official *.meta.json), got {type(data).__name__}."
            raise ValueError(message)  # noqa: TRY004 - a malformed file, reported like the other meta errors
        missing = [key for key in _REQUIRED_META_KEYS if data.get(key) is None]
        if missing:
            raise ValueError(
                f"{source} lacks {missing}. Pass the *.meta.json written next to the tokenizer JSON by the official "
                "trainer (or by `CodeTokenizer.save_official_files`)."
            )
        values: dict[str, Any] = {}
        defaults = {f: cls.__dataclass_fields__[f].default for f in cls._TYPED}
        for key in cls._TYPED:
            allow_none = key in ("unk_id", "target_code_vocab_size")
            values[key] = _as_int(data.get(key, defaults[key]), key, source, allow_none=allow_none)
        meta = cls(**values, extra={k: v for k, v in data.items() if k not in cls._TYPED})
        if meta.actual_code_vocab_size < 1:
            raise ValueError(f"{source}: actual_code_vocab_size must be positive.")
        if meta.base_char_offset + meta.vocab_size_gpt2 - 1 > _MAX_CODEPOINT:
            raise ValueError(
                f"{source}: base_char_offset={meta.base_char_offset:#x} + vocab_size_gpt2={meta.vocab_size_gpt2} "
                f"passes the last Unicode code point {_MAX_CODEPOINT:#x}; the official offset is "
                f"{DEFAULT_BASE_CHAR_OFFSET:#x}."
            )
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The meta in the official key order (JSON-serialisable)."""
        derived = {
            "format": "gpt2id_bpe16",
            "content_len_tokens": self.base_seq_len_tokens - 2,
            "special_tokens": list(CODE_SPECIAL_TOKENS),
            "bits_per_code_token": max(1, (max(2, self.actual_code_vocab_size) - 1).bit_length()),  # ceil(log2 n)
        }
        typed = {key: getattr(self, key) for key in self._TYPED}
        out: dict[str, Any] = {}
        for key in _OFFICIAL_META_KEYS:
            if key in typed:
                if typed[key] is not None or key == "unk_id":
                    out[key] = typed[key]
            elif key in self.extra:
                out[key] = self.extra[key]
            elif key in derived:
                out[key] = derived[key]
        for key, value in self.extra.items():
            out.setdefault(key, value)
        stats = out.get("encoding_length_stats")
        if isinstance(stats, dict):  # transformers sorts nested keys when saving; restore the official order
            ordered = {key: stats[key] for key in _LENGTH_STATS_KEYS if key in stats}
            out["encoding_length_stats"] = {**ordered, **stats}
        return out

    def to_init_kwargs(self) -> dict[str, Any]:
        """The ``CodeTokenizer.__init__`` arguments that carry this meta (``meta_extra`` holds the untyped keys)."""
        return {**{key: getattr(self, key) for key in self._TYPED}, "meta_extra": dict(self.extra)}
