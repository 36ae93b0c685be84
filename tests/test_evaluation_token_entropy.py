"""Token entropy (``bitstream_diffusion.evaluation.token_entropy``) against the official script (golden/genppl)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitstream_diffusion.evaluation import sample_token_entropy, token_entropy

LM1B_VOCAB_SIZE = 30522
LM1B_BITS_PER_TOKEN = 15


@pytest.fixture(scope="module")
def golden_entropy(golden_dir):
    return json.loads((golden_dir / "genppl" / "token_entropy.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("dataset", ["lm1b", "owt"])
def test_golden_rows(golden_entropy, dataset):
    case = golden_entropy[dataset]
    mean, per_sample = token_entropy(case["token_rows"])
    torch.testing.assert_close(per_sample, case["per_sample_entropy_nats"], atol=1e-6, rtol=0)
    assert mean == pytest.approx(case["mean"], abs=1e-6)


def test_golden_owt_counts_empty_samples_as_zero(golden_entropy):
    case = golden_entropy["owt"]
    lengths = [len(row) for row in case["token_rows"]]
    assert lengths == case["token_rows_lengths"] and 0 in lengths
    _, per_sample = token_entropy(case["token_rows"])
    assert [h for h, n in zip(per_sample, lengths) if n == 0] == [0.0] * lengths.count(0)


def test_golden_lm1b_from_bits_with_modulo_wrap(golden_dir, golden_entropy):
    inputs = torch.load(golden_dir / "genppl" / "token_entropy_inputs.pt", map_location="cpu", weights_only=True)
    bits = inputs["lm1b_bits"].to(torch.long).reshape(-1, 128, LM1B_BITS_PER_TOKEN)
    weights = 2 ** torch.arange(LM1B_BITS_PER_TOKEN - 1, -1, -1)  # MSB first
    codes = (bits * weights).sum(-1)  # [10, 128] raw 15-bit codes, some >= 30522 in the random rows
    assert int(codes.max()) >= LM1B_VOCAB_SIZE
    assert torch.equal(codes % LM1B_VOCAB_SIZE, torch.tensor(golden_entropy["lm1b"]["token_rows"]))
    mean, per_sample = token_entropy(codes, vocab_size=LM1B_VOCAB_SIZE)
    torch.testing.assert_close(per_sample, golden_entropy["lm1b"]["per_sample_entropy_nats"], atol=1e-6, rtol=0)
    assert mean == pytest.approx(golden_entropy["lm1b"]["mean"], abs=1e-6)
    # Without the wrap, the invalid codes would count as distinct tokens: a different number.
    assert token_entropy(codes)[0] != pytest.approx(golden_entropy["lm1b"]["mean"], abs=1e-4)


def test_golden_direct(golden_entropy):
    for ids_json, expected in golden_entropy["direct"].items():
        ids = json.loads(ids_json)
        assert sample_token_entropy(ids) == pytest.approx(expected, abs=1e-6), ids_json
        assert token_entropy([ids]) == (pytest.approx(expected, abs=1e-6), [pytest.approx(expected, abs=1e-6)])


def test_input_forms_and_edge_cases():
    rows = [[3, 1, 3, 3, 7, 1], [1, 1, 2, 2]]
    expected = token_entropy(rows)
    assert token_entropy([torch.tensor(r) for r in rows]) == expected
    assert token_entropy(tuple(tuple(r) for r in rows)) == expected
    assert token_entropy(torch.tensor([[1, 1, 2, 2], [5, 5, 5, 5]])) == (
        pytest.approx(math.log(2) / 2),
        [pytest.approx(math.log(2)), 0.0],
    )
    assert token_entropy([[], [4]]) == (0.0, [0.0, 0.0])
    assert sample_token_entropy(torch.arange(8)) == pytest.approx(math.log(8), abs=1e-6)
    mean, per_sample = token_entropy([])
    assert math.isnan(mean) and per_sample == []  # the official script reports nan for no samples
    with pytest.raises(TypeError, match="integers"):
        token_entropy([[0.5, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        token_entropy(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="vocab_size"):
        token_entropy([[1]], vocab_size=0)
