#!/usr/bin/env python
"""Training throughput of the accelerate script's step: optimizer steps/s and tokens/s, with and without
self-conditioning, for one config and batch size. Prints one JSON object.

Each timed step is the training script's: sigma from the paper's sampler, ``x_t = x0 + sigma * eps``, the
self-conditioning bootstrap pass (when on), the SDT forward (``bitstream_diffusion.training.noisy_batch``), the
EDM-weighted loss, backward, clip, AdamW, EMA update and the entropy-estimator update. Rows are real prepared token
rows of the config's corpus (random rows with ``--synthetic``). The model is built from the config (preset +
overrides), so ``--config configs/cobit-s-owt.yaml`` times CoBit-S OWT.

    python benchmarks/bench_training.py --config examples/train_bitstream_diffusion/configs/tiny-wiki.yaml \
        --train_batch_size 32 --steps 20
    python benchmarks/bench_training.py --config examples/train_bitstream_diffusion/configs/cobit-s-lm1b.yaml \
        --train_batch_size 256 --mixed_precision bf16 --synthetic      # on a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_bitstream_diffusion" / "train_bitstream_diffusion.py"


def load_training_script():
    spec = importlib.util.spec_from_file_location("train_bitstream_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    bench = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--steps", type=int, default=20, help="timed optimizer steps per setting")
    bench.add_argument("--warmup_steps", type=int, default=3, help="untimed steps first")
    bench.add_argument("--synthetic", action="store_true", help="random token rows instead of the prepared corpus")
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    own, rest = bench.parse_known_args(argv)

    train = load_training_script()
    args = train.parse_args(rest)
    if own.threads:
        torch.set_num_threads(own.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)

    from accelerate import Accelerator

    from bitstream_diffusion import SDTModel
    from bitstream_diffusion.training import (
        EntropyRateEstimator,
        ExponentialMovingAverage,
        TrainingSigmaSampler,
        bitstream_loss,
        noisy_batch,
    )

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    device = accelerator.device
    _, _, codec, train_dataset, _ = (None,) * 5 if own.synthetic else train.build_data(args, accelerator)
    if own.synthetic:
        from bitstream_diffusion.codecs import bits_for_vocab

        bits_per_token = args.bits_per_token or (15 if args.data_recipe == "lm1b" else 16)
        vocab = 30522 if args.data_recipe == "lm1b" else 2 ** bits_for_vocab(65536)
        num_tokens = args.num_tokens
    else:
        bits_per_token, num_tokens = codec.bits_per_token, codec.num_tokens
    batch = args.train_batch_size

    def rows(step: int) -> torch.Tensor:
        if own.synthetic:
            return torch.randint(0, vocab, (batch, num_tokens), generator=torch.Generator().manual_seed(step))
        start = (step * batch) % max(1, len(train_dataset) - batch)
        return torch.stack([train_dataset[start + i] for i in range(batch)])

    def measure(prob: float) -> tuple[dict, object]:
        """Time one setting; ``prob`` 1.0 pays the bootstrap self-conditioning pass at every step, 0.0 never."""
        torch.manual_seed(args.seed)
        config = train.build_model_config(args, bits_per_token, num_tokens)
        model = SDTModel(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate,
                                      betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay)
        model, optimizer = accelerator.prepare(model, optimizer)
        ema = ExponentialMovingAverage(model, decay=args.ema_decay)
        sampler = TrainingSigmaSampler(p_mean=args.p_mean, p_std=args.p_std)
        estimator = EntropyRateEstimator(buffer_size=args.entropy_buffer_size)
        generator = torch.Generator(device=device)

        def one_step(step: int) -> None:
            generator.manual_seed(step)
            ids = rows(step).to(device)
            x0, sigma, logits = noisy_batch(model, ids, bits_per_token=bits_per_token, sigma_sampler=sampler,
                                            step=step, tables=None, generator=generator, self_conditioning_prob=prob)
            loss, mse = bitstream_loss(logits, x0, sigma)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(model)
            estimator.update(sigma, mse.detach())

        for step in range(own.warmup_steps):
            one_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for step in range(own.steps):
            one_step(own.warmup_steps + step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        result = {
            "self_conditioning": "every step (bootstrap pass)" if prob else "off",
            "optimizer_steps_per_s": round(own.steps / seconds, 4),
            "tokens_per_s": round(own.steps * batch * num_tokens / seconds, 1),
            "bits_per_s": round(own.steps * batch * num_tokens * bits_per_token / seconds, 1),
            "seconds_per_step": round(seconds / own.steps, 5),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None,
        }
        accelerator.free_memory()
        return result, config

    results = [measure(1.0), measure(0.0)]
    config = results[0][1]
    results = [r for r, _ in results]
    with_sc, without_sc = results
    report = {
        "benchmark": "bench_training",
        "config": str(args.config),
        "model": {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
                  "num_attention_heads": config.num_attention_heads, "bits_per_token": bits_per_token,
                  "num_tokens": num_tokens,
                  "parameters": sum(p.numel() for p in SDTModel(config).parameters())},
        "batch_size": batch,
        "tokens_per_step": batch * num_tokens,
        "mixed_precision": accelerator.mixed_precision,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "data": "synthetic" if own.synthetic else "prepared corpus",
        "timed_steps": own.steps,
        "with_self_conditioning": with_sc,
        "without_self_conditioning": without_sc,
        "slowdown_with_self_conditioning": round(
            without_sc["optimizer_steps_per_s"] / with_sc["optimizer_steps_per_s"], 3
        ),
        "paper_mean_cost_note": "training uses p=0.5, so on average half the steps pay the bootstrap pass",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
