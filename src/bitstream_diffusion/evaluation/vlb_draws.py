"""The random inputs of the variational bound: noise levels, their importance weights and the noisy bits.

:func:`~bitstream_diffusion.evaluation.compute_vlb` estimates, per data row ``x0``, a reconstruction term at
``sigma_min`` and a Monte-Carlo integral over ``y = ln(sigma)`` (see ``docs/evaluation.md#likelihood``). This module
makes every random number that estimate needs, for one batch, in a fixed order, so that a seeded generator gives the
same numbers as the official estimator:

1. ``randn(B, S)``: the reconstruction noise, ``z0 = x0 + sigma_min * eps0``;
2. the log-sigma draws ``y`` of shape ``[B, K]``:

   * ``"log-uniform"``: ``rand(B, K)``, ``y = U * (b - a) + a`` with ``[a, b] = [ln sigma_min, ln sigma_max]``;
   * ``"log-normal"``: the EDM training density ``N(p_mean, p_std^2)`` in ``y``, truncated to ``[a, b]`` by
     rejection: each round draws ``randn(n_open)`` for the entries still open (row-major over ``[B, K]``) and keeps
     those inside ``[a, b]``; after at most 128 rounds, entries still open get ``uniform_(a, b)``;

3. ``randn(B, K, S)``: the diffusion noise, ``z = x0 + sigma * eps`` with ``sigma = exp(y)``.

Everything is float32 and drawn on the generator's device (the CPU when no generator is given: then torch's global
CPU generator is used, which is what ``torch.manual_seed`` seeds).

:class:`VLBDraws` holds the result. It is also the way to inject noise from elsewhere (e.g. recorded inputs of
another implementation) into :func:`~bitstream_diffusion.evaluation.vlb.vlb_terms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "SIGMA_SAMPLINGS",
    "SigmaSampling",
    "VLBDraws",
    "draw_vlb_noise",
    "importance_weights",
    "sample_log_sigma",
    "truncated_normal_log_density",
]

SigmaSampling = Literal["log-uniform", "log-normal"]
SIGMA_SAMPLINGS: tuple[str, ...] = ("log-uniform", "log-normal")

_MAX_REJECTION_ROUNDS = 128
_MIN_NORMALISER = 1e-12
_MAX_WEIGHT = 1e12


@dataclass
class VLBDraws:
    """The noisy inputs of one batch of the bound.

    Attributes:
        recon_noisy_bits: ``[B, S]`` float32, ``x0 + sigma_min * eps0``: the input of the reconstruction call.
        sigmas: ``[B, K]`` float32 noise levels of the diffusion term (``exp(y)``).
        noisy_bits: ``[B, K, S]`` float32, ``x0 + sigma * eps``: the inputs of the diffusion call (row ``b * K + k``
            of the flattened ``[B * K, S]`` call is ``noisy_bits[b, k]``).
        importance_weights: ``[B, K]`` float32 ``1 / q(y)``, the inverse density of ``y = ln(sigma)`` under the
            sampling distribution (``ln(sigma_max / sigma_min)`` for the log-uniform one).
    """

    recon_noisy_bits: torch.Tensor
    sigmas: torch.Tensor
    noisy_bits: torch.Tensor
    importance_weights: torch.Tensor

    def to(self, device: torch.device | str) -> VLBDraws:
        return VLBDraws(
            recon_noisy_bits=self.recon_noisy_bits.to(device),
            sigmas=self.sigmas.to(device),
            noisy_bits=self.noisy_bits.to(device),
            importance_weights=self.importance_weights.to(device),
        )


def check_sigma_sampling(sigma_sampling: str) -> str:
    if sigma_sampling not in SIGMA_SAMPLINGS:
        raise ValueError(
            f"Unknown sigma_sampling {sigma_sampling!r}; use 'log-uniform' (the official default) or 'log-normal' "
            f"(the EDM training density, truncated to [sigma_min, sigma_max])."
        )
    return sigma_sampling


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def truncated_normal_log_density(
    log_sigma: torch.Tensor, *, p_mean: float, p_std: float, sigma_min: float, sigma_max: float
) -> torch.Tensor:
    """``log q(y)`` of ``y = ln(sigma) ~ N(p_mean, p_std^2)`` truncated to ``[ln sigma_min, ln sigma_max]``.

    Computed in the dtype of ``log_sigma`` (float32 for the draws here); the normaliser is clamped at 1e-12 so a
    window with almost no mass gives large but finite weights.
    """
    dtype, device = log_sigma.dtype, log_sigma.device
    mean = torch.tensor(p_mean, dtype=dtype, device=device)
    std = torch.tensor(p_std, dtype=dtype, device=device)
    lower = (torch.tensor(math.log(sigma_min), dtype=dtype, device=device) - mean) / std
    upper = (torch.tensor(math.log(sigma_max), dtype=dtype, device=device) - mean) / std
    z = (log_sigma - mean) / std
    log_density = -0.5 * z * z - math.log(math.sqrt(2.0 * math.pi)) - torch.log(std)
    normaliser = (_normal_cdf(upper) - _normal_cdf(lower)).clamp_min(_MIN_NORMALISER)
    return log_density - torch.log(normaliser)


def importance_weights(
    log_sigma: torch.Tensor,
    *,
    sigma_sampling: SigmaSampling,
    sigma_min: float,
    sigma_max: float,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> torch.Tensor:
    """``1 / q(y)`` for draws ``y = ln(sigma)`` of the given sampling distribution (same shape and dtype).

    Log-uniform: the constant ``ln(sigma_max / sigma_min)``. Log-normal: ``exp(-log q(y))``, capped at 1e12.
    """
    check_sigma_sampling(sigma_sampling)
    if sigma_sampling == "log-uniform":
        return torch.full_like(log_sigma, math.log(sigma_max) - math.log(sigma_min))
    log_q = truncated_normal_log_density(
        log_sigma, p_mean=p_mean, p_std=p_std, sigma_min=sigma_min, sigma_max=sigma_max
    )
    return torch.exp(-log_q).clamp_max(_MAX_WEIGHT)


def sample_log_sigma(
    batch_size: int,
    num_mc_samples: int,
    *,
    sigma_sampling: SigmaSampling,
    sigma_min: float,
    sigma_max: float,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``y = ln(sigma)`` of shape ``[batch_size, num_mc_samples]`` and its importance weights ``1 / q(y)``.

    Returns:
        ``(log_sigma, weights)``, both float32 ``[B, K]`` on the generator's device.
    """
    check_sigma_sampling(sigma_sampling)
    device = generator.device if generator is not None else torch.device("cpu")
    low, high = math.log(sigma_min), math.log(sigma_max)
    shape = (batch_size, num_mc_samples)
    if sigma_sampling == "log-uniform":
        log_sigma = torch.rand(shape, generator=generator, device=device) * (high - low) + low
    else:
        log_sigma = torch.empty(shape, device=device)
        open_entries = torch.ones(shape, dtype=torch.bool, device=device)
        for _ in range(_MAX_REJECTION_ROUNDS):
            if not bool(open_entries.any()):
                break
            index = open_entries.nonzero(as_tuple=False)  # row-major order
            proposal = p_mean + p_std * torch.randn(index.shape[0], generator=generator, device=device)
            accepted = (proposal >= low) & (proposal <= high)
            rows, cols = index[accepted, 0], index[accepted, 1]
            log_sigma[rows, cols] = proposal[accepted]
            open_entries[rows, cols] = False
        if bool(open_entries.any()):  # a window with almost no mass: fall back to uniform draws in it
            index = open_entries.nonzero(as_tuple=False)
            fallback = torch.empty(index.shape[0], device=device).uniform_(low, high, generator=generator)
            log_sigma[index[:, 0], index[:, 1]] = fallback
    weights = importance_weights(
        log_sigma, sigma_sampling=sigma_sampling, sigma_min=sigma_min, sigma_max=sigma_max, p_mean=p_mean, p_std=p_std
    )
    return log_sigma, weights


