"""The OWT recipe and the code tokenizer against the official OWT codec data (golden/codec/owt)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from bitstream_diffusion.codecs import (
    CodeTokenizer,
    CodeTokenizerMeta,
    build_owt_flat_stream,
    fit_code_row,
    gpt2_ids_to_pua,
    ids_to_bits,
    normalize_owt_text,
    num_owt_windows,
    owt_window,
    owt_windows,
    pua_to_gpt2_ids,
    train_code_tokenizer_on_flat_stream,
    train_code_tokenizer_on_windows,
)

TOKENIZER_JSON = "tokenizer_gpt2id_bpe16_53248_base1024.json"
TOKENIZER_META = "tokenizer_gpt2id_bpe16_53248_base1024.meta.json"


@pytest.fixture(scope="module")
def owt_dir(golden_dir):
    return golden_dir / "codec" / "owt"


@pytest.fixture(scope="module")
def golden(owt_dir):
    return torch.load(owt_dir / "owt_codec.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def decode_json(owt_dir):
    return json.loads((owt_dir / "owt_decode.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def official_meta(owt_dir):
    return json.loads((owt_dir / TOKENIZER_META).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def code_tokenizer(owt_dir):
    return CodeTokenizer.from_official_files(owt_dir / TOKENIZER_JSON)


# ---------------------------------------------------------------------------------------------------------------------
# GPT-2 side: flat stream and windows
# ---------------------------------------------------------------------------------------------------------------------


def test_flat_stream_matches_official(owt_dir, golden, gpt2_tokenizer):
    documents = json.loads((owt_dir / "input_documents.json").read_text(encoding="utf-8"))["train_documents"]
    meta = json.loads((owt_dir / "cache_train_gpt2_flat_eos1.meta.json").read_text(encoding="utf-8"))
    stream = build_owt_flat_stream(documents, gpt2_tokenizer)
    assert torch.equal(stream.tokens, golden["flat_stream_train"].long())
    assert (stream.n_tokens, stream.n_docs) == (meta["n_tokens"], meta["n_docs"])


def test_flat_stream_rules(gpt2_tokenizer):
    assert normalize_owt_text("  a\r\nb\rc\n ") == "a\nb\nc"
    stream = build_owt_flat_stream(["", "  ", "Hi<|endoftext|>there", None, "x"], gpt2_tokenizer)
    hi = gpt2_tokenizer("Hi", add_special_tokens=False)["input_ids"]
    assert stream.n_docs == 2
    assert stream.tokens.tolist()[: len(hi) + 1] == hi + [50256]  # a literal <|endoftext|> is the special id
    assert stream.tokens[-1].item() == 50256  # EOS after every document


def test_windows_match_official(golden, decode_json):
    stream = golden["flat_stream_train"]
    windows = owt_windows(stream)
    assert windows.shape == (decode_json["n_windows_in_flat_cache"], 1024) == (num_owt_windows(stream.numel()), 1024)
    assert torch.equal(windows[: golden["gpt2_windows"].shape[0]], golden["gpt2_windows"])
    assert torch.equal(owt_window(stream.numpy(), 3), golden["gpt2_windows"][3])
    assert windows[:, 0].eq(50256).all() and windows[:, -1].eq(50256).all()
    with pytest.raises(IndexError):
        owt_window(stream, windows.shape[0])


# ---------------------------------------------------------------------------------------------------------------------
# Code tokenizer: official files, encoding
# ---------------------------------------------------------------------------------------------------------------------


def test_official_files_load(code_tokenizer, official_meta, decode_json):
    info = decode_json["code_tokenizer"]
    assert len(code_tokenizer) == info["actual_code_vocab_size"] == 53248
    assert (code_tokenizer.pad_id, code_tokenizer.unk_id, code_tokenizer.eoseq_id) == (0, 1, 2)
    assert code_tokenizer.meta.base_char_offset == info["base_char_offset"] == 0xF0000
    assert code_tokenizer.meta.to_dict() == official_meta
    assert list(code_tokenizer.meta.to_dict()) == list(official_meta)
    backend = code_tokenizer.backend_tokenizer
    assert backend.token_to_id("\n") == 3  # the newline quirk: single GPT-2 token t has code 4 + t
    assert backend.token_to_id(chr(0xF0000 + 50256)) == info["code_id_of_gpt2_eos_char"] == 50260
    assert code_tokenizer.encode_gpt2_ids([[0], [50256]]) == [[4], [50260]]


def test_pua_helpers():
    assert gpt2_ids_to_pua([0, 50256]) == "\U000f0000\U000fc450"
    assert pua_to_gpt2_ids("\U000f0000 \n[UNK]\U000fc450\U000fc451") == [0, 50256]  # non-PUA and >= 50257 dropped
    assert fit_code_row([7, 8], 5, pad_id=0, eoseq_id=2) == [7, 8, 2, 0, 0]
    assert fit_code_row([7, 8, 9], 3, pad_id=0, eoseq_id=2) == [7, 8, 2]
    assert fit_code_row([7, 8, 9, 10], 3, pad_id=0, eoseq_id=2) == [7, 8, 2]


def test_code_rows_lengths_and_bits_match_official(code_tokenizer, golden, official_meta):
    windows = owt_windows(golden["flat_stream_train"])
    rows = code_tokenizer.encode_windows(windows)
    assert rows.shape == (windows.shape[0], 1024)
    assert torch.equal(rows[: golden["code_ids"].shape[0]], golden["code_ids"])
    lengths = (rows != code_tokenizer.pad_id).sum(dim=1)
    assert torch.equal(lengths, golden["code_len_all_windows"])
    assert int(lengths.max()) == official_meta["recommended_code_seq_len_tokens"]
    assert torch.equal(ids_to_bits(rows[:2], 16), golden["dataset_bits_rows_0_1"])


# ---------------------------------------------------------------------------------------------------------------------
# Code tokenizer: decoding (every owt_decode.json case)
# ---------------------------------------------------------------------------------------------------------------------


def _decode_texts(code_tokenizer, codes, gpt2_tokenizer):
    """Code rows -> text as the official decoder: the GPT-2 ids, decoded keeping special tokens."""
    return gpt2_tokenizer.batch_decode(code_tokenizer.decode_to_gpt2_ids(codes), skip_special_tokens=False)


def test_decode_windows(code_tokenizer, golden, decode_json, gpt2_tokenizer):
    cases = decode_json["windows"]
    ids = code_tokenizer.decode_to_gpt2_ids(golden["code_ids"])
    texts = _decode_texts(code_tokenizer, golden["code_ids"], gpt2_tokenizer)
    for i, case in enumerate(cases):
        assert int(case["index"]) == i
        assert ids[i] == case["gpt2_ids_decoded"] == golden["gpt2_windows"][i, 1:-1].tolist()
        assert len(ids[i]) == case["debug"]["gpt2_len_after_edge_strip"]
        assert texts[i] == case["text"]


def test_decode_dataset_bit_rows(code_tokenizer, golden, decode_json, gpt2_tokenizer):
    from bitstream_diffusion.codecs import bits_to_ids

    codes = bits_to_ids(golden["dataset_bits_rows_0_1"], 16)
    assert _decode_texts(code_tokenizer, codes, gpt2_tokenizer) == decode_json["texts_from_dataset_bits_rows_0_1"]


@pytest.mark.parametrize("case_index", range(10))
def test_decode_corrupted(case_index, code_tokenizer, golden, decode_json, gpt2_tokenizer):
    case = decode_json["corrupted"][case_index]
    codes = golden["corrupt_code_ids"][case_index : case_index + 1]
    ids = code_tokenizer.decode_to_gpt2_ids(codes)
    assert ids[0] == case["gpt2_ids"], case["description"]
    assert len(ids[0]) == case["debug"]["gpt2_len_after_edge_strip"], case["description"]
    assert _decode_texts(code_tokenizer, codes, gpt2_tokenizer)[0] == case["text"], case["description"]


def test_decode_corrupted_batch(code_tokenizer, golden, decode_json):
    assert code_tokenizer.decode_to_gpt2_ids(golden["corrupt_code_ids"]) == [
        case["gpt2_ids"] for case in decode_json["corrupted"]
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Training, saving, loading
# ---------------------------------------------------------------------------------------------------------------------


def test_retraining_reproduces_official_json_byte_for_byte(golden, owt_dir, official_meta, tmp_path):
    trained = train_code_tokenizer_on_flat_stream(golden["flat_stream_train"].numpy(), code_vocab_size=53248)
    json_path, meta_path = trained.save_official_files(tmp_path / TOKENIZER_JSON)
    assert json_path.read_bytes() == (owt_dir / TOKENIZER_JSON).read_bytes()
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    provenance = {"root", "source_flat_cache_path", "source_flat_meta_path", "source_flat_hf_split"}
    assert list(meta) == list(official_meta)
    assert {k: v for k, v in meta.items() if k not in provenance} == {
        k: v for k, v in official_meta.items() if k not in provenance
    }
    assert all(meta[k] is None for k in provenance)


def test_train_small_tokenizer_on_windows(golden):
    windows = owt_windows(golden["flat_stream_train"], max_windows=20)
    trained = train_code_tokenizer_on_windows(
        windows, code_vocab_size=50400, meta_extra={"source_flat_hf_split": "train[:20]"}
    )
    meta = trained.meta.to_dict()
    assert (trained.pad_id, trained.unk_id, trained.eoseq_id) == (0, 1, 2)
    assert meta["target_code_vocab_size"] == 50400 >= meta["actual_code_vocab_size"] > 50261
    assert meta["num_training_sequences"] == 20 and meta["source_flat_hf_split"] == "train[:20]"
    assert meta["bits_per_code_token"] == 16
    rows = trained.encode_windows(windows)
    assert meta["recommended_code_seq_len_tokens"] == int((rows != 0).sum(dim=1).max())
    assert trained.decode_to_gpt2_ids(rows) == windows[:, 1:-1].tolist()


def test_official_files_round_trip(code_tokenizer, owt_dir, tmp_path):
    json_path, meta_path = code_tokenizer.save_official_files(tmp_path / "tok.json")
    assert meta_path.name == "tok.meta.json"
    assert json_path.read_bytes() == (owt_dir / TOKENIZER_JSON).read_bytes()
    assert meta_path.read_bytes() == (owt_dir / TOKENIZER_META).read_bytes()


def _check_restored(restored, code_tokenizer, golden, owt_dir, official_meta, tmp_path):
    assert isinstance(restored, CodeTokenizer)
    assert restored.meta.to_dict() == official_meta
    assert (restored.pad_token, restored.unk_token, restored.eos_token) == ("[PAD]", "[UNK]", "[EOSEQ]")
    assert (restored.pad_token_id, restored.unk_token_id, restored.eos_token_id, len(restored)) == (0, 1, 2, 53248)
    assert torch.equal(restored.encode_windows(golden["gpt2_windows"]), golden["code_ids"])
    assert restored.decode_to_gpt2_ids(golden["corrupt_code_ids"]) == code_tokenizer.decode_to_gpt2_ids(
        golden["corrupt_code_ids"]
    )
    # ... and back to the official pair, byte for byte
    json_path, meta_path = restored.save_official_files(tmp_path / "again" / "tok.json")
    assert json_path.read_bytes() == (owt_dir / TOKENIZER_JSON).read_bytes()
    assert meta_path.read_bytes() == (owt_dir / TOKENIZER_META).read_bytes()


def test_transformers_way_round_trip(code_tokenizer, golden, owt_dir, official_meta, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "code_tokenizer"
    code_tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key in ("actual_code_vocab_size", "pad_id", "unk_id", "eoseq_id", "base_char_offset", "base_seq_len_tokens"):
        assert config[key] == official_meta[key], key  # the meta are init arguments in the config
    assert config["tokenizer_class"] == "CodeTokenizer" and "code_tokenizer_meta" not in config
    assert config["auto_map"]["AutoTokenizer"][0] == "code_tokenizer.CodeTokenizer"
    assert (folder / "code_tokenizer.py").is_file() and (folder / "code_tokenizer_meta.py").is_file()  # the code
    _check_restored(CodeTokenizer.from_pretrained(folder), code_tokenizer, golden, owt_dir, official_meta, tmp_path)
    remote = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(remote).__name__ == "CodeTokenizer" and remote.meta.to_dict() == official_meta
    assert torch.equal(remote.encode_windows(golden["gpt2_windows"]), golden["code_ids"])


@pytest.mark.slow
def test_auto_tokenizer_loads_without_this_package(code_tokenizer, golden, tmp_path):
    """`AutoTokenizer(..., trust_remote_code=True)` in a process where bitstream_diffusion cannot be imported."""
    code_tokenizer.save_pretrained(tmp_path / "code_tokenizer")
    torch.save({"windows": golden["gpt2_windows"], "codes": golden["code_ids"]}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import importlib.util, os, sys
        sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "bitstream_diffusion"))]
        assert importlib.util.find_spec("bitstream_diffusion") is None, "the package must not be importable"
        import torch
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / "code_tokenizer")!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        assert torch.equal(tokenizer.encode_windows(io["windows"]), io["codes"])
        assert tokenizer.decode_to_gpt2_ids(io["codes"]) == io["windows"][:, 1:-1].tolist()
        assert "bitstream_diffusion" not in sys.modules
        print("ok", type(tokenizer).__module__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok transformers_modules" in result.stdout


def test_folder_saved_by_version_0_1_still_loads(code_tokenizer, golden, owt_dir, official_meta, tmp_path):
    """Version 0.1 saved a plain fast tokenizer with the whole meta under `code_tokenizer_meta` in its config."""
    from transformers import PreTrainedTokenizerFast

    old = PreTrainedTokenizerFast(
        tokenizer_object=code_tokenizer.backend_tokenizer, pad_token="[PAD]", eos_token="[EOSEQ]", unk_token="[UNK]",
        code_tokenizer_meta=official_meta,
    )  # fmt: skip
    old.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["code_tokenizer_meta"] == official_meta and "auto_map" not in config
    restored = CodeTokenizer.from_pretrained(tmp_path / "old")
    _check_restored(restored, code_tokenizer, golden, owt_dir, official_meta, tmp_path)
    converted = CodeTokenizer.from_legacy_tokenizer(PreTrainedTokenizerFast.from_pretrained(tmp_path / "old"))
    _check_restored(converted, code_tokenizer, golden, owt_dir, official_meta, tmp_path)
    restored.save_pretrained(tmp_path / "new")  # saved again, it is written the new way
    config = json.loads((tmp_path / "new" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "code_tokenizer_meta" not in config and config["eoseq_id"] == 2
    assert CodeTokenizer.from_legacy_tokenizer(code_tokenizer) is code_tokenizer


def test_plain_tokenizer_without_meta_infers_official_defaults(code_tokenizer, golden, tmp_path):
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=code_tokenizer.backend_tokenizer)
    for inferred in (CodeTokenizer(tokenizer_object=code_tokenizer.backend_tokenizer),
                     CodeTokenizer.from_legacy_tokenizer(plain)):  # fmt: skip
        assert (inferred.pad_id, inferred.unk_id, inferred.eoseq_id, inferred.vocab_size) == (0, 1, 2, 53248)
        assert inferred.meta.base_char_offset == 0xF0000 and inferred.pad_token == "[PAD]"
        assert torch.equal(inferred.encode_windows(golden["gpt2_windows"][:2]), golden["code_ids"][:2])
    inferred.save_pretrained(tmp_path)  # the inferred meta is saved with it
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["actual_code_vocab_size"] == 53248
    assert CodeTokenizer.from_pretrained(tmp_path).meta == inferred.meta


def test_gpt2_facts_match_the_owt_module():
    """The code tokenizer's files repeat three GPT-2 facts so they work alone in a saved folder; they must agree."""
    from bitstream_diffusion.codecs import code_tokenizer_meta, owt

    assert code_tokenizer_meta._GPT2_VOCAB_SIZE == owt.GPT2_VOCAB_SIZE
    assert code_tokenizer_meta._GPT2_EOS_TOKEN_ID == owt.GPT2_EOS_TOKEN_ID
    assert code_tokenizer_meta._BASE_SEQUENCE_LENGTH == owt.OWT_BASE_SEQUENCE_LENGTH


