# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The noise grids of the entropy-rate sampler: inverse-CDF placement on an entropy table, EDM's Karras grid, the
CDF quantiles that place the churn window, and the per-step churn factors.

Pure functions of their arguments, in float32 and in the official operation order, so that the grids are bit-exact
with the official sampler (see docs/design.md#the-entropy-rate-schedule).
"""

from __future__ import annotations

import torch

from .entropy_tables import EntropyTables

__all__ = [
    "churn_gammas",
    "churn_levels",
    "churn_points",
    "entropy_grid",
    "entropy_quantile",
    "gamma_from_paper",
    "gamma_from_s_churn",
    "karras_grid",
]


def _sampling_cdf(tables: EntropyTables) -> torch.Tensor:
    """The CDF as the sampler reads it: its last value forced to exactly 1, as the official code does."""
    cdf = tables.cdf.clone()
    cdf[-1] = 1.0
    return cdf


def _interp_linear(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear `y(x_query)` on increasing knots `x`, clamped to `[x[0], x[-1]]` (float32, official order)."""
    x_query = x_query.clamp(min=x[0], max=x[-1])
    idx = torch.searchsorted(x, x_query, right=False).clamp(min=1, max=x.numel() - 1)
    weight = (x_query - x[idx - 1]) / (x[idx] - x[idx - 1]).clamp_min(1e-20)
    return y[idx - 1] + weight * (y[idx] - y[idx - 1])


def karras_grid(num_levels: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """
    EDM's grid `(s_max^(1/rho) + t (s_min^(1/rho) - s_max^(1/rho)))^rho` for `t` in `linspace(0, 1, num_levels)`,
    descending float32 `[num_levels]` with the endpoints set exactly.
    """
    sigma_min, sigma_max, rho = float(sigma_min), float(sigma_max), float(rho)
    ramp = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float32)
    max_inv_rho, min_inv_rho = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    grid = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    grid[0], grid[-1] = sigma_max, sigma_min
    return grid


def entropy_grid(tables: EntropyTables, num_levels: int, terminal_sigma: float, sigma_max: float) -> torch.Tensor:
    """
    Inverse-CDF placement, descending float32 `[num_levels]`: level j sits at CDF value `F_lo + (1 - j/(n-1))
    (F_hi - F_lo)`, mapped to sigma by linear interpolation between bin midpoints (the official pairing of a bin's
    cumulative mass with its midpoint), between `max(terminal_sigma, first midpoint)` and `min(sigma_max, last
    midpoint)`. Without entropy mass between those ends the grid is geometric, as in the official code.
    """
    cdf, sigmas = _sampling_cdf(tables), tables.sigmas
    sigma_lo = max(float(terminal_sigma), float(sigmas[0]))
    sigma_hi = min(float(sigma_max), float(sigmas[-1]))
    cdf_lo = _interp_linear(sigmas, cdf, torch.tensor(sigma_lo, dtype=torch.float32))
    cdf_hi = _interp_linear(sigmas, cdf, torch.tensor(sigma_hi, dtype=torch.float32))
    if abs(float(cdf_hi - cdf_lo)) < 1e-12:
        log_lo, log_hi = torch.log(torch.tensor(sigma_lo)), torch.log(torch.tensor(sigma_hi))
        ascending = torch.exp(torch.linspace(log_lo, log_hi, num_levels, dtype=torch.float32))
    else:
        u = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float32)
        u = (cdf_lo + u * (cdf_hi - cdf_lo)).clamp(min=cdf[0].item(), max=1.0 - 1e-7)
        idx = torch.searchsorted(cdf, u, right=False).clamp(min=1, max=cdf.numel() - 1)
        weight = (u - cdf[idx - 1]) / (cdf[idx] - cdf[idx - 1]).clamp_min(1e-20)
        ascending = sigmas[idx - 1] + weight * (sigmas[idx] - sigmas[idx - 1])
    grid = torch.flip(ascending, dims=[0])
    grid[0], grid[-1] = sigma_hi, sigma_lo
    return grid


