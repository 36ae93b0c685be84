"""GenPPL library side (``bitstream_diffusion.evaluation.gen_ppl``) against the official scorer (golden/genppl)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitstream_diffusion.evaluation import (
    GenPPLResult,
    GenPPLScorer,
    ScoringWindow,
    compute_gen_ppl,
    plan_scoring_windows,
    resolve_dtype,
)

# Short golden texts of different lengths (so batches need padding) plus the skip cases.
SHORT_LABELS = ("wiki_sentence", "empty_string", "one_token", "two_tokens", "literal_SEP_and_EOS", "lm1b_decoded_row")


@pytest.fixture(scope="module")
def genppl_dir(golden_dir):
    return golden_dir / "genppl"


@pytest.fixture(scope="module")
def golden_texts(genppl_dir):
    return json.loads((genppl_dir / "genppl_texts.json").read_text(encoding="utf-8"))["texts"]


@pytest.fixture(scope="module")
def golden_results(genppl_dir):
    return json.loads((genppl_dir / "genppl_results.json").read_text(encoding="utf-8"))["results"]


@pytest.fixture(scope="module")
def scorer_fp32(genppl_dir):
    return GenPPLScorer(genppl_dir / "tiny_gpt2", dtype="float32", device="cpu")


def _assert_matches_golden(result: GenPPLResult, golden: dict, rtol: float):
    per_text = golden["per_text"]
    assert len(result.nll_sums) == len(per_text)
    for i, expected in enumerate(per_text):
        label = f"text {i} ({expected['label']})"
        assert result.num_tokens[i] == expected["ids_len"], label
        assert result.skipped[i] == expected["skipped"], label
        assert result.num_scored_tokens[i] == expected["n_scored"], label
        assert result.nll_sums[i] == pytest.approx(expected["nll_sum"], rel=rtol, abs=0), label
        assert result.perplexities[i] == pytest.approx(expected["score_texts_single"]["external_ppl"], rel=20 * rtol)
    assert result.total_scored_tokens == golden["aggregate_total_scored"]
    assert result.total_nll == pytest.approx(golden["aggregate_total_nll"], rel=rtol)
    assert result.gen_ppl == pytest.approx(golden["aggregate_score_texts"]["external_ppl"], rel=20 * rtol)
    assert result.bits_per_token == pytest.approx(golden["aggregate_score_texts"]["external_bpt"], rel=rtol)


# --------------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "num_tokens, expected_scored",
    [
        (0, 0),
        (1, 0),
        (2, 1),
        (21, 20),
        (1022, 1021),
        (1024, 1023),
        (1025, 1024),
        (1459, 1458),
        (2048, 2046),
        (2049, 2047),
        (2407, 2405),
    ],
)
def test_window_plan_scores_the_official_number_of_targets(num_tokens, expected_scored):
    windows = plan_scoring_windows(num_tokens, max_seq_len=1024, stride=1024)
    assert sum(w.num_targets for w in windows) == expected_scored
    assert all(w.end - w.begin <= 1024 and w.target_start >= max(1, w.begin + 1) for w in windows)
    targets = [t for w in windows for t in range(w.target_start, w.end)]
    assert len(targets) == len(set(targets))  # never scored twice


def test_window_plan_edge_cases():
    # 1 < L - 1024 < 1024: right-aligned second window scoring only the new targets
    assert plan_scoring_windows(1459, 1024, 1024) == [ScoringWindow(0, 1024, 1), ScoringWindow(435, 1459, 1024)]
    # L = 2048: target 1024 (first token of a fresh window) is never scored
    assert plan_scoring_windows(2048, 1024, 1024) == [ScoringWindow(0, 1024, 1), ScoringWindow(1024, 2048, 1025)]
    # a smaller stride gives overlapping context
    assert plan_scoring_windows(10, 8, 4) == [ScoringWindow(0, 4, 1), ScoringWindow(0, 8, 4), ScoringWindow(2, 10, 8)]
    with pytest.raises(ValueError, match="stride"):
        plan_scoring_windows(10, 8, 9)
    with pytest.raises(ValueError, match="max_seq_len"):
        plan_scoring_windows(10, 1, 1)


# --------------------------------------------------------------------------------------------------- golden


def test_window_length_follows_the_official_rule(scorer_fp32):
    assert (scorer_fp32.max_seq_len, scorer_fp32.stride) == (1024, 1024)  # min(n_positions, model_max_length)


def test_golden_float32(scorer_fp32, golden_texts, golden_results):
    result = scorer_fp32.score_texts([t["text"] for t in golden_texts], batch_size=4)
    _assert_matches_golden(result, golden_results["float32"], rtol=1e-5)
    assert result.dtype == "float32" and result.max_seq_len == 1024 and result.stride == 1024


def test_golden_bfloat16(genppl_dir, golden_texts, golden_results):
    scorer = GenPPLScorer(genppl_dir / "tiny_gpt2", dtype="bfloat16", device="cpu")
    assert scorer.model.dtype == torch.bfloat16
    result = scorer.score_texts([t["text"] for t in golden_texts], batch_size=4)
    _assert_matches_golden(result, golden_results["bfloat16"], rtol=2e-2)


def test_batched_equals_unbatched(scorer_fp32, golden_texts):
    # (test_golden_float32 already compares batch_size=4, windows of 1024 and of 22..144 tokens, with the official
    # one-text-at-a-time scorer; this checks the batch size itself does not matter.)
    texts = [t["text"] for t in golden_texts if t["label"] in SHORT_LABELS]
    one_by_one = scorer_fp32.score_texts(texts, batch_size=1)
    for batch_size in (3, 64):
        batched = scorer_fp32.score_texts(texts, batch_size=batch_size)
        assert batched.num_scored_tokens == one_by_one.num_scored_tokens
        assert batched.num_tokens == one_by_one.num_tokens and batched.skipped == one_by_one.skipped
        torch.testing.assert_close(batched.nll_sums, one_by_one.nll_sums, rtol=1e-5, atol=0)
        assert batched.gen_ppl == pytest.approx(one_by_one.gen_ppl, rel=1e-5)
    # Windows of equal length need no padding (and no mask): the same numbers up to float rounding.
    full_window = [t["text"] for t in golden_texts if t["label"] == "exactly_1024_tokens"]
    alone = scorer_fp32.score_texts(full_window, batch_size=1).nll_sums[0]
    pair = scorer_fp32.score_texts(full_window * 2, batch_size=2).nll_sums
    assert pair[0] == pair[1] == pytest.approx(alone, rel=1e-6)


def test_score_token_ids_and_order_independence(scorer_fp32, golden_texts):
    texts = [t["text"] for t in golden_texts if t["label"] == "wiki_sentence"]
    ids = scorer_fp32.tokenize(texts)
    assert scorer_fp32.tokenize(["", texts[0]]) == [[], ids[0]]
    forward = scorer_fp32.score_token_ids(ids, batch_size=2)
    backward = scorer_fp32.score_token_ids(ids[::-1], batch_size=2)
    torch.testing.assert_close(forward.nll_sums, backward.nll_sums[::-1], rtol=1e-5, atol=0)
    assert forward.num_tokens == [len(x) for x in ids]


def test_preloaded_model_and_tokenizer(scorer_fp32, golden_texts, golden_results):
    scorer = GenPPLScorer(model=scorer_fp32.model, tokenizer=scorer_fp32.tokenizer, device="cpu")
    assert scorer.dtype == torch.float32 and scorer.max_seq_len == 1024
    result = scorer.score_texts([golden_texts[0]["text"]])
    assert result.nll_sums[0] == pytest.approx(golden_results["float32"]["per_text"][0]["nll_sum"], rel=1e-5)
    with pytest.raises(ValueError, match="both"):
        GenPPLScorer(model=scorer_fp32.model)


def test_compute_gen_ppl_caches_the_evaluator(genppl_dir, golden_results):
    model_id = str(genppl_dir / "tiny_gpt2")
    first = GenPPLScorer.cached(model_id, dtype="float32", device="cpu")
    assert GenPPLScorer.cached(model_id, dtype="fp32", device=torch.device("cpu")) is first
    result = compute_gen_ppl(["", "x"], model_id=model_id, dtype="float32", device="cpu")
    assert result.skipped == [True, True] and result.total_scored_tokens == 0
    assert math.isinf(result.gen_ppl) and result.perplexities == [math.inf, math.inf]
    expected = {
        "gen_ppl",
        "bits_per_token",
        "nll_per_token",
        "total_nll",
        "total_scored_tokens",
        "nll_sums",
        "num_scored_tokens",
        "num_tokens",
        "skipped",
        "perplexities",
        "model_id",
        "dtype",
        "max_seq_len",
        "stride",
    }
    assert set(result.to_dict()) == expected


# --------------------------------------------------------------------------------------------------- errors


def test_dtype_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    for bad in ("int8", "double", torch.int64, None):
        with pytest.raises(ValueError, match="Unknown dtype"):
            resolve_dtype(bad)


def test_clear_errors(genppl_dir, tmp_path):
    model_id = str(genppl_dir / "tiny_gpt2")
    with pytest.raises(ValueError, match="empty list"):
        compute_gen_ppl([], model_id=model_id, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="Unknown dtype"):
        compute_gen_ppl(["a text"], model_id=model_id, dtype="int8", device="cpu")
    with pytest.raises(TypeError, match="single string"):
        compute_gen_ppl("a text", model_id=model_id, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        compute_gen_ppl(["a text"], model_id=model_id, dtype="float32", device="cpu", batch_size=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compute_gen_ppl(["a text"], model_id=str(tmp_path / "missing" / "model"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        compute_gen_ppl(["a text"], model_id=str(tmp_path), device="cpu")
    with pytest.raises(OSError, match="not available here"):  # a hub id, offline
        compute_gen_ppl(["a text"], model_id="bitstream-diffusion-tests/no-such-model", device="cpu")
