"""The OWT second-stage "code tokenizer" (official name ``gpt2id_bpe16``): GPT-2 ids -> byte-pair codes and back.

CoBit's OWT models do not see GPT-2 ids. Each 1024-token GPT-2 window is re-coded by a second byte-pair tokenizer
whose "characters" are GPT-2 ids, and the model generates the resulting 16-bit codes:

* each GPT-2 id ``t`` becomes the Unicode private-use character ``chr(base_char_offset + t)``
  (``base_char_offset = 0xF0000``), so a window is a 1024-character string;
* an HF ``tokenizers`` BPE with **no normaliser and no pre-tokenizer** (a whole window is one "word", merges cross
  document boundaries) is trained on one line per window, with special tokens ``[PAD] [UNK] [EOSEQ]`` and all
  50257 PUA characters forced into the alphabet; the target size is 65536 codes ("bpe16");
* encoding a window gives ``codes + [EOSEQ]``, right-padded with ``[PAD]`` to 1024 codes (truncated to 1024 with a
  final ``[EOSEQ]`` if longer);
* decoding stops at the first ``[PAD]`` or ``[EOSEQ]``, skips codes outside the vocabulary, maps the decoded
  characters back to GPT-2 ids (dropping every non-PUA character: separators, the letters of a literal ``[UNK]``,
  newline), then strips **one** leading and **one** trailing GPT-2 EOS (the window's synthetic BOS/EOS) and keeps
  internal ones.

The official trainer reads its training file line by line *with* the line breaks, so ``"\\n"`` enters the alphabet:
the official tokenizers have ``[PAD]=0 [UNK]=1 [EOSEQ]=2``, ``"\\n"=3`` and a single GPT-2 token ``t`` at code
``4 + t``. Ids are always read from the tokenizer and its meta, never assumed.

Files: the official release is a ``tokenizer_*.json`` (``tokenizers`` format) plus a ``*.meta.json``
(:meth:`CodeTokenizer.from_official_files`, :meth:`CodeTokenizer.save_official_files`). The transformers way is a
folder written by ``PreTrainedTokenizerFast.save_pretrained`` whose ``tokenizer_config.json`` carries the meta under
``"code_tokenizer_meta"`` (:meth:`CodeTokenizer.save_pretrained`, :meth:`CodeTokenizer.from_pretrained`);
``AutoTokenizer.from_pretrained(folder)`` loads it as a plain fast tokenizer and :meth:`CodeTokenizer.from_hf` restores
the meta.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bits import bits_for_vocab
from .owt import (
    GPT2_EOS_TOKEN_ID,
    GPT2_VOCAB_SIZE,
    OWT_BASE_SEQUENCE_LENGTH,
    num_owt_windows,
    owt_window,
)

__all__ = [
    "CODE_SPECIAL_TOKENS",
    "DEFAULT_BASE_CHAR_OFFSET",
    "DEFAULT_CODE_VOCAB_SIZE",
    "META_CONFIG_KEY",
    "CodeTokenizer",
    "CodeTokenizerMeta",
    "fit_code_row",
    "gpt2_ids_to_pua",
    "pua_to_gpt2_ids",
]

DEFAULT_BASE_CHAR_OFFSET = 0xF0000
DEFAULT_CODE_VOCAB_SIZE = 65536
CODE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[EOSEQ]")
META_CONFIG_KEY = "code_tokenizer_meta"
"""Key of the meta dict inside ``tokenizer_config.json`` (the transformers-way folder)."""

_MAX_CODEPOINT = 0x10FFFF

# Key order of the official ``*.meta.json`` (``scripts/owt/train_owt_gpt2id_bpe16.py``).
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
_NOOP_TEMPLATE_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {},
}


# ----------------------------------------------------------------------------------------------------------------------
# GPT-2 ids <-> private-use characters, fixed code rows
# ----------------------------------------------------------------------------------------------------------------------


def gpt2_ids_to_pua(gpt2_ids: Iterable[int], base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET) -> str:
    """One private-use character ``chr(base_char_offset + t)`` per GPT-2 id ``t``."""
    return "".join(chr(base_char_offset + int(t)) for t in gpt2_ids)


def pua_to_gpt2_ids(
    text: str,
    base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET,
    vocab_size_gpt2: int = GPT2_VOCAB_SIZE,
) -> list[int]:
    """GPT-2 ids of the private-use characters of ``text``; every other character is dropped (official ``"skip"``)."""
    ids = (ord(ch) - base_char_offset for ch in text)
    return [t for t in ids if 0 <= t < vocab_size_gpt2]


def fit_code_row(codes: Sequence[int], length: int, *, pad_id: int, eoseq_id: int) -> list[int]:
    """The official fixed code row: ``codes + [EOSEQ]``, right-padded with PAD, or cut to ``length`` ending in EOSEQ."""
    if length < 1:
        raise ValueError(f"The code row length must be positive, got {length}.")
    row = [int(c) for c in codes] + [int(eoseq_id)]
    if len(row) > length:
        row = row[:length]
        row[-1] = int(eoseq_id)
    return row + [int(pad_id)] * (length - len(row))


def _as_int(value: Any, key: str, source: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{source}: `{key}` must be a non-negative integer, got {value!r}. Re-create the meta with "
            "`CodeTokenizer.save_official_files` or fix the value by hand."
        )
    return int(value)


# ----------------------------------------------------------------------------------------------------------------------
# Meta
# ----------------------------------------------------------------------------------------------------------------------


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
    vocab_size_gpt2: int = GPT2_VOCAB_SIZE
    bos_token_id_gpt2: int = GPT2_EOS_TOKEN_ID
    eos_token_id_gpt2: int = GPT2_EOS_TOKEN_ID
    base_seq_len_tokens: int = OWT_BASE_SEQUENCE_LENGTH
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
        missing = [key for key in _REQUIRED_META_KEYS if key not in data]
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
                f"passes the last Unicode code point {_MAX_CODEPOINT:#x}; the official offset is {DEFAULT_BASE_CHAR_OFFSET:#x}."
            )
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The meta in the official key order (JSON-serialisable)."""
        derived = {
            "format": "gpt2id_bpe16",
            "content_len_tokens": self.base_seq_len_tokens - 2,
            "special_tokens": list(CODE_SPECIAL_TOKENS),
            "bits_per_code_token": bits_for_vocab(max(2, self.actual_code_vocab_size)),
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


# ----------------------------------------------------------------------------------------------------------------------
# The tokenizer
# ----------------------------------------------------------------------------------------------------------------------


class _FlatStreamWindows(Sequence):
    """Lazy view of the windows of a flat GPT-2 stream (a tensor, list or numpy memmap)."""

    def __init__(self, stream, base_seq_len: int, bos: int, eos: int):
        self.stream, self.base_seq_len, self.bos, self.eos = stream, base_seq_len, bos, eos
        self.n = num_owt_windows(len(stream), base_seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        return owt_window(
            self.stream, index, base_seq_len=self.base_seq_len, bos_token_id=self.bos, eos_token_id=self.eos
        ).tolist()


class CodeTokenizer:
    """The OWT code tokenizer: a ``tokenizers`` BPE over GPT-2-id characters plus its :class:`CodeTokenizerMeta`.

    Build one with :meth:`train`, :meth:`from_official_files`, :meth:`from_pretrained` or :meth:`from_hf`.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` or a transformers fast tokenizer wrapping one.
        meta: the meta (a :class:`CodeTokenizerMeta` or the official dict). ``None`` reads it from a transformers
            tokenizer's config, or infers it from the vocabulary with the official defaults.

    Raises:
        ValueError: the meta does not describe this tokenizer (vocabulary size, special ids, PUA alphabet).
    """

    def __init__(self, tokenizer, meta: CodeTokenizerMeta | dict | None = None):
        from tokenizers import Tokenizer

        hf_tokenizer = None
        if isinstance(tokenizer, Tokenizer):
            backend = tokenizer
        elif hasattr(tokenizer, "backend_tokenizer"):
            hf_tokenizer = tokenizer
            backend = tokenizer.backend_tokenizer
            if meta is None:
                meta = getattr(tokenizer, "init_kwargs", {}).get(META_CONFIG_KEY)
        else:
            raise TypeError(
                "CodeTokenizer needs a `tokenizers.Tokenizer` or a transformers fast tokenizer, got "
                f"{type(tokenizer).__name__}."
            )
        if type(backend.model).__name__ != "BPE":
            raise ValueError(
                f"The code tokenizer must be a BPE model, got {type(backend.model).__name__}; pass the official "
                "tokenizer_gpt2id_bpe16_*.json."
            )
        if meta is None:
            meta = self._infer_meta(backend)
        elif isinstance(meta, dict):
            meta = CodeTokenizerMeta.from_dict(meta)
        self._backend = backend
        self._hf_tokenizer = hf_tokenizer
        self.meta: CodeTokenizerMeta = meta
        self._check_meta()
        if hf_tokenizer is not None:  # keep the meta in the tokenizer's config so `save_pretrained` writes it
            hf_tokenizer.init_kwargs[META_CONFIG_KEY] = self.meta.to_dict()
        self._code_to_gpt2: list[tuple[int, ...]] | None = None
        self._token_lengths: list[int] | None = None

    # -- construction ---------------------------------------------------------------------------------------------

    @staticmethod
    def _infer_meta(backend) -> CodeTokenizerMeta:
        vocab = backend.get_vocab(with_added_tokens=True)
        missing = [name for name in ("[PAD]", "[EOSEQ]") if name not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer has no {missing} token and no code tokenizer meta was given; pass the official "
                "*.meta.json (or a meta dict) so the special ids are known."
            )
        return CodeTokenizerMeta(
            actual_code_vocab_size=backend.get_vocab_size(with_added_tokens=True),
            pad_id=vocab["[PAD]"],
            eoseq_id=vocab["[EOSEQ]"],
            unk_id=vocab.get("[UNK]"),
        )

    def _check_meta(self) -> None:
        meta, backend = self.meta, self._backend
        size = backend.get_vocab_size(with_added_tokens=True)
        if size != meta.actual_code_vocab_size:
            raise ValueError(
                f"The meta says actual_code_vocab_size={meta.actual_code_vocab_size} but the tokenizer has {size} "
                "codes: the meta belongs to another tokenizer. Pass the *.meta.json written with this tokenizer JSON."
            )
        added = set(backend.get_added_tokens_decoder()) if hasattr(backend, "get_added_tokens_decoder") else None
        for key in ("pad_id", "eoseq_id", "unk_id"):
            value = getattr(meta, key)
            if value is None:
                continue
            if value >= size or (added is not None and value not in added):
                raise ValueError(
                    f"The meta's {key}={value} is not a special token of the tokenizer (its specials are "
                    f"{sorted(added) if added is not None else '?'}); the meta belongs to another tokenizer."
                )
        if meta.pad_id == meta.eoseq_id:
            raise ValueError(f"pad_id and eoseq_id must differ, both are {meta.pad_id}.")
        probe = chr(meta.base_char_offset + meta.eos_token_id_gpt2)
        if backend.token_to_id(probe) is None:
            raise ValueError(
                f"The tokenizer has no code for GPT-2 id {meta.eos_token_id_gpt2} at base_char_offset="
                f"{meta.base_char_offset:#x}: the offset is wrong or this is not a GPT-2-id code tokenizer."
            )

    @classmethod
    def from_official_files(
        cls, tokenizer_file: str | os.PathLike, meta_file: str | os.PathLike | None = None
    ) -> CodeTokenizer:
        """Load the official ``tokenizer_gpt2id_bpe16_*.json`` and its ``.meta.json``.

        Args:
            tokenizer_file: the ``tokenizers`` JSON.
            meta_file: defaults to ``tokenizer_file`` with the suffix ``.meta.json`` (the official convention).

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: a file is not valid JSON / not a ``tokenizers`` file, or the meta does not match.
        """
        from tokenizers import Tokenizer

        tokenizer_file = Path(tokenizer_file)
        meta_file = tokenizer_file.with_suffix(".meta.json") if meta_file is None else Path(meta_file)
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"Code tokenizer JSON not found: {tokenizer_file}.")
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"Code tokenizer meta not found: {meta_file}. The official release ships it next to the JSON "
                "(same name, suffix .meta.json); pass its path as meta_file."
            )
        try:
            backend = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(
                f"{tokenizer_file} is not a valid `tokenizers` JSON file ({error}). Pass the official "
                "tokenizer_gpt2id_bpe16_*.json (or one written by `CodeTokenizer.save_official_files`)."
            ) from error
        try:
            with open(meta_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{meta_file} is not valid JSON ({error}). Pass the official *.meta.json of this tokenizer."
            ) from error
        return cls(backend, CodeTokenizerMeta.from_dict(data, source=str(meta_file)))

    @classmethod
    def from_hf(cls, tokenizer) -> CodeTokenizer:
        """Wrap a transformers fast tokenizer (e.g. a pipeline component); the meta comes from its config."""
        if isinstance(tokenizer, CodeTokenizer):
            return tokenizer
        return cls(tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> CodeTokenizer:
        """Load a folder written by :meth:`save_pretrained` (``kwargs`` go to ``from_pretrained``, e.g. ``subfolder``)."""
        from transformers import PreTrainedTokenizerFast

        return cls(PreTrainedTokenizerFast.from_pretrained(pretrained_model_name_or_path, **kwargs))

    @classmethod
    def train(
        cls,
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
        """Train a code tokenizer as ``scripts/owt/train_owt_gpt2id_bpe16.py`` does.

        One training line per window (``"\\n"``-terminated, as the official file-based training reads it), HF
        ``BpeTrainer(vocab_size=code_vocab_size, min_frequency, special_tokens=[PAD, UNK, EOSEQ],
        initial_alphabet=all GPT-2 PUA characters)``, no normaliser, no pre-tokenizer. On the same windows this
        reproduces the official JSON byte for byte.

        Args:
            gpt2_windows: ``[n, base_seq_len]`` GPT-2 windows with their BOS/EOS (see
                :func:`~bitstream_diffusion.codecs.owt.owt_windows`), or any re-iterable sequence of id lists.
            code_vocab_size: target number of codes (65536 in the paper; fewer when the corpus is small).
            compute_length_stats: re-encode every window for the meta's ``encoding_length_stats`` (as the official
                script does); switch off for very large corpora.
            meta_extra: extra meta entries (provenance such as ``root`` or ``source_flat_hf_split``).
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
            raise ValueError("No GPT-2 windows to train the code tokenizer on.")

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
            lengths = np.asarray(
                [len(enc.ids) for enc in cls._encode_batches(backend, (line[:-1] for line in lines()))],
                dtype=np.int64,
            )
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
        return cls(backend, meta)

    @classmethod
    def train_from_flat_stream(
        cls,
        stream: torch.Tensor | np.ndarray | Sequence[int],
        *,
        base_seq_len: int = OWT_BASE_SEQUENCE_LENGTH,
        bos_token_id: int = GPT2_EOS_TOKEN_ID,
        eos_token_id: int = GPT2_EOS_TOKEN_ID,
        **kwargs,
    ) -> CodeTokenizer:
        """:meth:`train` on every window of a flat GPT-2 stream (windows are cut lazily, so a memmap works)."""
        windows = _FlatStreamWindows(stream, base_seq_len, bos_token_id, eos_token_id)
        return cls.train(windows, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    # -- saving ---------------------------------------------------------------------------------------------------

    def _official_backend_json(self) -> str:
        data = json.loads(self._backend.to_str())
        if data.get("post_processor") == _NOOP_TEMPLATE_POST_PROCESSOR:
            data["post_processor"] = None  # transformers adds a no-op template; the official files have none
        from tokenizers import Tokenizer

        return Tokenizer.from_str(json.dumps(data)).to_str(pretty=True)

    def save_official_files(
        self, tokenizer_file: str | os.PathLike, meta_file: str | os.PathLike | None = None
    ) -> tuple[Path, Path]:
        """Write the official pair: the ``tokenizers`` JSON and the ``.meta.json`` (``indent=2``) next to it."""
        tokenizer_file = Path(tokenizer_file)
        meta_file = tokenizer_file.with_suffix(".meta.json") if meta_file is None else Path(meta_file)
        tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
        with open(tokenizer_file, "w", encoding="utf-8") as handle:
            handle.write(self._official_backend_json())
        with open(meta_file, "w", encoding="utf-8") as handle:
            json.dump(self.meta.to_dict(), handle, indent=2)
        return tokenizer_file, meta_file

    @property
    def hf_tokenizer(self):
        """The transformers fast tokenizer (``[PAD]``/``[UNK]``/``[EOSEQ]`` as pad/unk/eos, meta in its config)."""
        if self._hf_tokenizer is None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            meta = self.meta
            self._hf_tokenizer = PreTrainedTokenizerFast(
                tokenizer_object=Tokenizer.from_str(self._backend.to_str()),
                pad_token=self._backend.id_to_token(meta.pad_id),
                eos_token=self._backend.id_to_token(meta.eoseq_id),
                unk_token=None if meta.unk_id is None else self._backend.id_to_token(meta.unk_id),
                **{META_CONFIG_KEY: meta.to_dict()},
            )
        return self._hf_tokenizer

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        """Save the transformers way (``tokenizer.json`` + ``tokenizer_config.json`` holding the meta)."""
        return self.hf_tokenizer.save_pretrained(save_directory, **kwargs)

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def backend_tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of codes (``actual_code_vocab_size``)."""
        return self.meta.actual_code_vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return self.meta.pad_id

    @property
    def eoseq_id(self) -> int:
        return self.meta.eoseq_id

    @property
    def unk_id(self) -> int | None:
        return self.meta.unk_id

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"CodeTokenizer(codes={m.actual_code_vocab_size}, pad_id={m.pad_id}, unk_id={m.unk_id}, "
            f"eoseq_id={m.eoseq_id}, base_char_offset={m.base_char_offset:#x})"
        )

    # -- encoding -------------------------------------------------------------------------------------------------

    @staticmethod
    def _encode_batches(backend, strings: Iterable[str], batch_size: int = 2048):
        batch: list[str] = []
        for text in strings:
            batch.append(text)
            if len(batch) >= batch_size:
                yield from backend.encode_batch(batch, add_special_tokens=False)
                batch = []
        if batch:
            yield from backend.encode_batch(batch, add_special_tokens=False)

    def _as_id_lists(self, gpt2_ids) -> list[list[int]]:
        if isinstance(gpt2_ids, torch.Tensor):
            if gpt2_ids.dim() == 1:
                gpt2_ids = gpt2_ids.unsqueeze(0)
            if gpt2_ids.dim() != 2:
                raise ValueError(f"Expected GPT-2 ids [B, L] or [L], got shape {tuple(gpt2_ids.shape)}.")
            rows = gpt2_ids.long().tolist()
        else:
            rows = [list(map(int, row)) for row in gpt2_ids]
        limit = self.meta.vocab_size_gpt2
        for row in rows:
            if row and (min(row) < 0 or max(row) >= limit):
                raise ValueError(f"GPT-2 ids must lie in [0, {limit}), got a row with ids in [{min(row)}, {max(row)}].")
        return rows

    def encode_gpt2_ids(self, gpt2_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
        """Raw BPE codes of each GPT-2 id sequence (no ``[EOSEQ]``, no padding; variable length)."""
        offset = self.meta.base_char_offset
        strings = [gpt2_ids_to_pua(row, offset) for row in self._as_id_lists(gpt2_ids)]
        return [list(enc.ids) for enc in self._encode_batches(self._backend, strings)]

    def encode_windows(
        self, gpt2_windows: torch.Tensor | Sequence[Sequence[int]], code_seq_len: int = OWT_BASE_SEQUENCE_LENGTH
    ) -> torch.Tensor:
        """The official fixed code rows of GPT-2 windows (``[BOS] + content + [EOS]``).

        Args:
            gpt2_windows: ``[B, L]`` ids (or a list of id lists of any lengths).
            code_seq_len: codes per row (1024).

        Returns:
            ``int64`` ``[B, code_seq_len]``: codes, ``[EOSEQ]``, then ``[PAD]`` (cut with a final ``[EOSEQ]``).
        """
        rows = [
            fit_code_row(codes, code_seq_len, pad_id=self.pad_id, eoseq_id=self.eoseq_id)
            for codes in self.encode_gpt2_ids(gpt2_windows)
        ]
        return torch.tensor(rows, dtype=torch.long).view(len(rows), int(code_seq_len))

    # -- decoding -------------------------------------------------------------------------------------------------

    def _decode_tables(self) -> tuple[list[tuple[int, ...]], list[int]]:
        if self._code_to_gpt2 is None:
            offset, limit = self.meta.base_char_offset, self.meta.vocab_size_gpt2
            tokens = [self._backend.id_to_token(i) or "" for i in range(self.vocab_size)]
            self._code_to_gpt2 = [tuple(pua_to_gpt2_ids(tok, offset, limit)) for tok in tokens]
            self._token_lengths = [len(tok) for tok in tokens]
        return self._code_to_gpt2, self._token_lengths

    def decode_to_gpt2_ids(
        self, code_ids: torch.Tensor | Sequence[Sequence[int]], *, return_debug: bool = False
    ) -> list[list[int]] | tuple[list[list[int]], list[dict[str, int]]]:
        """The official inverse codec: code rows -> cleaned GPT-2 id lists.

        Per row: stop at the first ``[PAD]`` or ``[EOSEQ]``; keep codes in ``[0, actual_code_vocab_size)`` and skip
        the rest; decode the kept codes (space-joined tokens); keep the characters that are GPT-2 PUA characters; strip
        one leading and one trailing GPT-2 EOS, keep internal ones. Equivalent to the official
        ``code_ids_to_gpt2_token_id_lists_for_eval``, without calling ``tokenizer.decode``.

        Args:
            code_ids: ``[B, T]`` or ``[T]`` code ids (any integers).
            return_debug: also return the official per-row counters (``code_n_kept``, ``code_n_invalid_skipped``,
                ``code_hit_pad``, ``code_hit_eoseq``, ``code_stop_idx``, ``pua_len``, ...).

        Returns:
            ``B`` lists of GPT-2 ids (possibly empty), and the counters when asked.
        """
        if isinstance(code_ids, torch.Tensor):
            if code_ids.dim() == 1:
                code_ids = code_ids.unsqueeze(0)
            if code_ids.dim() != 2:
                raise ValueError(f"Expected code ids [B, T] or [T], got shape {tuple(code_ids.shape)}.")
            if code_ids.is_floating_point() or code_ids.dtype == torch.bool:
                raise TypeError(f"code ids must be an integer tensor, got {code_ids.dtype}; use `.long()`.")
            rows = code_ids.long().tolist()
        else:
            rows = [list(map(int, row)) for row in code_ids]
        code_to_gpt2, token_lengths = self._decode_tables()
        meta = self.meta
        size, pad, eoseq, unk, eos = (
            meta.actual_code_vocab_size,
            meta.pad_id,
            meta.eoseq_id,
            meta.unk_id,
            meta.eos_token_id_gpt2,
        )
        outputs: list[list[int]] = []
        debug: list[dict[str, int]] = []
        for row_idx, row in enumerate(rows):
            kept: list[int] = []
            n_invalid = n_unk = hit_pad = hit_eoseq = 0
            stop_idx = -1
            for idx, code in enumerate(row):
                if code == pad:
                    hit_pad, stop_idx = 1, idx
                    break
                if code == eoseq:
                    hit_eoseq, stop_idx = 1, idx
                    break
                if 0 <= code < size:
                    kept.append(code)
                elif unk is not None and code == unk:  # unreachable for in-range UNK; mirrors the official counter
                    kept.append(code)
                    n_unk += 1
                else:
                    n_invalid += 1
            full = [t for code in kept for t in code_to_gpt2[code]]
            ids = full
            dropped_lead = dropped_trail = 0
            if ids and ids[0] == eos:
                ids, dropped_lead = ids[1:], 1
            if ids and ids[-1] == eos:
                ids, dropped_trail = ids[:-1], 1
            outputs.append(ids)
            if return_debug:
                debug.append(
                    {
                        "row_idx": row_idx,
                        "code_n_input": len(row),
                        "code_n_kept": len(kept),
                        "code_n_invalid_skipped": n_invalid,
                        "code_hit_pad": hit_pad,
                        "code_hit_eoseq": hit_eoseq,
                        "code_n_unk_kept": n_unk,
                        "code_stop_idx": stop_idx,
                        "pua_len": sum(token_lengths[c] for c in kept) + max(0, len(kept) - 1),
                        "gpt2_len_before_edge_strip": len(full),
                        "dropped_leading_bos_like_eos": dropped_lead,
                        "dropped_trailing_synthetic_eos": dropped_trail,
                        "gpt2_len_after_edge_strip": len(ids),
                    }
                )
        return (outputs, debug) if return_debug else outputs

    def decode_to_text(
        self,
        code_ids: torch.Tensor | Sequence[Sequence[int]],
        gpt2_tokenizer,
        *,
        clean_up_tokenization_spaces: bool | None = None,
        return_debug: bool = False,
    ) -> list[str] | tuple[list[str], list[dict[str, int]]]:
        """Code rows -> text: :meth:`decode_to_gpt2_ids`, then ``gpt2.decode(ids, skip_special_tokens=False)``.

        Internal ``<|endoftext|>`` stays literal; an empty id list gives ``""``.
        """
        ids, debug = self.decode_to_gpt2_ids(code_ids, return_debug=True)
        kwargs = (
            {}
            if clean_up_tokenization_spaces is None
            else {"clean_up_tokenization_spaces": clean_up_tokenization_spaces}
        )
        texts = gpt2_tokenizer.batch_decode(ids, skip_special_tokens=False, **kwargs) if ids else []
        return (texts, debug) if return_debug else texts
