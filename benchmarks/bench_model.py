#!/usr/bin/env python
"""Speed of one `SDTModel` forward call: prints one JSON object.

    python benchmarks/bench_model.py [--configs e384-l6 cobit-s-lm1b cobit-s-owt] [--threads 2] [--repeats 5]
        [--modes eager compiled compiled-frozen] [--dtype float32|bfloat16] [--device cpu|cuda]

For each configuration the model gets random weights (the zero-initialised adaLN layers too, so no branch is the
identity) and is called on random noisy bits with `self_cond` set, as in sampling. Reported per configuration and
mode (`eager`, `compiled` = `model.compile(fullgraph=True, dynamic=False)`, inductor; `compiled-frozen` = the same
compiled with inductor's weight freezing, as `TORCHINDUCTOR_FREEZING=1` does: CPU inference):

* `seconds_min` / `seconds_median`: wall time of one forward call over `--repeats` timed calls (after warm-up). The
  minimum is the figure to compare: on a shared machine, other processes only ever make a call slower.
* `gflop_per_call`: floating-point operations of one call counted by `torch.utils.flop_counter.FlopCounterMode`
  (matrix products; elementwise work is not counted). On CPU it counts nothing for the attention kernel
  (`_scaled_dot_product_flash_attention_for_cpu` has no registered formula), so `gflop_per_call_with_attention` adds
  the attention products with torch's own sdpa formula.
* `gflops`: `gflop_per_call / seconds_min`; `fraction_of_matmul_peak`: that rate over `matmul_peak_gflops`, the best
  rate of a large square `torch.mm` in the same dtype on the same threads; `..._with_attention`: the same with the
  attention FLOPs counted. The peak is measured between the timed forward calls (one round of products before each
  call), so both see the same load from other processes.
* `compile_seconds`: wall time of the first compiled call (tracing and code generation).

`--tune-malloc` (glibc only) keeps freed memory in the heap instead of returning it to the kernel, so large
activations do not page-fault at every call (about 10% of a CoBit-S OWT forward on one core with glibc's defaults);
jemalloc or tcmalloc do the same for any program.

Timings on a CPU shared with other work are noisy: use several repeats and read the minimum. On a machine whose
cores other processes also use, `--threads 1 --clock process` measures the CPU time of the one working thread instead
of wall time (time-slicing by other processes then does not count); both the forward call and the matmul peak are
measured with the same clock, so the fraction of peak stays comparable.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sampling import compiling  # noqa: E402

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


#: `--modes` -> the keywords of `torch.compile` (None: eager); the first call compiles under `compiling(mode)`.
COMPILE_OPTIONS: dict[str, dict | None] = {
    "eager": None,
    "compiled": dict(fullgraph=True, dynamic=False),
    "compiled-frozen": dict(fullgraph=True, dynamic=False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configs", nargs="+", choices=sorted(CONFIGS), default=["e384-l6", "cobit-s-lm1b", "cobit-s-owt"]
    )
    parser.add_argument("--modes", nargs="+", choices=sorted(COMPILE_OPTIONS), default=["eager", "compiled"])
    parser.add_argument("--batch-size", type=int, default=None, help="override every configuration's batch size")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and inputs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square matmul for the peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall", help="wall time, or CPU time of this process (CPU only)"
    )
    parser.add_argument("--tune-malloc", action="store_true", help="glibc: no mmap/trim for activations (see above)")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def time_calls(fn, repeats: int, device: torch.device) -> list[float]:
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        fn()
        synchronize(device)
        seconds.append(clock() - start)
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


def count_flops(model: torch.nn.Module, inputs: tuple, with_attention: bool = False) -> int:
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention} if with_attention else {}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(*inputs)
    return counter.get_total_flops()


def tune_glibc_malloc() -> bool:
    """Keep freed blocks of up to 32 MiB in the heap and never trim it (glibc `mallopt`); False if not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        libc.mallopt(option, value)
        for option, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 256 << 20))
    )


def measure(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    model, inputs, batch, tokens = build(name, args, device, dtype)
    flops = count_flops(model, inputs)
    flops_with_attention = count_flops(model, inputs, with_attention=True)
    result = {
        "batch_size": batch,
        "tokens": tokens,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "gflop_per_call": flops / 1e9,
        "gflop_per_call_with_attention": flops_with_attention / 1e9,
    }
    for mode in args.modes:
        torch._dynamo.reset()
        entry = {}
        runner = model
        if COMPILE_OPTIONS[mode] is not None:
            runner = torch.compile(model, **COMPILE_OPTIONS[mode])
            start = time.perf_counter()
            with torch.no_grad(), compiling(mode):
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
            fraction_of_matmul_peak_with_attention=flops_with_attention / best / 1e9 / peak.best_gflops,
        )
        result[mode] = entry
    return result


def main(argv: list[str] | None = None) -> dict:
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    malloc_tuned = tune_glibc_malloc() if args.tune_malloc else False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    result = {
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "malloc_tuned": malloc_tuned,
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
