"""Sampling the golden tiny models with the golden sampler settings, in float32 and in bfloat16, and how many bits the
two precisions agree on. Shared by `gpu_check.py` and the test of bf16/fp32 agreement.

The golden data (a folder the user points to, `--golden-dir`) holds two tiny SDT models in the official checkpoint
format (`model/lm1b_tiny`, `model/owt_tiny`: `release.pt` and the official run config `official_config.json`) and the
official sampler's runs with them (`sampler/<name>.json`: grid points, batch, tokens, self-conditioning mode, churn
settings and seed). The entropy tables are the official `entropy_tables/<lm1b|owt>` folders.

bf16 changes the network's rounding, so a sampler trajectory drifts from the float32 one and the bits near the 0.5
threshold flip; the agreement measures how many bits survive that. The matched filter, sigmoid and the sampler stay
float32 in both runs (the pipeline runs the network alone under autocast).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["GOLDEN_MODELS", "GOLDEN_RUNS", "PRECISIONS", "agreement", "golden_pipeline", "golden_run_settings"]

#: Golden model -> (entropy table, bits per token).
GOLDEN_MODELS = {"lm1b_tiny": ("lm1b", 15), "owt_tiny": ("owt", 16)}
#: The official sampler runs of the golden data: deterministic, stochastic (churn) and refined self-conditioning.
GOLDEN_RUNS = ("ddim_det_carry", "ddim_stoch_carry", "ddim_stoch_refined")
#: How a run can be made: the float32 reference, bf16 autocast over float32 weights, and bf16 weights.
PRECISIONS = ("float32", "bf16-autocast", "bf16-weights")


def golden_run_settings(golden_dir: Path, name: str) -> dict:
    """The settings of golden sampler run `name`: levels, batch, tokens, self-conditioning, per-step gamma, seed."""
    meta = json.loads((Path(golden_dir) / "sampler" / f"{name}.json").read_text())
    stochastic = meta["stochastic"]["resolved"]
    levels = meta["num_steps_N (grid points)"]
    churn = stochastic["enabled"]
    return dict(
        num_inference_steps=levels,
        batch_size=meta["B"],
        tokens=meta["n_tokens"],
        self_conditioning=meta["sc_refresh_mode"],
        gamma=stochastic["s_churn"] / (levels - 1) if churn else 0.0,  # the official per-step gamma
        s_noise=stochastic["s_noise"] if churn else 1.0,
        seed=meta["seed"],
    )


def golden_pipeline(golden_dir: Path, tables_dir: Path, model_name: str, run: dict, tokenizer):
    """A pipeline of golden model `model_name` (float32, CPU) with the scheduler of the golden run `run`."""
    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTModel

    folder = Path(golden_dir) / "model" / model_name
    model = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    table, bits_per_token = GOLDEN_MODELS[model_name]
    scheduler = EntropyRateScheduler.from_entropy_tables(
        Path(tables_dir) / table, self_conditioning=run["self_conditioning"], gamma=run["gamma"], s_noise=run["s_noise"]
    )
    layout = "lm1b" if bits_per_token == 15 else "generic"
    pipe = BitstreamDiffusionPipeline(model=model, scheduler=scheduler, tokenizer=tokenizer, codec_layout=layout)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_probs(pipe, run: dict, precision: str, seeds, batch_size: int, tokens: int) -> torch.Tensor:
    """Final probabilities `[len(seeds) * batch_size, bits]` of runs with `seeds` (one generator per run), float32."""
    model = pipe.model
    original_dtype = model.dtype
    if precision == "bf16-weights":
        model.to(torch.bfloat16)
    try:
        probs = [
            pipe(
                batch_size=batch_size,
                num_inference_steps=run["num_inference_steps"],
                sequence_length=tokens,
                generator=torch.Generator().manual_seed(seed),
                output_type="probs",
                autocast_dtype=torch.bfloat16 if precision == "bf16-autocast" else None,
            ).probs
            for seed in seeds
        ]
    finally:
        model.to(original_dtype)
    return torch.cat(probs).float()


def agreement(
    pipe, run: dict, precision: str, seeds, batch_size: int, tokens: int, device: str | torch.device = "cpu"
) -> dict:
    """
    Bits of `precision` runs against the float32 runs with the same seeds: `bit_agreement` (share of equal bits),
    `token_agreement` (share of tokens with every bit equal), `confident_bit_agreement` (bits whose float32
    probability is at least 0.1 from the threshold), and the counts.
    """
    pipe.to(device)
    reference = sample_probs(pipe, run, "float32", seeds, batch_size, tokens)
    other = sample_probs(pipe, run, precision, seeds, batch_size, tokens)
    reference_bits, other_bits = reference > 0.5, other > 0.5
    same = reference_bits == other_bits
    bits_per_token = pipe.bits_per_token
    confident = (reference - 0.5).abs() >= 0.1
    return {
        "bit_agreement": same.float().mean().item(),
        "token_agreement": same.view(same.shape[0], -1, bits_per_token).all(-1).float().mean().item(),
        "confident_bit_agreement": same[confident].float().mean().item() if confident.any() else None,
        "confident_share": confident.float().mean().item(),
        "num_bits": same.numel(),
        "max_abs_prob_difference": (reference - other).abs().max().item(),
    }
