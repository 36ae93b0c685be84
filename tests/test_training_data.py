"""training/data.py on real text: the LM1B, OWT and generic recipes against the codec functions, the on-disk cache
(reuse, invalidation, atomicity, determinism), streaming, the samplers, the errors and the data-preparation command
line (examples/prepare_data)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bitstream_diffusion.codecs import (
    build_owt_flat_stream,
    lm1b_split_ranges,
    owt_windows,
    pack_lm1b_lines,
)
from bitstream_diffusion.training.data import (
    DataRecipe,
    EmptyCorpusError,
    EpochShuffleSampler,
    TextSource,
    TokenRows,
    TokenRowsDataset,
    build_codec,
    load_code_tokenizer,
    load_text_tokenizer,
    prepare_owt_flat_stream,
    prepare_token_rows,
    split_train_validation,
)

WIKI = "builtin:wiki_summaries"
PREPARE_DATA = Path(__file__).resolve().parents[1] / "examples" / "prepare_data" / "prepare_data.py"


def main(argv: list[str]) -> int:
    """The data-preparation command line, examples/prepare_data/prepare_data.py."""
    spec = importlib.util.spec_from_file_location("prepare_data", PREPARE_DATA)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.main(argv)


def _prepare(source, recipe, tokenizer, cache_dir, code_tokenizer=None):
    return prepare_token_rows(source, recipe, tokenizer, code_tokenizer, cache_dir=cache_dir, batch_size=97,
                              show_progress=False)


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------------------------------------------------


def test_lm1b_recipe_equals_the_official_packing(bert_tokenizer, wiki_summaries, tmp_path):
    """The streamed, batched, cached LM1B recipe gives exactly pack_lm1b_lines (the official cache) row for row."""
    source = TextSource(dataset_name=WIKI, max_documents=1500)
    rows = _prepare(source, DataRecipe("lm1b", num_tokens=32), bert_tokenizer, tmp_path)
    reference = pack_lm1b_lines(wiki_summaries[:1500], bert_tokenizer, seq_len=32)
    assert rows.ids.dtype == np.uint16 and rows.ids.shape == tuple(reference.rows.shape)
    assert torch.equal(rows[:], reference.rows)
    assert rows.meta["dropped_tail_tokens"] == reference.dropped_tail_tokens
    assert rows.meta["total_stream_tokens"] == reference.total_stream_tokens
    assert rows.meta["num_examples"] == reference.n_nonempty_examples
    # [SEP] (102) between summaries, never a [CLS] and never padding
    flat = rows[:].flatten()
    assert int((flat == 102).sum()) > 1000 and not bool((flat == 101).any()) and not bool((flat == 0).any())
    codec = build_codec(DataRecipe("lm1b", num_tokens=32), bert_tokenizer)
    assert codec.bits_per_token == 15 and codec.layout == "lm1b"
    assert codec.decode_ids(rows[:1])[0].startswith("20th - century classical music is western art music")


@pytest.fixture(scope="module")
def code_tokenizer_dir(gpt2_tokenizer, tmp_path_factory):
    """A small code tokenizer trained on 128-token windows of 400 summaries by the train-code-tokenizer command."""
    root = tmp_path_factory.mktemp("code_tok")
    code = main([
        "train-code-tokenizer", "--dataset_name", WIKI, "--max_documents", "400", "--tokenizer", "packaged:gpt2",
        "--code_vocab_size", "50500", "--base_seq_len", "128", "--output_dir", str(root / "tok"),
        "--cache_dir", str(root / "cache"),
    ])  # fmt: skip
    assert code == 0
    return root


def test_train_code_tokenizer_writes_both_formats(code_tokenizer_dir, gpt2_tokenizer):
    folder = code_tokenizer_dir / "tok"
    official = folder / "tokenizer_gpt2id_bpe16_50500_base128.json"
    assert (folder / "tokenizer.json").is_file() and official.is_file()
    assert official.with_suffix(".meta.json").is_file()
    hf_way, official_way = load_code_tokenizer(folder), load_code_tokenizer(official)
    assert hf_way.vocab_size == official_way.vocab_size == 50500
    meta = json.loads(official.with_suffix(".meta.json").read_text())
    assert meta["base_seq_len_tokens"] == 128 and meta["pad_id"] == 0 and meta["eoseq_id"] == 2
    window = torch.tensor([[50256] + gpt2_tokenizer("Paris is the capital of France.")["input_ids"] + [50256]])
    assert torch.equal(hf_way.encode_windows(window, 32), official_way.encode_windows(window, 32))


def test_owt_recipe_equals_flat_stream_windows_and_code_rows(code_tokenizer_dir, gpt2_tokenizer, wiki_summaries):
    code_tokenizer = load_code_tokenizer(code_tokenizer_dir / "tok")
    recipe = DataRecipe("owt", num_tokens=128, base_seq_len=128)
    source = TextSource(dataset_name=WIKI, max_documents=400)
    rows = _prepare(source, recipe, gpt2_tokenizer, code_tokenizer_dir / "cache", code_tokenizer)
    flat = build_owt_flat_stream(wiki_summaries[:400], gpt2_tokenizer)
    expected = code_tokenizer.encode_windows(owt_windows(flat.tokens, base_seq_len=128), code_seq_len=128)
    assert torch.equal(rows[:], expected)
    # stage 1 is cached too and is the official flat stream (ids + EOS per document)
    stream = prepare_owt_flat_stream(source, gpt2_tokenizer, cache_dir=code_tokenizer_dir / "cache",
                                     show_progress=False)
    assert torch.equal(stream[:].flatten(), flat.tokens)
    # each row: codes, then [EOSEQ], then [PAD]; it decodes back to the window's text
    codec = build_codec(recipe, gpt2_tokenizer, code_tokenizer)
    assert codec.bits_per_token == 16 and rows.meta["num_windows"] == len(rows)
    first_window = flat.tokens[:126].tolist()
    assert codec.decode_ids(rows[:1])[0] == gpt2_tokenizer.decode(first_window)


def test_generic_recipe_on_local_files_streaming_and_not(gpt2_tokenizer, wiki_summaries, tmp_path):
    """Local JSON lines with any tokenizer: EOS after every document, rows of num_tokens; streaming changes nothing."""
    texts = wiki_summaries[:300]
    data = _write_jsonl(tmp_path / "docs.jsonl", texts)
    recipe = DataRecipe("generic", num_tokens=24)
    direct = _prepare(TextSource(data_files=[str(data)]), recipe, gpt2_tokenizer, tmp_path / "a")
    streamed = _prepare(TextSource(data_files=[str(data)], streaming=True), recipe, gpt2_tokenizer, tmp_path / "b")
    assert torch.equal(direct[:], streamed[:])
    encoded = gpt2_tokenizer([t.strip() for t in texts], add_special_tokens=False)["input_ids"]
    pieces = [ids + [50256] for ids in encoded]
    stream = [t for p in pieces for t in p]
    n = len(stream) // 24
    assert torch.equal(direct[:], torch.tensor(stream[: n * 24]).view(n, 24))
    codec = build_codec(recipe, gpt2_tokenizer)
    assert codec.bits_per_token == 16 and codec.layout == "generic"


def test_generic_text_files_by_line_and_sep_boundary(bert_tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("the first line .\n\n  second line here\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("a third line\n", encoding="utf-8")
    recipe = DataRecipe("generic", num_tokens=4, boundary="sep")
    rows = _prepare(TextSource(data_files=[str(tmp_path / "*.txt")]), recipe, bert_tokenizer, tmp_path / "c")
    lines = ["the first line .", "second line here", "a third line"]
    expected = pack_lm1b_lines(lines, bert_tokenizer, seq_len=4).rows  # SEP between examples, like LM1B
    assert torch.equal(rows[:], expected)


# ----------------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------------


class _CountingTokenizer:
    """Delegates to a tokenizer and counts the tokenisation calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)