# ---------------------------------------------------------------------------------------------------------------------
# Errors: malformed files, wrong inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def official_copy(owt_dir, tmp_path):
    shutil.copy(owt_dir / TOKENIZER_JSON, tmp_path / TOKENIZER_JSON)
    shutil.copy(owt_dir / TOKENIZER_META, tmp_path / TOKENIZER_META)
    return tmp_path / TOKENIZER_JSON, tmp_path / TOKENIZER_META


def _edit_meta(meta_path, **changes):
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is _DELETE:
            del meta[key]
        else:
            meta[key] = value
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


_DELETE = object()


def test_missing_files(official_copy):
    json_path, meta_path = official_copy
    meta_path.unlink()
    with pytest.raises(FileNotFoundError, match=r"meta not found.*suffix \.meta\.json"):
        CodeTokenizer.from_official_files(json_path)
    with pytest.raises(FileNotFoundError, match="JSON not found"):
        CodeTokenizer.from_official_files(json_path.with_name("nope.json"))


def test_malformed_tokenizer_json(official_copy):
    json_path, _ = official_copy
    json_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid `tokenizers` JSON file"):
        CodeTokenizer.from_official_files(json_path)


def test_meta_not_json(official_copy):
    json_path, meta_path = official_copy
    meta_path.write_text("pad_id: 0", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CodeTokenizer.from_official_files(json_path)
    meta_path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="must be a JSON object"):
        CodeTokenizer.from_official_files(json_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pad_id": _DELETE}, r"lacks \['pad_id'\]"),
        ({"eoseq_id": "2"}, "`eoseq_id` must be a non-negative integer"),
        ({"base_char_offset": -5}, "`base_char_offset` must be a non-negative integer"),
        ({"actual_code_vocab_size": 65536}, "meta belongs to another tokenizer"),
        ({"pad_id": 7}, "pad_id=7 is not a special token"),
        ({"eoseq_id": 0}, "must differ"),
        ({"base_char_offset": 0xE0000}, "offset is wrong"),
        ({"base_char_offset": 0x10FFFF}, "passes the last Unicode code point"),
    ],
)
def test_malformed_meta(official_copy, changes, message):
    json_path, meta_path = official_copy
    _edit_meta(meta_path, **changes)
    with pytest.raises(ValueError, match=message):
        CodeTokenizer.from_official_files(json_path)


