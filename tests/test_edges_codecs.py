"""Codec edges: negative ids, texts that are not lists of valid Unicode strings, and tokenizers without a vocabulary
are clear errors from the codec, in every encode and decode path."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion.codecs import CodeTokenizer, TextBitCodec, apply_invalid_id_policy
from bitstream_diffusion.codecs.lm1b import decode_lm1b_ids

TOKENIZER_JSON = "tokenizer_gpt2id_bpe16_53248_base1024.json"


@pytest.fixture(scope="module")
def codecs(bert_tokenizer, gpt2_tokenizer, golden_dir):
    code = CodeTokenizer.from_official_files(golden_dir / "codec" / "owt" / TOKENIZER_JSON)
    return {
        "lm1b": TextBitCodec(bert_tokenizer, layout="lm1b"),
        "owt": TextBitCodec(gpt2_tokenizer, code),
        "generic": TextBitCodec(gpt2_tokenizer, num_tokens=8),
        "generic-skip": TextBitCodec(bert_tokenizer, num_tokens=8, invalid_id_policy="skip"),
    }


# ------------------------------------------------------------------------------------------------ negative ids
@pytest.mark.parametrize("name", ["lm1b", "owt", "generic", "generic-skip"])
def test_negative_ids_are_an_error_in_every_decode_path(codecs, name):
    codec = codecs[name]
    for decode in (codec.decode_ids, codec.ids_for_token_entropy):
        with pytest.raises(ValueError, match=r"Token ids must be non-negative, got \[-5\]"):
            decode([[-5, 100]])
        with pytest.raises(ValueError, match="non-negative"):
            decode(torch.tensor([7, -100]))


def test_ids_beyond_the_vocabulary_still_follow_the_policy(codecs, bert_tokenizer):
    lm1b = codecs["lm1b"]
    assert lm1b.decode_ids([[100 + 30522]]) == lm1b.decode_ids([[100]])  # the official wrap, ids >= vocab only
    assert apply_invalid_id_policy(torch.tensor([[3, 12]]), 10, "wrap").tolist() == [[3, 2]]
    for policy in ("wrap", "skip", "clip", "unk", "error"):
        with pytest.raises(ValueError, match="non-negative"):
            apply_invalid_id_policy(torch.tensor([[3, -1]]), 10, policy, unk_id=0)
    with pytest.raises(ValueError, match="non-negative"):
        decode_lm1b_ids(torch.tensor([[-1, 5]]), bert_tokenizer)


# ------------------------------------------------------------------------------------------------ texts
@pytest.mark.parametrize("name", ["lm1b", "owt", "generic"])
def test_none_and_non_strings_are_named(codecs, name):
    codec = codecs[name]
    for encode in (codec.text_to_bits, codec.encode_texts, codec.prompt_ids):
        with pytest.raises(TypeError, match="texts must be a string or a list of strings, got NoneType"):
            encode(None)
        with pytest.raises(TypeError, match="item 1 is a int"):
            encode(["fine", 3])
        with pytest.raises(TypeError, match="got bytes"):
            encode(b"raw bytes")


@pytest.mark.parametrize("name", ["lm1b", "owt", "generic"])
def test_a_lone_surrogate_is_named(codecs, name):
    codec = codecs[name]
    for encode in (codec.text_to_bits, codec.prompt_ids):
        with pytest.raises(ValueError, match=r"Text 1 holds a lone surrogate '\\ud800' \(code point U\+D800\) at "
                                             r"position 3"):
            encode(["fine", "abc\ud800def"])
    assert codec.text_to_bits(["caf\u00e9 \U0001f600"]).shape[0] == 1  # valid non-ASCII text is fine


def _empty_tokenizer(**special_tokens):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({}, unk_token="[UNK]")), **special_tokens)


@pytest.mark.parametrize("special_tokens", [{}, {"pad_token": "[PAD]"}], ids=["bare", "only-a-pad-token"])
def test_a_tokenizer_without_vocabulary_is_named(special_tokens):
    with pytest.raises(ValueError, match="has an empty vocabulary, so no text can be written as ids"):
        TextBitCodec(_empty_tokenizer(**special_tokens), num_tokens=4)
