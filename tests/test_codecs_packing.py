"""The one streaming packer (codecs/packing.py) on real text: the LM1B and OWT recipes built on it, streaming and
batching that change nothing, partial reads for the first rows, the counters and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitstream_diffusion.codecs import (
    PackingStats,
    TokenPacker,
    build_owt_flat_stream,
    chunk_token_stream,
    lm1b_packer,
    owt_packer,
    owt_windows,
    pack_lm1b_lines,
    pack_owt_windows,
)


class _CountingTexts:
    """An iterable of texts that counts how many were read."""

    def __init__(self, texts):
        self.texts, self.read = texts, 0

    def __iter__(self):
        for text in self.texts:
            self.read += 1
            yield text


def test_rows_do_not_depend_on_batching(bert_tokenizer, wiki_summaries):
    texts = wiki_summaries[:400]
    full = torch.tensor(lm1b_packer(bert_tokenizer).token_stream(texts))
    expected = chunk_token_stream(full, 48)
    for batch_size in (1, 7, 1000):
        packer = lm1b_packer(bert_tokenizer, batch_size=batch_size)
        blocks = list(packer.iter_rows(texts, 48))
        assert all(block.shape[1] == 48 for block in blocks) and (len(blocks) > 1 or batch_size >= len(texts))
        assert torch.equal(torch.from_numpy(np.concatenate(blocks)), expected)
        assert packer.stats.total_tokens == full.numel()
        assert packer.stats.dropped_tail_tokens == full.numel() % 48
    assert packer.stats.examples == packer.stats.nonempty_documents == 400 == packer.stats.documents


def test_boundaries_and_counters(gpt2_tokenizer):
    documents = ["  a b  ", "", None, "c", "   "]
    a, c = (gpt2_tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a b", "c"))
    between = TokenPacker(gpt2_tokenizer, boundary="between", boundary_token_id=7)
    assert between.token_stream(documents) == a + [7] + c  # never before the first example
    assert between.stats == PackingStats(documents=5, nonempty_documents=2, examples=2, total_tokens=len(a + c) + 1)
    after = TokenPacker(gpt2_tokenizer, boundary="after", boundary_token_id=9)
    assert after.token_stream(documents) == a + [9] + c + [9]
    assert TokenPacker(gpt2_tokenizer).token_stream(documents) == a + c
    rows = after.pack(documents, 3, keep_remainder=True, pad_id=0)
    assert rows.view(-1).tolist()[: len(a + c) + 2] == a + [9] + c + [9]
    assert after.stats.padded_tail_tokens == rows.numel() - len(a + c) - 2


def test_first_rows_read_only_what_they_need(bert_tokenizer, wiki_summaries):
    """The held-out reference of an evaluation: the first rows of the packed test split, without reading all of it."""
    texts = wiki_summaries[:2000]
    everything = pack_lm1b_lines(texts, bert_tokenizer, seq_len=128)
    counting = _CountingTexts(texts)
    first = pack_lm1b_lines(counting, bert_tokenizer, seq_len=128, max_rows=5)
    assert torch.equal(first.rows, everything.rows[:5])
    assert counting.read <= 2048  # one batch of lines, not the whole split
    few = pack_lm1b_lines(texts[:3], bert_tokenizer, seq_len=128, max_rows=50)  # asks for more than there is
    assert torch.equal(few.rows, pack_lm1b_lines(texts[:3], bert_tokenizer, seq_len=128).rows)


def test_owt_windows_streamed_equal_the_flat_stream_windows(gpt2_tokenizer, wiki_summaries):
    texts = wiki_summaries[:300]
    flat = build_owt_flat_stream(texts, gpt2_tokenizer)
    assert torch.equal(flat.tokens, torch.tensor(owt_packer(gpt2_tokenizer).token_stream(texts)))
    expected = owt_windows(flat.tokens, base_seq_len=64)
    assert torch.equal(pack_owt_windows(texts, gpt2_tokenizer, base_seq_len=64), expected)
    counting = _CountingTexts(texts)
    first = pack_owt_windows(counting, gpt2_tokenizer, base_seq_len=64, max_windows=4, batch_size=10)
    assert torch.equal(first, expected[:4]) and counting.read < len(texts)
    assert first[:, 0].eq(50256).all() and first[:, -1].eq(50256).all()
    assert pack_owt_windows([], gpt2_tokenizer, base_seq_len=64).shape == (0, 64)


def test_packer_errors(bert_tokenizer):
    with pytest.raises(ValueError, match="boundary must be one of"):
        TokenPacker(bert_tokenizer, boundary="sep")
    with pytest.raises(ValueError, match="needs a boundary_token_id"):
        TokenPacker(bert_tokenizer, boundary="after")
    packer = TokenPacker(bert_tokenizer)
    with pytest.raises(ValueError, match="row_length must be positive"):
        list(packer.iter_rows(["a"], 0))
    with pytest.raises(ValueError, match="cannot be combined"):
        packer.pack(["a"], 4, max_rows=1, keep_remainder=True, pad_id=0)
    with pytest.raises(ValueError, match="needs a pad_id"):
        packer.pack(["a"], 4, keep_remainder=True)
    with pytest.raises(ValueError, match="base_seq_len must be at least 3"):
        pack_owt_windows(["a"], bert_tokenizer, base_seq_len=2)
