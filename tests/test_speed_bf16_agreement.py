"""bf16 sampling against float32 sampling on the golden tiny models with the golden sampler settings: the share of
bits both precisions give (CPU bf16 autocast here; `benchmarks/gpu_check.py` measures the same on a GPU).

Measured on the development machine (x86 CPU with AVX-512 bf16; 3 seeds x 8 samples x 5 tokens per case, bf16
autocast and bf16 weights): bits 0.9964-0.9994 equal (LM1B tiny >= 0.998, OWT tiny >= 0.996), tokens 0.94-0.99, bits
at least 0.1 from the threshold 0.997-1.0. The bounds below leave room for other CPUs' bf16 kernels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _golden_sampling as golden_sampling  # noqa: E402

SEEDS, BATCH = 3, 8


@pytest.fixture(scope="module")
def tokenizers(bert_tokenizer, gpt2_tokenizer):
    return {"lm1b_tiny": bert_tokenizer, "owt_tiny": gpt2_tokenizer}


@pytest.mark.slow
@pytest.mark.parametrize("model_name", sorted(golden_sampling.GOLDEN_MODELS))
@pytest.mark.parametrize("run_name", golden_sampling.GOLDEN_RUNS)
def test_bf16_sampling_agrees_with_float32(golden_dir, entropy_tables_dir, tokenizers, model_name, run_name):
    run = golden_sampling.golden_run_settings(golden_dir, run_name)
    pipe = golden_sampling.golden_pipeline(golden_dir, entropy_tables_dir, model_name, run, tokenizers[model_name])
    precisions = ("bf16-autocast", "bf16-weights") if run_name == "ddim_stoch_carry" else ("bf16-autocast",)
    for precision in precisions:
        result = golden_sampling.agreement(
            pipe, run, precision, seeds=range(run["seed"], run["seed"] + SEEDS), batch_size=BATCH, tokens=run["tokens"]
        )
        assert result["num_bits"] == SEEDS * BATCH * run["tokens"] * pipe.bits_per_token
        assert result["bit_agreement"] >= 0.98, result
        assert result["confident_bit_agreement"] >= 0.99, result
        assert result["token_agreement"] >= 0.8, result
        assert result["max_abs_prob_difference"] > 0, result  # bf16 really ran


def test_golden_run_settings_are_the_official_ones(golden_dir):
    """The per-step gamma of the official S_churn, the batch, tokens and seed of the golden runs."""
    stochastic = golden_sampling.golden_run_settings(golden_dir, "ddim_stoch_refined")
    assert stochastic["gamma"] == pytest.approx(2.2 / 11) and stochastic["s_noise"] == 1.003
    assert (stochastic["batch_size"], stochastic["tokens"], stochastic["num_inference_steps"]) == (3, 5, 12)
    assert stochastic["self_conditioning"] == "refined" and stochastic["seed"] == 4003
    deterministic = golden_sampling.golden_run_settings(golden_dir, "ddim_det_carry")
    assert deterministic["gamma"] == 0.0 and deterministic["s_noise"] == 1.0
