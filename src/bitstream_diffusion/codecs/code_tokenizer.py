"""The OWT second-stage "code tokenizer" (``gpt2id_bpe16``): GPT-2 ids -> byte-pair codes and back.

CoBit's OWT models do not see GPT-2 ids. Each 1024-token GPT-2 window is re-coded by a second byte-pair tokenizer
whose "characters" are GPT-2 ids, and the model generates the resulting 16-bit codes:

* each GPT-2 id ``t`` becomes the Unicode private-use character ``chr(base_char_offset + t)``
  (``base_char_offset = 0xF0000``), so a window is a 1024-character string;
* a ``tokenizers`` BPE with **no normaliser and no pre-tokenizer** (a whole window is one "word", merges cross
  document boundaries) is trained on one line per window, with special tokens ``[PAD] [UNK] [EOSEQ]`` and all
  50257 private-use characters forced into the alphabet; the target size is 65536 codes ("bpe16");
* encoding a window gives ``codes + [EOSEQ]``, right-padded with ``[PAD]`` to 1024 codes (truncated to 1024 with a
  final ``[EOSEQ]`` if longer);
* decoding stops at the first ``[PAD]`` or ``[EOSEQ]``, skips codes outside the vocabulary, maps the codes' characters
  back to GPT-2 ids (dropping every character that is not a GPT-2 private-use character), then strips **one** leading
  and **one** trailing GPT-2 EOS (the window's synthetic BOS/EOS) and keeps internal ones.

The official trainer read its training file line by line *with* the line breaks, so ``"\\n"`` entered the alphabet:
the official tokenizers have ``[PAD]=0 [UNK]=1 [EOSEQ]=2``, ``"\\n"=3`` and a single GPT-2 token ``t`` at code
``4 + t``. Ids are always read from the tokenizer and its meta, never assumed (``docs/design.md#codecs``).

:class:`CodeTokenizer` is a ``transformers`` fast tokenizer: its meta (``actual_code_vocab_size``, ``pad_id``,
``eoseq_id``, ``base_char_offset``, ...) are ``__init__`` arguments, so ``save_pretrained`` writes them into
``tokenizer_config.json`` and ``from_pretrained`` reads them back. A saved folder also carries this file and
:mod:`.code_tokenizer_meta`, so ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` loads it without
this package; the two files therefore import nothing else from the package. The official release is a
``tokenizer_*.json`` (``tokenizers`` format) plus a ``*.meta.json``: :meth:`CodeTokenizer.from_official_files` reads
them and :meth:`CodeTokenizer.save_official_files` writes them byte for byte. Training lives in
:mod:`bitstream_diffusion.codecs.code_tokenizer_training`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .code_tokenizer_meta import (
    _BASE_SEQUENCE_LENGTH,
    _GPT2_EOS_TOKEN_ID,
    _GPT2_VOCAB_SIZE,
    CODE_SPECIAL_TOKENS,
    DEFAULT_BASE_CHAR_OFFSET,
    DEFAULT_CODE_VOCAB_SIZE,
    META_CONFIG_KEY,
    CodeTokenizerMeta,
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

_NOOP_TEMPLATE_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {},
}


def gpt2_ids_to_pua(gpt2_ids: Iterable[int], base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET) -> str:
    """One private-use character ``chr(base_char_offset + t)`` per GPT-2 id ``t``."""
    return "".join(chr(base_char_offset + int(t)) for t in gpt2_ids)


def pua_to_gpt2_ids(
    text: str, base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET, vocab_size_gpt2: int = _GPT2_VOCAB_SIZE
) -> list[int]:
    """GPT-2 ids of the private-use characters of ``text``; every other character is dropped."""
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


class CodeTokenizer(PreTrainedTokenizerFast):
    """The OWT code tokenizer: a fast BPE tokenizer over GPT-2-id characters whose meta are ``__init__`` arguments.

    Build one with :meth:`from_official_files`, ``from_pretrained`` (a folder written by ``save_pretrained``, also
    one written by version 0.1), :func:`~bitstream_diffusion.codecs.train_code_tokenizer_on_windows`, or directly
    from a ``tokenizers.Tokenizer`` (``tokenizer_object=``) or a ``tokenizer.json`` (``tokenizer_file=``).

    Args:
        tokenizer_file: a ``tokenizers`` JSON file (or pass ``tokenizer_object``).
        actual_code_vocab_size, pad_id, eoseq_id, unk_id, base_char_offset, vocab_size_gpt2, bos_token_id_gpt2,
        eos_token_id_gpt2, base_seq_len_tokens, target_code_vocab_size: the meta (:class:`CodeTokenizerMeta`). When
            ``actual_code_vocab_size``, ``pad_id`` and ``eoseq_id`` are all unset, they (and ``unk_id``) are read from
            the vocabulary's ``[PAD]``, ``[EOSEQ]`` and ``[UNK]`` tokens and the other fields take the official values.
        meta_extra: the other keys of the official meta (provenance, length statistics), kept for
            :meth:`save_official_files`.
        kwargs: passed to ``PreTrainedTokenizerFast`` (``tokenizer_object``, special tokens, ...).

    Raises:
        TypeError: ``tokenizer_object`` is not a ``tokenizers.Tokenizer``.
        ValueError: the tokenizer is not a BPE, or the meta does not describe it (vocabulary size, special ids, PUA
            alphabet).
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids"]

    def __init__(
        self,
        tokenizer_file: str | os.PathLike | None = None,
        *,
        actual_code_vocab_size: int | None = None,
        pad_id: int | None = None,
        eoseq_id: int | None = None,
        unk_id: int | None = None,
        base_char_offset: int = DEFAULT_BASE_CHAR_OFFSET,
        vocab_size_gpt2: int = _GPT2_VOCAB_SIZE,
        bos_token_id_gpt2: int = _GPT2_EOS_TOKEN_ID,
        eos_token_id_gpt2: int = _GPT2_EOS_TOKEN_ID,
        base_seq_len_tokens: int = _BASE_SEQUENCE_LENGTH,
        target_code_vocab_size: int | None = None,
        meta_extra: dict[str, Any] | None = None,
        **kwargs,
    ):
        legacy_meta = kwargs.pop(META_CONFIG_KEY, None)
        tokenizer_object = kwargs.get("tokenizer_object")
        if tokenizer_object is not None:
            if not isinstance(tokenizer_object, Tokenizer):
                raise TypeError(
                    "CodeTokenizer needs a `tokenizers.Tokenizer` as tokenizer_object (for a transformers tokenizer, "
                    f"pass its `.backend_tokenizer`), got {type(tokenizer_object).__name__}."
                )
            self._check_bpe(tokenizer_object)
        super().__init__(tokenizer_file=None if tokenizer_file is None else str(tokenizer_file), **kwargs)
        backend = self.backend_tokenizer
        self._check_bpe(backend)
        if legacy_meta is not None:
            meta = CodeTokenizerMeta.from_dict(legacy_meta, source=f"{self.name_or_path or 'tokenizer'} config")
        elif actual_code_vocab_size is None and pad_id is None and eoseq_id is None:
            meta = self._infer_meta(backend)
        else:
            typed = dict(
                actual_code_vocab_size=actual_code_vocab_size,
                pad_id=pad_id,
                eoseq_id=eoseq_id,
                unk_id=unk_id,
                base_char_offset=base_char_offset,
                vocab_size_gpt2=vocab_size_gpt2,
                bos_token_id_gpt2=bos_token_id_gpt2,
                eos_token_id_gpt2=eos_token_id_gpt2,
                base_seq_len_tokens=base_seq_len_tokens,
                target_code_vocab_size=target_code_vocab_size,
            )
            meta = CodeTokenizerMeta.from_dict({**(meta_extra or {}), **typed}, source="CodeTokenizer arguments")
        self._check_meta(meta, backend)
        self.meta: CodeTokenizerMeta = meta
        self.init_kwargs.pop(META_CONFIG_KEY, None)
        self.init_kwargs.update(meta.to_init_kwargs())  # what `save_pretrained` writes to tokenizer_config.json
        for attribute, code in (("pad_token", meta.pad_id), ("eos_token", meta.eoseq_id), ("unk_token", meta.unk_id)):
            if code is not None and getattr(self, attribute) is None:
                setattr(self, attribute, backend.id_to_token(code))
        self._code_to_gpt2: list[tuple[int, ...]] | None = None

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def convert_to_native_format(cls, trust_remote_code: bool = False, **kwargs) -> dict[str, Any]:
        """Keep ``tokenizer_file`` as it is: ``tokenizer.json`` is the whole backend (the base class would rebuild a
        BPE from its vocabulary and merges for a class with its own ``__init__``)."""
        return kwargs

    @staticmethod
    def _check_bpe(backend: Tokenizer) -> None:
        if type(backend.model).__name__ != "BPE":
            raise ValueError(
                f"The code tokenizer must be a BPE model, got {type(backend.model).__name__}; pass the official "
                "tokenizer_gpt2id_bpe16_*.json."
            )

    @staticmethod
    def _infer_meta(backend: Tokenizer) -> CodeTokenizerMeta:
        vocab = backend.get_vocab(with_added_tokens=True)
        missing = [name for name in ("[PAD]", "[EOSEQ]") if name not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer has no {missing} token and no code tokenizer meta was given; pass the official "
                "*.meta.json (or the meta arguments) so the special ids are known."
            )
        return CodeTokenizerMeta(
            actual_code_vocab_size=backend.get_vocab_size(with_added_tokens=True),
            pad_id=vocab["[PAD]"],
            eoseq_id=vocab["[EOSEQ]"],
            unk_id=vocab.get("[UNK]"),
        )

    @staticmethod
    def _check_meta(meta: CodeTokenizerMeta, backend: Tokenizer) -> None:
        size = backend.get_vocab_size(with_added_tokens=True)
        if size != meta.actual_code_vocab_size:
            raise ValueError(
                f"The meta says actual_code_vocab_size={meta.actual_code_vocab_size} but the tokenizer has {size} "
                "codes: the meta belongs to another tokenizer. Pass the *.meta.json written with this tokenizer JSON."
            )
        added = set(backend.get_added_tokens_decoder())
        for key in ("pad_id", "eoseq_id", "unk_id"):
            value = getattr(meta, key)
            if value is not None and (value >= size or value not in added):
                raise ValueError(
                    f"The meta's {key}={value} is not a special token of the tokenizer (its specials are "
                    f"{sorted(added)}); the meta belongs to another tokenizer."
                )
        if meta.pad_id == meta.eoseq_id:
            raise ValueError(f"pad_id and eoseq_id must differ, both are {meta.pad_id}.")
        if backend.token_to_id(chr(meta.base_char_offset + meta.eos_token_id_gpt2)) is None:
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
            data = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"{meta_file} is not valid JSON ({error}). Pass the official *.meta.json of this tokenizer."
            ) from error
        meta = CodeTokenizerMeta.from_dict(data, source=str(meta_file))
        return cls(tokenizer_object=backend, **meta.to_init_kwargs())

    @classmethod
    def from_legacy_tokenizer(cls, tokenizer) -> CodeTokenizer:
        """The code tokenizer of a plain transformers fast tokenizer, as pipeline folders of version 0.1 hold it (its
        meta under ``"code_tokenizer_meta"`` in the config, else read from the vocabulary)."""
        if isinstance(tokenizer, cls):
            return tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(
                "Expected a CodeTokenizer or a transformers fast tokenizer holding one, got "
                f"{type(tokenizer).__name__}. Load the code tokenizer with CodeTokenizer.from_pretrained(folder) or "
                "CodeTokenizer.from_official_files(json)."
            )
        legacy_meta = getattr(tokenizer, "init_kwargs", {}).get(META_CONFIG_KEY)
        return cls(tokenizer_object=backend, **({META_CONFIG_KEY: legacy_meta} if legacy_meta is not None else {}))

    # -- saving ---------------------------------------------------------------------------------------------------

    def _official_backend_json(self) -> str:
        data = json.loads(self.backend_tokenizer.to_str())
        if data.get("post_processor") == _NOOP_TEMPLATE_POST_PROCESSOR:
            data["post_processor"] = None  # transformers adds a no-op template; the official files have none
        return Tokenizer.from_str(json.dumps(data)).to_str(pretty=True)

    def save_official_files(
        self, tokenizer_file: str | os.PathLike, meta_file: str | os.PathLike | None = None
    ) -> tuple[Path, Path]:
        """Write the official pair, atomically: the ``tokenizers`` JSON and the ``.meta.json`` (``indent=2``) next to
        it (or at ``meta_file``)."""
        try:  # the package's writer; this file may run from a saved folder without the package
            from bitstream_diffusion.utils.atomic_io import write_text_atomic
        except ImportError as error:
            raise ImportError(
                "Writing the official code tokenizer files needs the bitstream-diffusion package; install it, or use "
                "`save_pretrained`."
            ) from error
        tokenizer_file = Path(tokenizer_file)
        meta_file = tokenizer_file.with_suffix(".meta.json") if meta_file is None else Path(meta_file)
        write_text_atomic(tokenizer_file, self._official_backend_json())
        write_text_atomic(meta_file, json.dumps(self.meta.to_dict(), indent=2))
        return tokenizer_file, meta_file

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of codes, special tokens included (the meta's ``actual_code_vocab_size``)."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """The ``[PAD]`` code."""
        return self.meta.pad_id

    @property
    def eoseq_id(self) -> int:
        """The ``[EOSEQ]`` code that ends every row."""
        return self.meta.eoseq_id

    @property
    def unk_id(self) -> int | None:
        """The ``[UNK]`` code (``None`` if the tokenizer has none)."""
        return self.meta.unk_id

    # -- encoding -------------------------------------------------------------------------------------------------

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
        if not strings:
            return []
        encoded = self(strings, add_special_tokens=False, padding=False, truncation=False, return_attention_mask=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def encode_windows(
        self, gpt2_windows: torch.Tensor | Sequence[Sequence[int]], code_seq_len: int = _BASE_SEQUENCE_LENGTH
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

    def _decode_table(self) -> list[tuple[int, ...]]:
        if self._code_to_gpt2 is None:
            offset, limit = self.meta.base_char_offset, self.meta.vocab_size_gpt2
            backend = self.backend_tokenizer
            tokens = (backend.id_to_token(i) or "" for i in range(self.meta.actual_code_vocab_size))
            self._code_to_gpt2 = [tuple(pua_to_gpt2_ids(token, offset, limit)) for token in tokens]
        return self._code_to_gpt2

    def decode_to_gpt2_ids(self, code_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
        """The official inverse codec: code rows -> cleaned GPT-2 id lists.

        Per row: stop at the first ``[PAD]`` or ``[EOSEQ]``; skip codes outside ``[0, actual_code_vocab_size)``; map
        each kept code to the GPT-2 ids of its private-use characters (the official decoder joins the decoded tokens
        with spaces and drops every other character, which gives the same ids); strip one leading and one trailing
        GPT-2 EOS, keep internal ones.

        Args:
            code_ids: ``[B, T]`` or ``[T]`` code ids (any integers).

        Returns:
            ``B`` lists of GPT-2 ids (possibly empty).
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
        code_to_gpt2 = self._decode_table()
        meta = self.meta
        size, pad, eoseq, eos = meta.actual_code_vocab_size, meta.pad_id, meta.eoseq_id, meta.eos_token_id_gpt2
        outputs: list[list[int]] = []
        for row in rows:
            ids: list[int] = []
            for code in row:
                if code == pad or code == eoseq:
                    break
                if 0 <= code < size:
                    ids.extend(code_to_gpt2[code])
            if ids and ids[0] == eos:
                ids = ids[1:]
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            outputs.append(ids)
        return outputs


CodeTokenizer.register_for_auto_class("AutoTokenizer")