def entropy_quantile(tables: EntropyTables, q: float) -> float:
    """
    The sigma at level `q` in [0, 1] of the entropy CDF, as the official code maps it: linear interpolation between
    bin midpoints, with the cumulative mass of a bin paired with its midpoint; `q = 0` gives the first midpoint.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"Quantile q must lie in [0, 1], got {q}.")
    cdf, sigmas = _sampling_cdf(tables), tables.sigmas
    q_t = torch.tensor(q, dtype=torch.float32)
    i = int(torch.searchsorted(cdf, q_t, right=False).clamp(0, cdf.numel() - 1))
    if i == 0:
        return float(sigmas[0])
    weight = (q_t - cdf[i - 1]) / (cdf[i] - cdf[i - 1]).clamp_min(1e-20)
    return float(sigmas[i - 1] + weight * (sigmas[i] - sigmas[i - 1]))


def churn_gammas(grid: torch.Tensor, gamma: float, window: tuple[float, float] | None) -> torch.Tensor:
    """
    The churn factor of each step from `grid[i]` (float64 `[len(grid) - 1]`): `gamma` where the level lies in the
    closed `window` `(low, high)` of sigmas, else 0. The levels are compared in float64, like the official Python
    floats. `window` may be `None` when `gamma` is 0.
    """
    if gamma == 0:
        return torch.zeros(grid.numel() - 1, dtype=torch.float64)
    low, high = window
    levels = grid[:-1].double()
    return ((levels >= low) & (levels <= high)).to(torch.float64) * gamma


def churn_levels(sigmas: torch.Tensor, gammas: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """
    The steps `i` with `gammas[i] > 0`, with their `sigma_hat = float32(sigma_i * float32(1 + gamma_i))` and `delta =
    sqrt(max(sigma_hat^2 - sigma_i^2, 0))` (float32 `[k]` each, in step order). Computed elementwise in float32,
    bit-identical to the per-step scalar formula.
    """
    churned = torch.nonzero(gammas > 0).flatten()
    sigmas = sigmas[: gammas.numel()][churned]
    sigma_hats = sigmas * (1.0 + gammas[churned]).to(torch.float32)
    deltas = (sigma_hats.square() - sigmas.square()).clamp_min(0.0).sqrt()
    return churned.tolist(), sigma_hats, deltas


def churn_points(sigmas: torch.Tensor, gammas: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """
    For each step `i` with `gammas[i] > 0`: `(sigma_hat, delta)` as 0-d float32 tensors (see [`churn_levels`]).
    """
    levels, sigma_hats, deltas = churn_levels(sigmas, gammas)
    return dict(zip(levels, zip(sigma_hats.unbind(), deltas.unbind())))


def gamma_from_s_churn(s_churn: float, num_inference_steps: int) -> float:
    """
    Convert the official/EDM `S_churn` into the per-step `gamma` for `num_inference_steps` levels.

    The official sampler uses `gamma_i = min(S_churn / (N - 1), sqrt(2) - 1)` on an N-point grid (the cap is
    applied by the scheduler).
    """
    if num_inference_steps < 2:
        raise ValueError(f"num_inference_steps must be >= 2, got {num_inference_steps}.")
    return float(s_churn) / (num_inference_steps - 1)


def gamma_from_paper(gamma: float, nfe: int) -> float:
    """
    Convert the paper's `gamma` "at NFE `nfe`" into the per-step `gamma` of this scheduler.

    The official evaluation sets `S_churn = gamma * (nfe - 1)` but samples with `nfe - 1` levels (so `nfe - 1`
    model calls), hence `gamma * (nfe - 1) / (nfe - 2)` per step; run it with `num_inference_steps = nfe - 1`.
    E.g. the paper's 0.2 at 256 NFE is 0.20079 per step on 255 levels.
    """
    if nfe < 3:
        raise ValueError(f"nfe must be >= 3 (the paper's sampler uses nfe - 1 >= 2 levels), got {nfe}.")
    return gamma_from_s_churn(float(gamma) * (nfe - 1), nfe - 1)
