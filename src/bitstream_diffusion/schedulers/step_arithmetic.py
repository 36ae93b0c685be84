# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The elementwise arithmetic of one sampler call, in the official float32 operation order, with as few tensor
operations as that order allows.

A sampler call touches `[batch, num_bits]` tensors a handful of times (churn noise, drift, Euler update). Each
operation is cheap, but on a small model every one of them is a visible share of the call, and on a GPU every one is a
kernel launch. So:

* the scalars of every call (`sigma^2`, `-sigma`, `sigma_next - sigma`) are computed once per run, elementwise over
  the whole grid in float32 ([`call_scalars`]), which gives the values of the per-call 0-d expressions bit for bit.
  They are kept as Python floats: a float32 value is exact as a Python float, and a tensor operation with a Python
  scalar casts it back to the tensor's dtype, so `x / s` is the same whether `s` is a 0-d float32 tensor or its
  Python value (on the GPU both are host scalars: no copy and no sync);
* the update works in place on the one new tensor it makes (`D - x`), in the same order of operations as the
  out-of-place formula; IEEE addition and multiplication are commutative, so `s * t` and `t * s` are the same bits.

Every function here gives exactly the bits of the plain formula in its docstring.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["CallScalars", "call_scalars", "churn_", "derivative", "euler_update_", "in_dtype", "standard_normal"]


class CallScalars(NamedTuple):
    """The scalars of a step from `sigma` (Python floats holding float32 values): what `step` divides and multiplies
    by."""

    sigma: float
    sigma_squared: float
    neg_sigma: float
    step_size: float  # `sigma_next - sigma`, computed in float32 (also for a float64 sample), as the official step does


def call_scalars(sigmas: torch.Tensor, next_sigmas: torch.Tensor) -> list[CallScalars]:
    """
    The scalars of the steps from `sigmas[i]` to `next_sigmas[i]` (float32 `[n]` each, on the CPU), one
    [`CallScalars`] per step: `sigma^2`, `-sigma` and `sigma_next - sigma`, each in float32. Elementwise over the
    grid, which gives the bits of the per-step 0-d float32 expressions.
    """
    columns = (sigmas, sigmas**2, -sigmas, next_sigmas - sigmas)
    return [CallScalars(*values) for values in zip(*(column.tolist() for column in columns))]


def in_dtype(scalars: CallScalars, dtype: torch.dtype) -> CallScalars:
    """`scalars` for a step computed in `dtype` (float64 for a float64 sample): `sigma^2` of `sigma` cast first."""
    if dtype == torch.float32:
        return scalars
    sigma_squared = torch.tensor(scalars.sigma, dtype=dtype).square().item()
    return scalars._replace(sigma_squared=sigma_squared)


def derivative(sample: torch.Tensor, denoised: torch.Tensor, scalars: CallScalars) -> torch.Tensor:
    """The probability-flow drift `-sigma * ((D - x) / sigma**2)` (a new tensor), in the official op order."""
    drift = denoised - sample
    drift.div_(scalars.sigma_squared)
    return drift.mul_(scalars.neg_sigma)


def euler_update_(drift: torch.Tensor, sample: torch.Tensor, step_size: float) -> torch.Tensor:
    """`sample + step_size * drift`, written into `drift` (which is returned)."""
    return drift.mul_(step_size).add_(sample)


def churn_(noise: torch.Tensor, sample: torch.Tensor, s_noise: float, delta: float) -> torch.Tensor:
    """EDM's churn `sample + delta * (noise * s_noise)`, float32, written into `noise` (which is returned)."""
    return noise.mul_(s_noise).mul_(delta).add_(sample)


def standard_normal(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
) -> torch.Tensor:
    """
    A float32 standard-normal draw of `shape` on `device`: exactly `diffusers.utils.torch_utils.randn_tensor`'s
    draw (a CPU generator draws on the CPU, then the values move to `device`), without its per-call bookkeeping when
    one generator (or none) draws the whole tensor.
    """
    single = generator is None or (
        isinstance(generator, torch.Generator) and (generator.device.type == "cpu" or generator.device == device)
    )
    if not single:
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    draw_device = device if generator is None else generator.device
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    return noise if draw_device == device else noise.to(device)