def test_meta_from_dict_errors():
    with pytest.raises(ValueError, match="JSON object"):
        CodeTokenizerMeta.from_dict([1])
    with pytest.raises(ValueError, match="non-negative integer"):
        CodeTokenizerMeta.from_dict({"actual_code_vocab_size": True, "pad_id": 0, "eoseq_id": 2, "base_char_offset": 0})


def test_not_a_bpe_tokenizer(bert_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="must be a BPE model"):
        CodeTokenizer(tokenizer_object=bert_tokenizer.backend_tokenizer)
    bert_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="must be a BPE model"):
        CodeTokenizer(tokenizer_file=tmp_path / "tokenizer.json")
    with pytest.raises(TypeError, match="tokenizers.Tokenizer.*backend_tokenizer"):
        CodeTokenizer(tokenizer_object=bert_tokenizer)
    with pytest.raises(TypeError, match="Expected a CodeTokenizer"):
        CodeTokenizer.from_legacy_tokenizer(object())


def test_encode_decode_input_errors(code_tokenizer):
    with pytest.raises(ValueError, match=r"GPT-2 ids must lie in \[0, 50257\)"):
        code_tokenizer.encode_windows([[50256, 50257, 50256]])
    with pytest.raises(ValueError, match=r"\[B, T\] or \[T\]"):
        code_tokenizer.decode_to_gpt2_ids(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        code_tokenizer.decode_to_gpt2_ids(torch.zeros(2, 3))
