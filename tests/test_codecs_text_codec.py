"""TextBitCodec: the one object the pipeline and training use, for the lm1b, owt and generic layouts."""

from __future__ import annotations

import json

import pytest
import torch

from bitstream_diffusion.codecs import CodeTokenizer, TextBitCodec, normalize_owt_text

TOKENIZER_JSON = "tokenizer_gpt2id_bpe16_53248_base1024.json"


@pytest.fixture(scope="module")
def owt_dir(golden_dir):
    return golden_dir / "codec" / "owt"


@pytest.fixture(scope="module")
def owt_golden(owt_dir):
    return torch.load(owt_dir / "owt_codec.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def owt_decode(owt_dir):
    return json.loads((owt_dir / "owt_decode.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def code_tokenizer(owt_dir):
    return CodeTokenizer.from_official_files(owt_dir / TOKENIZER_JSON)


@pytest.fixture(scope="module")
def owt_codec(gpt2_tokenizer, code_tokenizer):
    return TextBitCodec(gpt2_tokenizer, code_tokenizer)


# ---------------------------------------------------------------------------------------------------------------------
# OWT layout
# ---------------------------------------------------------------------------------------------------------------------


def test_owt_settings(owt_codec):
    assert owt_codec.layout == "owt"
    assert (owt_codec.bits_per_token, owt_codec.num_tokens, owt_codec.vocab_size, owt_codec.num_bits) == (
        16,
        1024,
        53248,
        16384,
    )
    assert owt_codec.invalid_id_policy == "skip"


def test_owt_golden_bits_to_text(owt_codec, owt_golden, owt_decode):
    assert owt_codec.bits_to_text(owt_golden["dataset_bits_rows_0_1"]) == owt_decode["texts_from_dataset_bits_rows_0_1"]
    probs = owt_golden["dataset_bits_rows_0_1"].float() * 0.9 + 0.05  # probabilities threshold to the same bits
    assert owt_codec.bits_to_text(probs) == owt_decode["texts_from_dataset_bits_rows_0_1"]
    assert owt_codec.decode_ids(owt_golden["code_ids"]) == [case["text"] for case in owt_decode["windows"]]
    assert owt_codec.decode_ids(owt_golden["corrupt_code_ids"]) == [case["text"] for case in owt_decode["corrupted"]]
    bits = owt_codec.ids_to_bits(owt_golden["code_ids"][:2])
    assert torch.equal(bits, owt_golden["dataset_bits_rows_0_1"])


def test_owt_encode_text_is_one_window(owt_codec, code_tokenizer, gpt2_tokenizer, owt_decode):
    text = "  Hello there.\r\nSecond line<|endoftext|>!  "
    row = owt_codec.encode_texts(text)
    ids = gpt2_tokenizer(normalize_owt_text(text), add_special_tokens=False)["input_ids"]
    assert 50256 in ids
    expected = code_tokenizer.encode_windows([[50256] + ids + [50256]])
    assert torch.equal(row, expected)
    assert row.shape == (1, 1024) and row[0, -1].item() == code_tokenizer.pad_id
    assert owt_codec.decode_ids(row) == [normalize_owt_text(text)]
    prompt = owt_codec.prompt_ids(text)[0]
    assert code_tokenizer.decode_to_gpt2_ids([prompt]) == [ids]  # [BOS] + ids, no closing EOS or [EOSEQ]
    assert owt_codec.text_to_bits([text, ""]).shape == (2, 16384)
    assert owt_codec.bits_to_text(owt_codec.text_to_bits([""])) == [""]


def test_owt_truncation(owt_codec, gpt2_tokenizer):
    long_text = " ".join(f"word{i}" for i in range(2000))
    ids = gpt2_tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1022
    assert owt_codec.decode_ids(owt_codec.encode_texts(long_text)) == [gpt2_tokenizer.decode(ids[:1022])]
    row = owt_codec.encode_texts("a b c d e f g", num_tokens=4)
    assert row.shape == (1, 4) and row[0, -1].item() == owt_codec.code_tokenizer.eoseq_id


def test_owt_entropy_ids_match_official(owt_codec, golden_dir):
    inputs = torch.load(golden_dir / "genppl" / "token_entropy_inputs.pt", map_location="cpu", weights_only=True)
    expected = json.loads((golden_dir / "genppl" / "token_entropy.json").read_text(encoding="utf-8"))
    assert owt_codec.ids_for_token_entropy(inputs["owt_code_ids"]) == expected["owt"]["token_rows"]


def test_lm1b_entropy_ids_match_official(bert_tokenizer, golden_dir):
    inputs = torch.load(golden_dir / "genppl" / "token_entropy_inputs.pt", map_location="cpu", weights_only=True)
    expected = json.loads((golden_dir / "genppl" / "token_entropy.json").read_text(encoding="utf-8"))
    codec = TextBitCodec(bert_tokenizer, layout="lm1b")
    assert codec.ids_for_token_entropy(codec.bits_to_ids(inputs["lm1b_bits"])) == expected["lm1b"]["token_rows"]


def _check_owt_round_trip(texts, codec, gpt2_tokenizer, batch_size=250):
    decoded = []
    for start in range(0, len(texts), batch_size):
        bits = codec.text_to_bits(texts[start : start + batch_size])
        assert bits.shape == (len(texts[start : start + batch_size]), 16384) and bits.dtype == torch.uint8
        decoded += codec.bits_to_text(bits)
    ids = gpt2_tokenizer([normalize_owt_text(t) for t in texts], add_special_tokens=False)["input_ids"]
    n_exact = 0
    for text, out, row in zip(texts, decoded, ids):
        if len(row) <= 1022:  # one window holds it: exact
            assert out == normalize_owt_text(text)
            n_exact += 1
        else:  # longer texts keep their first 1022 GPT-2 tokens
            assert out == gpt2_tokenizer.decode(row[:1022])
    return n_exact


def test_owt_wiki_round_trip(wiki_summaries, owt_codec, gpt2_tokenizer):
    """GPT-2 is byte-level, so text -> bits -> text is exact for every text that fits one window."""
    texts = wiki_summaries[:1000]
    assert _check_owt_round_trip(texts, owt_codec, gpt2_tokenizer) >= 990


@pytest.mark.slow
def test_owt_wiki_round_trip_all(wiki_summaries, owt_codec, gpt2_tokenizer):
    assert _check_owt_round_trip(wiki_summaries, owt_codec, gpt2_tokenizer) > 0.99 * len(wiki_summaries)


# ---------------------------------------------------------------------------------------------------------------------
# generic layout
# ---------------------------------------------------------------------------------------------------------------------


def test_generic_gpt2_round_trip(wiki_summaries, gpt2_tokenizer):
    codec = TextBitCodec(gpt2_tokenizer, num_tokens=512)
    assert (codec.layout, codec.bits_per_token, codec.vocab_size, codec.invalid_id_policy) == (
        "generic",
        16,
        50257,
        "wrap",
    )
    texts = [t for t in wiki_summaries[:300] if len(gpt2_tokenizer(t)["input_ids"]) <= 512]
    ids = codec.encode_texts(texts)
    assert ids.shape == (len(texts), 512) and ids[:, -1].eq(50256).all()  # padded with EOS (GPT-2 has no pad)
    assert codec.bits_to_text(codec.text_to_bits(texts)) == texts
    # invalid 16-bit patterns wrap modulo 50257
    assert codec.decode_ids(torch.tensor([[50257 + 464]])) == codec.decode_ids(torch.tensor([[464]]))


def test_generic_bert_and_policies(bert_tokenizer):
    codec = TextBitCodec(bert_tokenizer, num_tokens=8, invalid_id_policy="skip")
    assert codec.bits_per_token == 15
    row = codec.encode_texts("Hello world")
    assert codec.decode_ids(row) == ["hello world"]  # [PAD] skipped as a special token
    raw = torch.tensor([[7592, 30522 + 7592, 2088]])
    assert codec.decode_ids(raw) == ["hello world"]
    assert codec.ids_for_token_entropy(raw) == [[7592, 2088]]
    clip = TextBitCodec(bert_tokenizer, num_tokens=8, invalid_id_policy="clip", skip_special_tokens=False)
    assert clip.ids_for_token_entropy(raw) == [[7592, 30521, 2088]]
    unk = TextBitCodec(bert_tokenizer, num_tokens=8, invalid_id_policy="unk", skip_special_tokens=False)
    assert unk.decode_ids(raw) == ["hello [UNK] world"]
    strict = TextBitCodec(bert_tokenizer, num_tokens=8, invalid_id_policy="error")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        strict.decode_ids(raw)
    no_default = TextBitCodec(bert_tokenizer)
    with pytest.raises(ValueError, match="pass num_tokens"):
        no_default.encode_texts("hi")
    assert no_default.encode_texts("hi", num_tokens=3).shape == (1, 3)


def _word_level_tokenizer(**special_tokens):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3, "[PAD]": 4}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def test_generic_small_vocab_and_padding_token():
    codec = TextBitCodec(_word_level_tokenizer(pad_token="[PAD]", unk_token="[UNK]"), num_tokens=4)
    assert (codec.vocab_size, codec.bits_per_token) == (5, 3)
    bits = codec.text_to_bits("a c b")
    assert bits.tolist() == [[0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 0]]
    assert codec.bits_to_text(bits) == ["a c b"]
    assert codec.decode_ids(torch.tensor([[1, 7, 3]])) == ["a b c"]  # the invalid 3-bit pattern 7 wraps to 7 % 5 = 2
    with pytest.raises(ValueError, match="neither; set `tokenizer.pad_token`"):
        TextBitCodec(_word_level_tokenizer(), num_tokens=4)


# ---------------------------------------------------------------------------------------------------------------------
# configuration and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_config_round_trip(bert_tokenizer, gpt2_tokenizer, code_tokenizer):
    codecs = [
        TextBitCodec(bert_tokenizer, layout="lm1b", clean_up_tokenization_spaces=False),
        TextBitCodec(gpt2_tokenizer, code_tokenizer),
        TextBitCodec(gpt2_tokenizer, num_tokens=64, bits_per_token=17, invalid_id_policy="clip"),
    ]
    for codec, code in zip(codecs, (None, code_tokenizer, None)):
        config = json.loads(json.dumps(codec.to_config()))
        rebuilt = TextBitCodec.from_config(config, codec.tokenizer, code)
        assert rebuilt.to_config() == codec.to_config()
    assert codecs[0].to_config() == {
        "layout": "lm1b",
        "bits_per_token": 15,
        "num_tokens": 128,
        "vocab_size": 30522,
        "invalid_id_policy": "wrap",
        "skip_special_tokens": False,
        "clean_up_tokenization_spaces": False,
    }
    with pytest.raises(ValueError, match="load the tokenizer"):
        TextBitCodec.from_config(codecs[2].to_config(), bert_tokenizer)
    with pytest.raises(ValueError, match="Unknown codec config keys"):
        TextBitCodec.from_config({"layout": "lm1b", "bits": 15}, bert_tokenizer)


def test_clean_up_pinned_regardless_of_loading(golden_dir):
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer

    golden = torch.load(golden_dir / "codec" / "lm1b" / "lm1b_codec.pt", map_location="cpu", weights_only=True)
    texts = json.loads((golden_dir / "codec" / "lm1b" / "lm1b_decode.json").read_text(encoding="utf-8"))["texts_rows"]
    loaded_true = load_bert_uncased_tokenizer(clean_up_tokenization_spaces=True)
    codec = TextBitCodec(loaded_true, layout="lm1b", clean_up_tokenization_spaces=False)
    assert codec.decode_ids(golden["decoded_ids_rows"]) == texts


def test_constructor_errors(bert_tokenizer, gpt2_tokenizer, code_tokenizer):
    with pytest.raises(ValueError, match=r"needs ceil\(log2\(30522\)\) = 15 bits"):
        TextBitCodec(bert_tokenizer, layout="lm1b", bits_per_token=14)
    with pytest.raises(ValueError, match=r"needs ceil\(log2\(53248\)\) = 16 bits"):
        TextBitCodec(gpt2_tokenizer, code_tokenizer, bits_per_token=15)
    with pytest.raises(ValueError, match=r"needs ceil\(log2\(50257\)\) = 16 bits"):
        TextBitCodec(gpt2_tokenizer, num_tokens=8, bits_per_token=15)
    with pytest.raises(ValueError, match="needs the second-stage code tokenizer"):
        TextBitCodec(gpt2_tokenizer, layout="owt")
    with pytest.raises(ValueError, match="only used by the 'owt' layout"):
        TextBitCodec(bert_tokenizer, code_tokenizer, layout="lm1b")
    with pytest.raises(ValueError, match="use layout='generic'"):
        TextBitCodec(gpt2_tokenizer, layout="lm1b")
    with pytest.raises(ValueError, match="Unknown codec layout"):
        TextBitCodec(bert_tokenizer, layout="bert")
    with pytest.raises(ValueError, match="GPT-2 tokenizer the code tokenizer was trained for"):
        TextBitCodec(bert_tokenizer, code_tokenizer)
    with pytest.raises(TypeError, match="code_tokenizer must be a CodeTokenizer.*from_legacy_tokenizer"):
        TextBitCodec(gpt2_tokenizer, gpt2_tokenizer)
    with pytest.raises(ValueError, match="Unknown invalid_id_policy"):
        TextBitCodec(bert_tokenizer, layout="lm1b", invalid_id_policy="modulo")


def test_bit_input_errors(bert_tokenizer):
    codec = TextBitCodec(bert_tokenizer, layout="lm1b")
    with pytest.raises(ValueError, match="not a multiple of bits_per_token=15"):
        codec.bits_to_text(torch.zeros(2, 1921, dtype=torch.uint8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        codec.bits_to_text(torch.full((1, 1920), 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, T \* 15\]"):
        codec.bits_to_text(torch.zeros(1, 2, 1920))
    with pytest.raises(TypeError, match="torch.Tensor"):
        codec.bits_to_text([[0, 1]])
    with pytest.raises(TypeError, match="decode bits with `bits_to_text`"):
        codec.decode_ids(torch.zeros(1, 128))
    with pytest.raises(TypeError, match="strings"):
        codec.encode_texts([1, 2])