def draw_vlb_noise(
    x0: torch.Tensor,
    num_mc_samples: int,
    *,
    sigma_sampling: SigmaSampling = "log-uniform",
    sigma_min: float = 0.08,
    sigma_max: float = 80.0,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
) -> VLBDraws:
    """All random inputs of one batch, in the order of the module docstring.

    Args:
        x0: ``[B, S]`` clean bits as float32 (on any device; the draws are made on the generator's device and the
            results are returned there).
        num_mc_samples: ``K``, the log-sigma draws per row.

    Returns:
        :class:`VLBDraws` on the generator's device (the CPU without a generator).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    x0 = x0.to(device=device, dtype=torch.float32)
    batch, num_bits = x0.shape
    sigma0 = torch.full((batch,), sigma_min, dtype=torch.float32, device=device)
    recon_noisy_bits = x0 + sigma0.view(-1, 1) * torch.randn((batch, num_bits), generator=generator, device=device)
    log_sigma, weights = sample_log_sigma(
        batch,
        num_mc_samples,
        sigma_sampling=sigma_sampling,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        p_mean=p_mean,
        p_std=p_std,
        generator=generator,
    )
    sigmas = torch.exp(log_sigma)
    noise = torch.randn((batch, num_mc_samples, num_bits), generator=generator, device=device)
    noisy_bits = x0[:, None, :] + sigmas[:, :, None] * noise
    return VLBDraws(recon_noisy_bits=recon_noisy_bits, sigmas=sigmas, noisy_bits=noisy_bits, importance_weights=weights)
