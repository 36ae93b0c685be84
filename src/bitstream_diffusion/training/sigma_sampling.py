"""Training noise levels: the truncated log-normal base draw, entropy-table draws and the warm-up hand-over.

Every function draws from one ``torch.Generator`` (or torch's global generator when ``generator=None``), on the
generator's device (CPU by default), in float32, with exactly the shapes and the order of the official trainer's
schedule controller. With the same seed the draws are therefore bit-identical to the official ones (the tests check
this against draws recorded from the official code):

* :func:`sample_lognormal_sigma` — ``randn(n_remaining)``, ``σ = exp(P_mean + P_std·z)``, accept σ in
  ``[sigma_min, sigma_max]`` filling the empty slots in index order, repeat until full;
* :func:`sample_sigma_from_tables` — ``rand(n)`` picks the bin from the CDF, then ``rand(n)`` places σ
  log-uniformly inside it;
* :meth:`TrainingSigmaSampler.draw_sigma` — the base log-normal draws, then (only once tables exist and γ > 0) the
  coin ``rand(B)``, then the table draws ``rand(n_use)``, ``rand(n_use)`` for the ``n_use`` rows whose coin < γ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..schedulers.entropy_tables import edges_from_midpoints

__all__ = [
    "TrainingSigmaSampler",
    "entropy_mixing_weight",
    "sample_lognormal_sigma",
    "sample_sigma_from_tables",
]


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _check_bounds(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0.0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}")


def sample_lognormal_sigma(
    n: int,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    generator: torch.Generator | None = None,
    max_rounds: int = 10_000,
) -> torch.Tensor:
    """Draw ``n`` noise levels from a log-normal truncated to ``[sigma_min, sigma_max]`` by rejection.

    Each round draws ``randn(n_remaining)``; accepted values fill the still-empty slots in index order.

    Returns:
        float32 tensor ``[n]`` on the generator's device (CPU without a generator).
    """
    _check_bounds(sigma_min, sigma_max)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = _draw_device(generator)
    sigma = torch.empty(n, device=device)
    empty = torch.ones(n, device=device, dtype=torch.bool)
    for _ in range(max_rounds):
        if not bool(empty.any()):
            return sigma
        remaining = int(empty.sum().item())
        s = torch.exp(p_mean + p_std * torch.randn(remaining, device=device, generator=generator))
        ok = (s >= sigma_min) & (s <= sigma_max)
        slots = empty.nonzero(as_tuple=True)[0][ok]
        sigma[slots] = s[ok]
        empty[slots] = False
    if bool(empty.any()):
        raise RuntimeError(
            f"log-normal({p_mean}, {p_std}) rejection sampling into [{sigma_min}, {sigma_max}] did not finish in "
            f"{max_rounds} rounds; the bounds hold almost no mass"
        )
    return sigma


def sample_sigma_from_tables(
    cdf: torch.Tensor,
    edges: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> torch.Tensor:
    """Draw ``n`` noise levels from an entropy table: a bin from the CDF, then log-uniformly inside the bin.

    Args:
        cdf: ``[K]`` cumulative bin masses; ``cdf[i]`` is the mass up to the *upper* edge of bin ``i``.
            Negative values are clamped to 0 and ``cdf[-1]`` is taken as 1.
        edges: ``[K + 1]`` bin edges in σ (for tables stored without edges use :func:`edges_from_midpoints`).
        n: number of draws.
        generator: the random source; draws are ``rand(n)`` (bin) then ``rand(n)`` (position inside the bin).
        sigma_min, sigma_max: the bin ranges and the result are clamped to these.

    Returns:
        float32 ``[n]`` on the generator's device (CPU without a generator).
    """
    _check_bounds(sigma_min, sigma_max)
    if cdf.dim() != 1 or cdf.numel() < 1:
        raise ValueError(f"cdf must be a non-empty 1-d tensor, got shape {tuple(cdf.shape)}")
    if edges.dim() != 1 or edges.numel() != cdf.numel() + 1:
        raise ValueError(
            f"edges must be 1-d with len(cdf) + 1 = {cdf.numel() + 1} entries, got shape {tuple(edges.shape)}; "
            "for tables without edges, pass edges_from_midpoints(sigmas)"
        )
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = _draw_device(generator)
    cdf = cdf.to(device=device, dtype=torch.float32).clamp(min=0.0)
    edges = edges.to(device=device, dtype=torch.float32).clamp(min=1e-12)
    if not (bool(torch.isfinite(cdf).all()) and bool(torch.isfinite(edges).all())):
        raise ValueError("entropy tables contain NaN or inf")
    cdf[-1] = 1.0

    u_bin = torch.rand(n, device=device, generator=generator)
    idx = torch.searchsorted(cdf, u_bin, right=False).clamp_(0, cdf.numel() - 1)
    lo = edges[idx].clamp(min=sigma_min)
    hi = edges[idx + 1].clamp(max=sigma_max)
    u_within = torch.rand(n, device=device, generator=generator)
    log_sigma = lo.log() + u_within * (hi.log() - lo.log())
    return log_sigma.exp().clamp(min=sigma_min, max=sigma_max)


def entropy_mixing_weight(
    step: int, *, warmup_steps: int = 40_000, transition_steps: int = 10_000, gamma_max: float = 1.0
) -> float:
    """γ(step): the probability that a training σ comes from the entropy table.

    0 before ``warmup_steps``, then ``gamma_max · min((step - warmup_steps) / transition_steps, 1)``, clipped to
    ``[0, 1]``. ``step`` is the number of optimiser steps already taken (the official ``global_step`` before the
    increment).
    """
    if step < warmup_steps:
        return 0.0
    frac = min(float(step - warmup_steps) / max(1, transition_steps), 1.0)
    return max(0.0, min(gamma_max * frac, 1.0))


@dataclass
class TrainingSigmaSampler:
    """The paper's training σ distribution: log-normal warm-up, then a linear hand-over to the entropy table.

    Args:
        p_mean, p_std: log-normal parameters of the base draw (paper: -1.2, 1.2).
        sigma_min, sigma_max: truncation bounds (paper: 0.002, 80).
        warmup_steps: steps drawn from the base distribution only (paper: 40,000).
        transition_steps: length of the linear hand-over (paper: 10,000).
        gamma_max: final mixing weight (paper: 1.0, i.e. fully entropic after the transition).

    The sampler holds no state; the tables come from the caller (``EntropyRateEstimator.tables``), so a resumed run
    only needs the estimator's state.
    """

    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    warmup_steps: int = 40_000
    transition_steps: int = 10_000
    gamma_max: float = 1.0

    def __post_init__(self) -> None:
        _check_bounds(self.sigma_min, self.sigma_max)
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")
        if self.warmup_steps < 0 or self.transition_steps < 0 or not 0.0 <= self.gamma_max <= 1.0:
            raise ValueError("need warmup_steps >= 0, transition_steps >= 0 and 0 <= gamma_max <= 1")

    def gamma(self, step: int) -> float:
        """The mixing weight γ at ``step`` (see :func:`entropy_mixing_weight`)."""
        return entropy_mixing_weight(
            step, warmup_steps=self.warmup_steps, transition_steps=self.transition_steps, gamma_max=self.gamma_max
        )

    def draw_sigma(
        self,
        batch_size: int,
        step: int,
        generator: torch.Generator | None = None,
        *,
        tables: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Draw ``[batch_size]`` float32 training noise levels for optimiser step ``step``.

        Args:
            batch_size: the local batch size.
            step: optimiser steps taken so far (0 for the first batch).
            generator: the random source (draws happen on its device; CPU without one).
            tables: the entropy tables (``cdf`` and ``edges``, or ``cdf`` and ``sigmas`` to rebuild the edges), e.g.
                ``estimator.tables``; ``None`` while no table exists, which means base draws only.

        Draw order: the base log-normal draws; then, if tables exist and γ(step) > 0, the coin ``rand(B)``; then,
        if some coin < γ, the table draws for those rows (index order).
        """
        sigma = sample_lognormal_sigma(
            batch_size,
            p_mean=self.p_mean,
            p_std=self.p_std,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            generator=generator,
        )
        gamma = self.gamma(step)
        if tables is None or gamma <= 0.0:
            return sigma
        use_table = torch.rand(batch_size, device=sigma.device, generator=generator) < gamma
        n_use = int(use_table.sum().item())
        if n_use == 0:
            return sigma
        edges = tables.get("edges")
        if edges is None:
            edges = edges_from_midpoints(tables["sigmas"], sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        sigma = sigma.clone()
        sigma[use_table] = sample_sigma_from_tables(
            tables["cdf"], edges, n_use, generator, sigma_min=self.sigma_min, sigma_max=self.sigma_max
        )
        return sigma
