#!/usr/bin/env python
"""Speed of one `SDTModel` forward call: prints one JSON object.

    python benchmarks/bench_model.py [--configs e384-l6 cobit-s-lm1b cobit-s-owt] [--threads 2] [--repeats 5]
        [--modes eager compiled] [--dtype float32|bfloat16] [--device cpu|cuda]

For each configuration the model gets random weights (the zero-initialised adaLN layers too, so no branch is the
identity) and is called on random noisy bits with `self_cond` set, as in sampling. Reported per configuration and
mode (`eager`, `compiled` = `model.compile(fullgraph=True, dynamic=False)`, inductor):

* `seconds_min` / `seconds_median`: wall time of one forward call over `--repeats` timed calls (after warm-up). The
  minimum is the figure to compare: on a shared machine, other processes only ever make a call slower.
* `gflop_per_call`: floating-point operations of one call counted by `torch.utils.flop_counter.FlopCounterMode`
  (matmuls and attention; elementwise work is not counted).
* `gflops`: `gflop_per_call / seconds_min`; `fraction_of_matmul_peak`: that rate over `matmul_peak_gflops`, the best
  rate of a large square `torch.mm` in the same dtype on the same threads. The peak is measured between the timed
  forward calls (one round of products before each call), so both see the same load from other processes.
* `compile_seconds`: wall time of the first compiled call (tracing and code generation).

Timings on a CPU shared with other work are noisy: use several repeats and read the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

CONFIGS = {
    # name: (preset, overrides, batch size, tokens)
    "e384-l6": (
        "cobit-s-lm1b",
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024),
        4,
        128,
    ),
    "cobit-s-lm1b": ("cobit-s-lm1b", {}, 4, 128),
    "cobit-s-owt": ("cobit-s-owt", {}, 1, 1024),
    "cobit-m-owt": ("cobit-m-owt", {}, 1, 1024),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs", nargs="+", choices=sorted(CONFIGS), default=["e384-l6", "cobit-s-lm1b", "cobit-s-owt"]
    )
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--batch-size", type=int, default=None, help="override every configuration's batch size")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and inputs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul for the peak")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, repeats: int, device: torch.device) -> list[float]:
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


class MatmulPeak:
    """Best GFLOP/s seen so far of `torch.mm` on `[size, size]` matrices (rounds of 2 products)."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device):
        self.size, self.device, self.best_gflops = size, device, 0.0
        self.a = torch.randn(size, size, dtype=dtype, device=device)
        self.b = torch.randn(size, size, dtype=dtype, device=device)
        self.out = torch.empty(size, size, dtype=dtype, device=device)

    def _round(self) -> None:
        for _ in range(2):
            torch.mm(self.a, self.b, out=self.out)

    def sample(self, rounds: int = 1) -> float:
        for seconds in time_calls(self._round, rounds, self.device):
            self.best_gflops = max(self.best_gflops, 2 * 2 * self.size**3 / seconds / 1e9)
        return self.best_gflops


def build(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from bitstream_diffusion import SDTConfig, SDTModel

    preset, overrides, batch, tokens = CONFIGS[name]
    batch = args.batch_size or batch
    config = SDTConfig.from_preset(preset, **overrides)
    model = SDTModel(config).eval()
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.to(device=device, dtype=dtype)
    num_bits = tokens * config.bits_per_token
    bits = torch.randint(0, 2, (batch, num_bits), generator=generator).float()
    sigma = torch.full((batch,), 0.7)
    noisy = bits + sigma[:, None] * torch.randn(bits.shape, generator=generator)
    self_cond = torch.rand(bits.shape, generator=generator)
    inputs = tuple(t.to(device=device, dtype=dtype) for t in (noisy, sigma, self_cond))
    return model, inputs, batch, tokens


def count_flops(model: torch.nn.Module, inputs: tuple) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def measure(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    model, inputs, batch, tokens = build(name, args, device, dtype)
    flops = count_flops(model, inputs)
    result = {
        "batch_size": batch,
        "tokens": tokens,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "gflop_per_call": flops / 1e9,
    }
    for mode in args.modes:
        torch._dynamo.reset()
        entry = {}
        runner = model
        if mode == "compiled":
            runner = torch.compile(model, fullgraph=True, dynamic=False)
            start = time.perf_counter()
            with torch.no_grad():
                runner(*inputs)
            synchronize(device)
            entry["compile_seconds"] = time.perf_counter() - start

        def call():
            with torch.no_grad():
                runner(*inputs)

        for _ in range(args.warmup):
            call()
        peak, seconds = MatmulPeak(args.peak_size, dtype, device), []
        peak.sample(2)
        for _ in range(args.repeats):
            peak.sample()
            seconds += time_calls(call, 1, device)
        best = min(seconds)
        entry.update(
            seconds_min=best,
            seconds_median=statistics.median(seconds),
            gflops=flops / best / 1e9,
            matmul_peak_gflops=peak.best_gflops,
            fraction_of_matmul_peak=flops / best / 1e9 / peak.best_gflops,
        )
        result[mode] = entry
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    result = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "configs": {name: measure(name, args, device, dtype) for name in args.configs},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(0 if main() else 1)
