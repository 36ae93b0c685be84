"""Measurement helpers shared by the benchmarks: FLOPs of a call, this machine's measured matmul peak, the known
dense bf16 peaks of common GPUs, and a timer for the model calls inside a sampler run.

* FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products and attention (2 FLOPs per
  multiply-add); elementwise work (norms, activations, the sampler's update) is not counted, so "fraction of peak"
  reads as the share of the machine's matmul throughput that the call achieves.
* The peak is measured, not looked up: the best rate of a large square `torch.mm` in the run's dtype on the run's
  threads/device, sampled between the timed calls so that both see the same load from other processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "KNOWN_DENSE_BF16_TFLOPS",
    "MatmulPeak",
    "ModelCallTimer",
    "count_flops",
    "known_bf16_peak_tflops",
    "synchronize",
]

#: Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by a fragment of the name that
#: `torch.cuda.get_device_name` reports. Checked in order: the first fragment found in the name wins.
KNOWN_DENSE_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def known_bf16_peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a GPU named `device_name` (TFLOP/s), or `None` when it is not in the table."""
    for fragment, tflops in KNOWN_DENSE_BF16_TFLOPS:
        if fragment in device_name:
            return tflops
    return None


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of `fn()` (matmuls and attention), counted by `FlopCounterMode` on an uncompiled run of it."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class MatmulPeak:
    """
    Best GFLOP/s seen so far of `torch.mm` on `[size, size]` matrices of `dtype` on `device` (rounds of 2 products,
    each timed with `clock`). Call `sample()` between timed calls; `best_gflops` is the peak to compare against.
    """

    def __init__(
        self, size: int, dtype: torch.dtype, device: torch.device | str, clock: Callable[[], float] = time.perf_counter
    ):
        self.size, self.device, self.clock, self.best_gflops = size, torch.device(device), clock, 0.0
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.b = torch.randn(size, size, device=device).to(dtype)
        self.out = torch.empty(size, size, dtype=dtype, device=device)

    def sample(self, rounds: int = 1) -> float:
        """Time `rounds` rounds and return the best rate so far (GFLOP/s)."""
        for _ in range(rounds):
            synchronize(self.device)
            start = self.clock()
            for _ in range(2):
                torch.mm(self.a, self.b, out=self.out)
            synchronize(self.device)
            seconds = self.clock() - start
            if seconds > 0:
                self.best_gflops = max(self.best_gflops, 2 * 2 * self.size**3 / seconds / 1e9)
        return self.best_gflops


class ModelCallTimer:
    """
    Time spent inside `module(...)` during a sampler run, measured around the call from outside (so around the
    compiled function when the module was compiled with `module.compile()`; hooks would run inside it).

    It wraps the module's call through `nn.Module._compiled_call_impl`, the slot `module.compile()` fills: eager calls
    go through the same slot for as long as the timer is installed. `synchronize=True` waits for the device before
    and after each call (exact split on a GPU, at the cost of two syncs per call). Both clocks are kept: wall time and
    the CPU time of the process.
    """

    def __init__(self, module: torch.nn.Module, synchronize_device: torch.device | None = None):
        self.module, self.device = module, synchronize_device
        self.wall_seconds = self.cpu_seconds = 0.0
        self.calls = 0
        self._compiled = None

    def __enter__(self) -> ModelCallTimer:
        self._compiled = self.module._compiled_call_impl  # None for an eager module
        inner = self._compiled or self.module._call_impl

        def timed_call(*args, **kwargs):
            if self.device is not None:
                synchronize(self.device)
            wall, cpu = time.perf_counter(), time.process_time()
            output = inner(*args, **kwargs)
            if self.device is not None:
                synchronize(self.device)
            self.wall_seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu
            self.calls += 1
            return output

        self.module._compiled_call_impl = timed_call
        return self

    def __exit__(self, *exc) -> None:
        self.module._compiled_call_impl = self._compiled

    def reset(self) -> None:
        self.wall_seconds = self.cpu_seconds = 0.0
        self.calls = 0
