"""`pipe.log_likelihood(texts)`: the official variational bound on the texts' rows, per text and overall."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler
from bitstream_diffusion.evaluation import compute_vlb
from bitstream_diffusion.pipelines import LogLikelihoodOutput, remote_code_files

TEXTS = ["the city council met on monday .", "a quick brown fox jumps over the lazy dog .", "rain ."]


@pytest.fixture(scope="module")
def pipe(bert_tokenizer, tiny_sdt_factory):
    scheduler = EntropyRateScheduler(noise_schedule="karras")
    return BitstreamDiffusionPipeline(
        model=tiny_sdt_factory(), scheduler=scheduler, tokenizer=bert_tokenizer, codec_layout="lm1b"
    )


def test_log_likelihood_is_compute_vlb_on_the_codec_rows(pipe):
    out = pipe.log_likelihood(TEXTS, num_mc_samples=3, batch_size=2, generator=torch.Generator().manual_seed(7))
    bits = pipe.text_to_bits(TEXTS)
    generator = torch.Generator().manual_seed(7)
    direct = compute_vlb(pipe.model, bits, batch_size=2, num_mc_samples=3, generator=generator, show_progress=False)
    assert isinstance(out, LogLikelihoodOutput) and out.bits.shape == (len(TEXTS),)
    torch.testing.assert_close(out.bits, direct.vlb_bpd_per_row.double() * bits.shape[1])
    tokens = bits.shape[1] // pipe.bits_per_token
    torch.testing.assert_close(out.bits_per_token, out.bits / tokens)
    torch.testing.assert_close(out.ppl_bound, 2.0 ** out.bits_per_token)
    assert out.estimate.vlb_bpd == pytest.approx(direct.vlb_bpd) and out.estimate.num_examples == len(TEXTS)
    assert bool((out.bits > 0).all()) and out.estimate.vlb_bpd_stderr > 0


def test_log_likelihood_is_reproducible_with_a_seed_and_accepts_one_string(pipe):
    first = pipe.log_likelihood(TEXTS[0], generator=torch.Generator().manual_seed(0))
    again = pipe.log_likelihood([TEXTS[0]], generator=torch.Generator().manual_seed(0))
    assert first.bits.shape == (1,) and torch.equal(first.bits, again.bits)


def test_saved_folders_carry_the_likelihood_code():
    files = remote_code_files()
    assert {"likelihood.py", "vlb.py", "vlb_draws.py"} <= set(files), sorted(files)