def test_cache_is_reused_and_invalidated(bert_tokenizer, tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", ["alpha beta gamma delta"] * 50)
    counting = _CountingTokenizer(bert_tokenizer)
    source = TextSource(data_files=[str(data)])
    first = _prepare(source, DataRecipe("lm1b", num_tokens=8), counting, tmp_path / "cache")
    calls = counting.calls
    assert calls > 0
    again = _prepare(source, DataRecipe("lm1b", num_tokens=8), counting, tmp_path / "cache")
    assert again.path == first.path and counting.calls == calls  # reused: no tokenisation
    other = _prepare(source, DataRecipe("lm1b", num_tokens=16), counting, tmp_path / "cache")
    assert other.path != first.path and counting.calls > calls  # another recipe setting: another cache
    os.utime(data, ns=(1, 1))  # the data file changed (modification time)
    changed = _prepare(source, DataRecipe("lm1b", num_tokens=8), counting, tmp_path / "cache")
    assert changed.path != first.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")) == []  # no temp left


def test_preparation_is_deterministic_and_atomic(bert_tokenizer, tmp_path):
    source = TextSource(dataset_name=WIKI, max_documents=200)
    one = _prepare(source, DataRecipe("lm1b", num_tokens=16), bert_tokenizer, tmp_path / "one")
    two = _prepare(source, DataRecipe("lm1b", num_tokens=16), bert_tokenizer, tmp_path / "two")
    assert one.path.name == two.path.name  # the fingerprint does not depend on where the cache lives
    from datasets.fingerprint import Hasher

    assert one.path.name.endswith("-" + Hasher.hash(one.meta["fingerprint_inputs"]))  # the key is datasets' Hasher
    assert one.data_file.read_bytes() == two.data_file.read_bytes()

    class Failing(TextSource):
        def iter_texts(self):
            yield from super().iter_texts()
            raise KeyboardInterrupt  # killed half-way

    with pytest.raises(KeyboardInterrupt):
        _prepare(Failing(dataset_name=WIKI, max_documents=50), DataRecipe("lm1b", num_tokens=5), bert_tokenizer,
                 tmp_path / "killed")
    assert list((tmp_path / "killed").iterdir()) == []  # neither a cache nor a temporary folder is left


def test_a_finished_cache_is_kept_and_a_broken_one_replaced(bert_tokenizer, tmp_path):
    from bitstream_diffusion.training.token_cache import _publish
    from bitstream_diffusion.utils.atomic_io import make_staging_dir

    source, recipe = TextSource(dataset_name=WIKI, max_documents=50), DataRecipe("lm1b", num_tokens=8)
    rows = _prepare(source, recipe, bert_tokenizer, tmp_path)
    (rows.path / "meta.json").unlink()  # a leftover without its completion mark is rebuilt
    (rows.path / "junk").write_text("x")
    again = _prepare(source, recipe, bert_tokenizer, tmp_path)
    assert again.path == rows.path and not (again.path / "junk").exists() and torch.equal(again[:], rows[:])
    staging = make_staging_dir(again.path)  # a second process that finished the same cache later
    (staging / "mine").write_text("x")
    kept = _publish(staging, again.path, dict(again.meta))
    assert kept.path == again.path and not staging.exists() and not (again.path / "mine").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [again.path.name]


def test_token_rows_dataset_split_and_sampler(bert_tokenizer, tmp_path):
    rows = _prepare(TextSource(dataset_name=WIKI, max_documents=100), DataRecipe("lm1b", num_tokens=16),
                    bert_tokenizer, tmp_path)
    train, val = split_train_validation(len(rows), validation_fraction=0.005)
    assert (train, val) == (lm1b_split_ranges(len(rows))["train"], lm1b_split_ranges(len(rows))["val"])
    assert split_train_validation(len(rows), validation_fraction=0.5, max_validation_rows=3)[1] == (len(rows) - 3,
                                                                                                     len(rows))
    dataset = TokenRowsDataset(rows, *val)
    assert len(dataset) == val[1] - val[0] and torch.equal(dataset[0], rows[val[0]])
    assert dataset[0].dtype == torch.int64 and dataset.num_tokens == 16
    reopened = TokenRowsDataset(str(rows.path))
    assert torch.equal(reopened[5], rows[5])

    sampler = EpochShuffleSampler(50, seed=7)
    order0 = list(sampler)
    sampler.set_epoch(1)
    order1 = list(sampler)
    assert sorted(order0) == list(range(50)) and order0 != order1
    again = EpochShuffleSampler(50, seed=7)
    again.set_epoch(1)
    assert list(again) == order1  # a resumed run sees the same order
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_data_is_a_clear_error(bert_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="No data file matches"):
        _prepare(TextSource(data_files=[str(tmp_path / "nope.txt")]), DataRecipe(), bert_tokenizer, tmp_path)
    with pytest.raises(ValueError, match="exactly one text source"):
        TextSource()
    with pytest.raises(ValueError, match="Unknown built-in dataset"):
        _prepare(TextSource(dataset_name="builtin:nope"), DataRecipe(), bert_tokenizer, tmp_path)
    with pytest.raises(FileNotFoundError, match="not found|Could not load"):
        _prepare(TextSource(dataset_name=str(tmp_path / "no-such-dataset")), DataRecipe(), bert_tokenizer, tmp_path)
    data = _write_jsonl(tmp_path / "x.jsonl", ["some text"])
    with pytest.raises(ValueError, match="no column 'content'"):
        _prepare(TextSource(data_files=[str(data)], text_column="content"), DataRecipe(), bert_tokenizer, tmp_path)


def test_empty_corpus_is_a_clear_error(bert_tokenizer, tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="holds no text"):
        _prepare(TextSource(data_files=[str(tmp_path / "blank.txt")]), DataRecipe(), bert_tokenizer, tmp_path / "c")
    (tmp_path / "short.txt").write_text("just a few words\n", encoding="utf-8")
    with pytest.raises(EmptyCorpusError, match="fewer than one row of 128 tokens"):
        _prepare(TextSource(data_files=[str(tmp_path / "short.txt")]), DataRecipe(), bert_tokenizer, tmp_path / "c")
    with pytest.raises(EmptyCorpusError, match="no training rows"):
        split_train_validation(1)
    assert list((tmp_path / "c").iterdir()) == []


def test_tokenizer_too_wide_for_bits_per_token(bert_tokenizer, gpt2_tokenizer, tmp_path):
    source = TextSource(dataset_name=WIKI, max_documents=5)
    with pytest.raises(ValueError, match=r"too wide for --bits_per_token 12.*30522 ids needs .* 15 bits"):
        _prepare(source, DataRecipe("lm1b", bits_per_token=12), bert_tokenizer, tmp_path)
    with pytest.raises(ValueError, match=r"too wide for --bits_per_token 15.*50257 ids needs .* 16 bits"):
        build_codec(DataRecipe("generic", bits_per_token=15), gpt2_tokenizer)
    assert build_codec(DataRecipe("generic", bits_per_token=17), gpt2_tokenizer).bits_per_token == 17
    with pytest.raises(ValueError, match="needs the second-stage code tokenizer"):
        build_codec(DataRecipe("owt"), gpt2_tokenizer)
    with pytest.raises(ValueError, match="Unknown data recipe"):
        DataRecipe("c4")
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []  # nothing was prepared


def test_tokenizer_loading_offline():
    assert load_text_tokenizer("packaged:bert-base-uncased").vocab_size == 30522
    assert load_text_tokenizer("bert-base-uncased").vocab_size == 30522  # offline: falls back to the packaged copy
    with pytest.raises(ValueError, match="Unknown packaged tokenizer"):
        load_text_tokenizer("packaged:t5")
    with pytest.raises(FileNotFoundError, match="train-code-tokenizer"):
        load_code_tokenizer("/no/such/code-tokenizer")


def test_prepare_command(tmp_path, capsys):
    assert main(["prepare", "--dataset_name", WIKI, "--max_documents", "60", "--tokenizer",
                 "packaged:bert-base-uncased", "--num_tokens", "16", "--cache_dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = TokenRows(printed["cache"])
    assert printed["num_rows"] == len(rows) > 0 and rows.num_tokens == 16


# ----------------------------------------------------------------------------------------------------------------------
# datasets objects and save_to_disk folders; empty and binary files; progress bars
# ----------------------------------------------------------------------------------------------------------------------


def test_in_memory_datasets_and_save_to_disk_folders_give_the_rows_of_the_same_text(bert_tokenizer, wiki_summaries,
                                                                                      tmp_path):
    import datasets

    texts = list(wiki_summaries[:40])
    recipe = DataRecipe("lm1b", num_tokens=16)
    (tmp_path / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    lines = (tmp_path / "corpus.txt").read_text(encoding="utf-8").splitlines()
    expected = _prepare(TextSource(data_files=[str(tmp_path / "corpus.txt")]), recipe, bert_tokenizer,
                        tmp_path / "c0").ids[:]

    dataset = datasets.Dataset.from_dict({"text": lines, "id": list(range(len(lines)))})
    dataset_dict = datasets.DatasetDict({"train": dataset, "validation": dataset.select(range(5))})
    in_memory = prepare_token_rows(dataset, recipe, bert_tokenizer, cache_dir=tmp_path / "c1", show_progress=False)
    np.testing.assert_array_equal(in_memory.ids[:], expected)
    from_dict = _prepare(TextSource(dataset=dataset_dict, split="train"), recipe, bert_tokenizer, tmp_path / "c1")
    np.testing.assert_array_equal(from_dict.ids[:], expected)
    assert from_dict.path == in_memory.path  # the same content fingerprint: the same cache

    dataset.save_to_disk(tmp_path / "saved")
    dataset_dict.save_to_disk(tmp_path / "saved_dict")
    for source in (TextSource(dataset_path=str(tmp_path / "saved")), TextSource(dataset_name=str(tmp_path / "saved")),
                   TextSource(dataset_name=str(tmp_path / "saved_dict"), split="train")):
        np.testing.assert_array_equal(_prepare(source, recipe, bert_tokenizer, tmp_path / "c2").ids[:], expected)

    head = _prepare(TextSource(dataset=dataset_dict, split="train[:20]"), recipe, bert_tokenizer, tmp_path / "c3")
    sliced = _prepare(TextSource(data_files=[str(tmp_path / "corpus.txt")], split="train[:20]"), recipe,
                      bert_tokenizer, tmp_path / "c3")
    np.testing.assert_array_equal(head.ids[:], sliced.ids[:])
    changed = datasets.Dataset.from_dict({"text": lines[::-1]})
    assert _prepare(TextSource(dataset=changed), recipe, bert_tokenizer, tmp_path / "c1").path != in_memory.path

    with pytest.raises(ValueError, match=r"has the splits \['train', 'validation'\], not 'test'"):
        _prepare(TextSource(dataset=dataset_dict, split="test"), recipe, bert_tokenizer, tmp_path / "c4")
    with pytest.raises(TypeError, match="IterableDataset has no content fingerprint"):
        TextSource(dataset=dataset.to_iterable_dataset())
    with pytest.raises(FileNotFoundError, match="not a folder written by datasets' save_to_disk"):
        TextSource(dataset_path=str(tmp_path))


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.txt", b"", "is empty (0 bytes)"),
        ("empty.jsonl", b"", "is empty (0 bytes)"),
        ("binary.txt", bytes(range(256)) * 40, "is not UTF-8 text (binary data at byte 0)"),
        ("binary.jsonl", b'{"text": "ok"}\n' + bytes([0xFF, 0xFE, 0x00, 0x01]) * 100, "is not UTF-8 text"),
        ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), "is not UTF-8 text (binary data at byte 8)"),
        ("fake.parquet", b"text\nhello\n", "is not a Parquet file"),
        ("broken.jsonl", b"this is not json\n", "could not read files"),
    ],
)
def test_empty_or_binary_train_files_are_named(bert_tokenizer, tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        _prepare(TextSource(data_files=[str(path)]), DataRecipe("lm1b", num_tokens=16), bert_tokenizer,
                 tmp_path / "cache")
    message = str(error.value)
    assert problem in message and (str(path) in message or name in message), message


def test_preparation_bars_follow_the_hugging_face_switches(bert_tokenizer, wiki_summaries, tmp_path, capfd,
                                                           monkeypatch):
    import datasets

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in wiki_summaries[:30]) + "\n", encoding="utf-8")

    def prepare(cache: str) -> str:
        prepare_token_rows(TextSource(data_files=[str(path)]), DataRecipe("lm1b", num_tokens=16), bert_tokenizer,
                           cache_dir=tmp_path / cache, show_progress=True)
        return capfd.readouterr().err

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.enable_progress_bars()
    try:
        assert "Preparing files" in prepare("shown")  # the bar exists, so its absence below means something
        datasets.disable_progress_bars()
        assert "Preparing" not in prepare("datasets-off")
        datasets.enable_progress_bars()
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        assert "Preparing" not in prepare("hub-off")
    finally:
        (datasets.disable_progress_bars if was_disabled else datasets.enable_progress_bars)()
