"""Bit codecs: token ids <-> MSB-first bits, the LM1B and OWT text recipes, and the OWT second-stage code tokenizer.

``TextBitCodec`` is the one object the pipeline and training use; the modules below it hold each recipe:

* :mod:`.bits`: ids <-> bits for any width, the invalid-id policy;
* :mod:`.packing`: the one streaming packer, text documents -> token stream -> fixed rows (every recipe uses it);
* :mod:`.lm1b`: bert-base-uncased packing into 128-token rows and the LM1B decode;
* :mod:`.owt`: the OWT flat GPT-2 stream and its 1024-token windows;
* :mod:`.code_tokenizer`: the ``gpt2id_bpe16`` code tokenizer, a transformers fast tokenizer (load, save, encode,
  decode), and :mod:`.code_tokenizer_training` to train one;
* :mod:`.text_codec`: texts <-> ids <-> bits for the ``"lm1b"``, ``"owt"`` and ``"generic"`` layouts.

Importing the package is cheap: each name loads its module on first access (a command line that only parses its
flags does not load torch or transformers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy_exports import lazy_exports

_LAZY_ATTRIBUTES: dict[str, str] = {
    "BOUNDARY_MODES": ".packing",
    "CODEC_LAYOUTS": ".text_codec",
    "CODE_SPECIAL_TOKENS": ".code_tokenizer",
    "DEFAULT_BASE_CHAR_OFFSET": ".code_tokenizer",
    "DEFAULT_CODE_VOCAB_SIZE": ".code_tokenizer",
    "GPT2_EOS_TOKEN_ID": ".owt",
    "GPT2_VOCAB_SIZE": ".owt",
    "INVALID_ID_POLICIES": ".bits",
    "LM1B_BITS_PER_TOKEN": ".lm1b",
    "LM1B_SEQUENCE_LENGTH": ".lm1b",
    "LM1B_VAL_FRACTION": ".lm1b",
    "LM1B_VOCAB_SIZE": ".lm1b",
    "OWT_BASE_SEQUENCE_LENGTH": ".owt",
    "BoundaryMode": ".packing",
    "CodeTokenizer": ".code_tokenizer",
    "CodeTokenizerMeta": ".code_tokenizer",
    "CodecLayout": ".text_codec",
    "InvalidIdPolicy": ".bits",
    "LM1BPacking": ".lm1b",
    "OWTFlatStream": ".owt",
    "PackingStats": ".packing",
    "TextBitCodec": ".text_codec",
    "TokenPacker": ".packing",
    "apply_invalid_id_policy": ".bits",
    "binarize_bits": ".bits",
    "bits_for_vocab": ".bits",
    "bits_to_ids": ".bits",
    "build_owt_flat_stream": ".owt",
    "check_bits_per_token": ".bits",
    "chunk_token_stream": ".packing",
    "decode_lm1b_ids": ".lm1b",
    "filter_invalid_ids": ".bits",
    "fit_code_row": ".code_tokenizer",
    "gpt2_ids_to_pua": ".code_tokenizer",
    "ids_to_bits": ".bits",
    "lm1b_packer": ".lm1b",
    "lm1b_split_ranges": ".lm1b",
    "lm1b_token_stream": ".lm1b",
    "normalize_owt_text": ".owt",
    "num_owt_windows": ".owt",
    "owt_packer": ".owt",
    "owt_window": ".owt",
    "owt_windows": ".owt",
    "pack_lm1b_lines": ".lm1b",
    "pack_owt_windows": ".owt",
    "pua_to_gpt2_ids": ".code_tokenizer",
    "token_to_bits_table": ".bits",
    "train_code_tokenizer_on_flat_stream": ".code_tokenizer_training",
    "train_code_tokenizer_on_windows": ".code_tokenizer_training",
}

__all__ = [
    "BOUNDARY_MODES",
    "CODEC_LAYOUTS",
    "CODE_SPECIAL_TOKENS",
    "DEFAULT_BASE_CHAR_OFFSET",
    "DEFAULT_CODE_VOCAB_SIZE",
    "GPT2_EOS_TOKEN_ID",
    "GPT2_VOCAB_SIZE",
    "INVALID_ID_POLICIES",
    "LM1B_BITS_PER_TOKEN",
    "LM1B_SEQUENCE_LENGTH",
    "LM1B_VAL_FRACTION",
    "LM1B_VOCAB_SIZE",
    "OWT_BASE_SEQUENCE_LENGTH",
    "BoundaryMode",
    "CodeTokenizer",
    "CodeTokenizerMeta",
    "CodecLayout",
    "InvalidIdPolicy",
    "LM1BPacking",
    "OWTFlatStream",
    "PackingStats",
    "TextBitCodec",
    "TokenPacker",
    "apply_invalid_id_policy",
    "binarize_bits",
    "bits_for_vocab",
    "bits_to_ids",
    "build_owt_flat_stream",
    "check_bits_per_token",
    "chunk_token_stream",
    "decode_lm1b_ids",
    "filter_invalid_ids",
    "fit_code_row",
    "gpt2_ids_to_pua",
    "ids_to_bits",
    "lm1b_packer",
    "lm1b_split_ranges",
    "lm1b_token_stream",
    "normalize_owt_text",
    "num_owt_windows",
    "owt_packer",
    "owt_window",
    "owt_windows",
    "pack_lm1b_lines",
    "pack_owt_windows",
    "pua_to_gpt2_ids",
    "token_to_bits_table",
    "train_code_tokenizer_on_flat_stream",
    "train_code_tokenizer_on_windows",
]

if TYPE_CHECKING:
    from .bits import (
        INVALID_ID_POLICIES,
        InvalidIdPolicy,
        apply_invalid_id_policy,
        binarize_bits,
        bits_for_vocab,
        bits_to_ids,
        check_bits_per_token,
        filter_invalid_ids,
        ids_to_bits,
        token_to_bits_table,
    )
    from .code_tokenizer import (
        CODE_SPECIAL_TOKENS,
        DEFAULT_BASE_CHAR_OFFSET,
        DEFAULT_CODE_VOCAB_SIZE,
        CodeTokenizer,
        CodeTokenizerMeta,
        fit_code_row,
        gpt2_ids_to_pua,
        pua_to_gpt2_ids,
    )
    from .code_tokenizer_training import train_code_tokenizer_on_flat_stream, train_code_tokenizer_on_windows
    from .lm1b import (
        LM1B_BITS_PER_TOKEN,
        LM1B_SEQUENCE_LENGTH,
        LM1B_VAL_FRACTION,
        LM1B_VOCAB_SIZE,
        LM1BPacking,
        decode_lm1b_ids,
        lm1b_packer,
        lm1b_split_ranges,
        lm1b_token_stream,
        pack_lm1b_lines,
    )
    from .owt import (
        GPT2_EOS_TOKEN_ID,
        GPT2_VOCAB_SIZE,
        OWT_BASE_SEQUENCE_LENGTH,
        OWTFlatStream,
        build_owt_flat_stream,
        normalize_owt_text,
        num_owt_windows,
        owt_packer,
        owt_window,
        owt_windows,
        pack_owt_windows,
    )
    from .packing import BOUNDARY_MODES, BoundaryMode, PackingStats, TokenPacker, chunk_token_stream
    from .text_codec import CODEC_LAYOUTS, CodecLayout, TextBitCodec


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
