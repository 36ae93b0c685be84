"""ids <-> bits: layout, thresholding, invalid-id policies and input checks (golden/codec §8a for the tables)."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion.codecs import (
    apply_invalid_id_policy,
    binarize_bits,
    bits_for_vocab,
    bits_to_ids,
    check_bits_per_token,
    filter_invalid_ids,
    ids_to_bits,
    token_to_bits_table,
)


@pytest.fixture(scope="module")
def lm1b_golden(golden_dir):
    return torch.load(golden_dir / "codec" / "lm1b" / "lm1b_codec.pt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vocab", "bits"), [(1, 1), (2, 1), (3, 2), (256, 8), (257, 9), (30522, 15), (50257, 16), (65536, 16), (65537, 17)]
)
def test_bits_for_vocab(vocab, bits):
    assert bits_for_vocab(vocab) == bits


def test_msb_first_small_example():
    bits = ids_to_bits(torch.tensor([[5, 1]]), 4)
    assert bits.dtype == torch.uint8
    assert bits.tolist() == [[0, 1, 0, 1, 0, 0, 0, 1]]
    assert bits_to_ids(bits, 4).tolist() == [[5, 1]]


@pytest.mark.parametrize("bits_per_token", [1, 7, 15, 16, 17, 31, 62])
def test_round_trip_any_width(bits_per_token):
    generator = torch.Generator().manual_seed(bits_per_token)
    high = 2**bits_per_token
    ids = torch.randint(0, min(high, 2**62), (3, 5, 11), generator=generator)
    ids[0, 0, 0] = high - 1
    ids[0, 0, 1] = 0
    bits = ids_to_bits(ids, bits_per_token)
    assert bits.shape == (3, 5, 11 * bits_per_token)
    assert torch.equal(bits_to_ids(bits, bits_per_token), ids)


def test_output_dtypes_and_list_input():
    assert ids_to_bits([[3]], 2, dtype=torch.float32).tolist() == [[1.0, 1.0]]
    assert ids_to_bits([2], 2, dtype=torch.bool).tolist() == [True, False]
    assert ids_to_bits(torch.tensor([2], dtype=torch.int16), 2).tolist() == [1, 0]


def test_token_to_bits_table_matches_official(lm1b_golden):
    table = token_to_bits_table(30522)
    assert table.dtype == torch.uint8 and table.shape == (30522, 15)
    assert torch.equal(table, lm1b_golden["token_to_bits_table"])


def test_random_codes_bits_and_modulo_wrap(lm1b_golden):
    codes = lm1b_golden["random_codes"]
    assert torch.equal(ids_to_bits(codes, 15), lm1b_golden["random_bits"])
    raw = bits_to_ids(lm1b_golden["random_bits"], 15)
    assert torch.equal(raw, codes)
    wrapped = apply_invalid_id_policy(raw, 30522, "wrap")
    assert torch.equal(wrapped, lm1b_golden["random_decoded_ids"])
    assert wrapped[codes == 30522].eq(0).all() and wrapped[codes == 30624].eq(102).all()


def test_prob_input_threshold(lm1b_golden):
    probs = lm1b_golden["prob_input"]
    assert (probs == 0.5).any() and (probs > 1).any() and (probs < 0).any()  # the edge cases are in the case
    ids = apply_invalid_id_policy(bits_to_ids(probs, 15), 30522, "wrap")
    assert torch.equal(ids, lm1b_golden["prob_input_decoded_ids"])


def test_binarize_threshold_rule():
    probs = torch.tensor([0.5, 0.50001, 1.7, -0.3, float("nan"), 0.49])
    assert binarize_bits(probs).tolist() == [0, 1, 1, 0, 0, 0]
    assert binarize_bits(torch.tensor([True, False])).tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------------------------------
# invalid-id policies
# ---------------------------------------------------------------------------------------------------------------------


def test_policies():
    ids = torch.tensor([[0, 9, 10, 15]])
    assert apply_invalid_id_policy(ids, 10, "wrap").tolist() == [[0, 9, 0, 5]]
    assert apply_invalid_id_policy(ids, 10, "clip").tolist() == [[0, 9, 9, 9]]
    assert apply_invalid_id_policy(ids, 10, "unk", unk_id=1).tolist() == [[0, 9, 1, 1]]
    assert apply_invalid_id_policy(ids, 10, "skip").tolist() == ids.tolist()
    assert filter_invalid_ids(ids, 10) == [[0, 9]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        apply_invalid_id_policy(ids, 10, "error")
    assert apply_invalid_id_policy(ids[:, :2], 10, "error").tolist() == [[0, 9]]
    with pytest.raises(ValueError, match="unknown token"):
        apply_invalid_id_policy(ids, 10, "unk")
    with pytest.raises(ValueError, match="Unknown invalid_id_policy"):
        apply_invalid_id_policy(ids, 10, "modulo")


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------


def test_vocab_too_wide_for_width():
    with pytest.raises(ValueError, match=r"needs ceil\(log2\(30522\)\) = 15 bits.*bits_per_token >= 15"):
        check_bits_per_token(14, 30522)
    with pytest.raises(ValueError, match=r"\[1, 62\]"):
        check_bits_per_token(0)
    with pytest.raises(ValueError, match="integer"):
        check_bits_per_token(15.5)


def test_ids_errors():
    with pytest.raises(ValueError, match=r"\[0, 32768\).*at least 16"):
        ids_to_bits(torch.tensor([32768]), 15)
    with pytest.raises(ValueError, match="got ids in"):
        ids_to_bits(torch.tensor([-1]), 15)
    with pytest.raises(TypeError, match="integer tensor"):
        ids_to_bits(torch.tensor([1.0]), 15)
    with pytest.raises(TypeError, match="integer tensor"):
        ids_to_bits(torch.tensor([True]), 15)
    with pytest.raises(ValueError, match="scalar"):
        ids_to_bits(torch.tensor(3), 15)


def test_bits_errors():
    with pytest.raises(ValueError, match="not a multiple of bits_per_token=15"):
        bits_to_ids(torch.zeros(2, 31, dtype=torch.uint8), 15)
    with pytest.raises(ValueError, match="only 0 and 1, found \\[2\\]"):
        bits_to_ids(torch.tensor([[0, 2, 1]]), 3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        bits_to_ids([[0, 1]], 2)
    with pytest.raises(ValueError, match="scalar"):
        bits_to_ids(torch.tensor(1), 1)
