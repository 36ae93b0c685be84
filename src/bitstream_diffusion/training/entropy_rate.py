"""The online entropy-rate estimator: a FIFO of (σ, per-example bit MSE) and the 128-bin σ table it yields.

Table (:meth:`EntropyRateEstimator.compute_tables`, the official recipe; see docs/design.md#training), all float32
on the CPU:

1. keep the finite (σ, metric) pairs, clamp σ to ``[sigma_min, sigma_max]``;
2. ``K`` bins equally spaced in ``ln σ``; ``rate = max(metric / (σ² + 1e-12), 0)`` and its mean per bin;
3. ``pdf ∝ g(σ_mid) · mean_rate^power`` with ``g(σ) = σⁿ / (σⁿ + cⁿ)`` at the geometric bin midpoints,
   ``power = 0.5`` for ``target="sqrt-rate"`` (paper) or 1 for ``"rate"``; uniform if that is non-finite or all 0;
4. ``cdf = cummax(cumsum(pdf))`` with ``cdf[-1] = 1``.

A bin that holds no sample, or only zero metrics, gets mass 0; once training draws σ only from the table such a bin
is never visited again ("absorbing", as in the official tables).

Online part: :meth:`~EntropyRateEstimator.update` pushes every process's samples (through ``gather_fn``), so all
ranks hold the same buffer and compute the same tables, which describe the whole batch (the official trainer used
rank 0's samples only); :meth:`~EntropyRateEstimator.maybe_refresh` recomputes every ``update_every`` steps once the
buffer holds ``num_bins · min_per_bin`` samples; :meth:`~EntropyRateEstimator.state_dict` keeps the buffer, its write
position, the counters and the current tables, so a resumed run continues identically (the official FIFO restarted
empty). ``buffer_size`` counts samples from all ranks together.

The table files, their validation and config form are in :mod:`bitstream_diffusion.schedulers.entropy_tables`
(``save_entropy_tables(estimator.tables, folder)`` writes the official files).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from ..schedulers.entropy_tables import check_entropy_tables
from .distributed import GatherFn

__all__ = ["EntropyRateEstimator", "EntropyTarget", "lognormal_fit"]

EntropyTarget = Literal["sqrt-rate", "rate"]
_TARGET_POWERS = {"sqrt-rate": 0.5, "sqrt": 0.5, "sqrt_rate": 0.5, "rate": 1.0}


def _target_power(target: str | float) -> float:
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        if not math.isfinite(target) or target < 0:
            raise ValueError(f"a numeric target is the rate exponent and must be finite and >= 0, got {target}")
        return float(target)
    key = str(target).lower().strip()
    if key not in _TARGET_POWERS:
        raise ValueError(f"target must be 'sqrt-rate' (power 0.5), 'rate' (power 1) or a float power, got {target!r}")
    return _TARGET_POWERS[key]


def lognormal_fit(pdf: torch.Tensor, sigmas: torch.Tensor) -> tuple[float, float]:
    """Diagnostic moment fit of a log-normal to a table: ``(mean, std)`` of ``ln σ_mid`` under ``pdf``."""
    pdf = pdf.detach().float().cpu().clamp(min=0.0)
    total = float(pdf.sum())
    if not math.isfinite(total) or total <= 0.0:
        raise ValueError("pdf must have a positive finite sum")
    pdf = pdf / total
    log_mids = sigmas.detach().float().cpu().clamp_min(1e-12).log()
    mu = (pdf * log_mids).sum()
    var = (pdf * (log_mids - mu).pow(2)).sum()
    return float(mu), float(torch.sqrt(var.clamp_min(1e-12)))


class EntropyRateEstimator:
    """Estimates the entropy-rate training σ distribution from the per-example bit MSE seen in training.

    Args:
        num_bins: number of log-σ bins K (paper: 128).
        min_per_bin: the refresh gate is ``len(buffer) >= num_bins · min_per_bin`` (a total, not per bin; 12,800).
        c, n: the regulariser ``g(σ) = σⁿ / (σⁿ + cⁿ)`` (paper: 0.1, 3).
        target: ``"sqrt-rate"`` (paper, power 0.5), ``"rate"`` (power 1), or a float power.
        sigma_min, sigma_max: the σ range of the bins (paper: 0.002, 80).
        buffer_size: FIFO capacity in samples, all ranks together (official: 800,000 of rank 0's samples).
        update_every: :meth:`maybe_refresh` recomputes at steps divisible by this (paper: 2000).
        gather_fn: collects every rank's ``[n, 2]`` (σ, metric) rows, e.g. :func:`gather_across_ranks`;
            ``None`` keeps only this process's samples.
    """

    def __init__(
        self,
        num_bins: int = 128,
        min_per_bin: int = 100,
        c: float = 0.1,
        n: float = 3.0,
        target: EntropyTarget | float = "sqrt-rate",
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        *,
        buffer_size: int = 800_000,
        update_every: int = 2000,
        gather_fn: GatherFn | None = None,
    ) -> None:
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if int(min_per_bin) < 0 or int(buffer_size) < 1 or int(update_every) < 0:
            raise ValueError("need min_per_bin >= 0, buffer_size >= 1 and update_every >= 0")
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0.0 < sigma_min < sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not (c > 0 and math.isfinite(c) and math.isfinite(n)):
            raise ValueError(f"need c > 0 and a finite n, got c={c}, n={n}")
        self.num_bins = int(num_bins)
        self.min_per_bin = int(min_per_bin)
        self.c = float(c)
        self.n = float(n)
        self.target = target
        self.power = _target_power(target)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.buffer_size = int(buffer_size)
        self.update_every = int(update_every)
        self.gather_fn = gather_fn

        self._sigma_buf = torch.zeros(self.buffer_size, dtype=torch.float32)
        self._metric_buf = torch.zeros(self.buffer_size, dtype=torch.float32)
        self._write_pos = 0
        self._length = 0
        self.num_seen = 0  # samples ever pushed (all ranks)
        self.num_refreshes = 0
        self.last_refresh_step: int | None = None
        self._tables: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ the table
    @property
    def min_samples(self) -> int:
        """Samples needed before a refresh: ``num_bins · min_per_bin``."""
        return self.num_bins * self.min_per_bin

    @torch.no_grad()
    def compute_tables(self, sigma: torch.Tensor, metric: torch.Tensor) -> dict[str, torch.Tensor]:
        """The entropy-rate table of a set of samples (pure; the gate is not applied here).

        Args:
            sigma: ``[N]`` noise levels; non-finite pairs are dropped, the rest clamped to the σ range.
            metric: ``[N]`` per-example unweighted bit MSE (the second output of ``bitstream_loss``).

        Returns:
            ``dict(pdf=[K], cdf=[K], sigmas=[K], edges=[K + 1])``, float32 CPU tensors.
        """
        sig = sigma.detach().to("cpu", torch.float32).flatten()
        met = metric.detach().to("cpu", torch.float32).flatten()
        if sig.numel() != met.numel():
            raise ValueError(
                f"sigma and metric must have the same number of samples, got {sig.numel()} and {met.numel()}"
            )
        finite = torch.isfinite(sig) & torch.isfinite(met)
        if not bool(finite.any()):
            raise ValueError(f"no finite (sigma, metric) pair among {sig.numel()} samples")
        sig = sig[finite].clamp(min=self.sigma_min, max=self.sigma_max)
        met = met[finite]

        num_bins = self.num_bins
        edges_log = torch.linspace(
            math.log(self.sigma_min), math.log(self.sigma_max), num_bins + 1, dtype=torch.float32
        )
        bin_idx = (torch.bucketize(sig.log(), edges_log, right=False) - 1).clamp_(0, num_bins - 1)
        rate = (met / (sig * sig + 1e-12)).clamp(min=0.0)
        sum_rate = torch.zeros(num_bins, dtype=torch.float32).scatter_add_(0, bin_idx, rate)
        count = torch.zeros(num_bins, dtype=torch.float32).scatter_add_(0, bin_idx, torch.ones_like(rate))
        mean_rate = (sum_rate / (count + 1e-8)).clamp(min=0.0)

        mids = (0.5 * (edges_log[:-1] + edges_log[1:])).exp().clamp(min=1e-12)
        edges = edges_log.exp().clamp(min=1e-12)
        x = (mids.clamp_min(1e-12) / self.c).pow(self.n)
        regulariser = x / (1.0 + x)
        rate_term = mean_rate.pow(self.power) if self.power != 0.0 else torch.ones_like(mean_rate)
        unnormalised = regulariser * rate_term

        if bool(torch.isfinite(unnormalised).all()) and float(unnormalised.sum()) > 0.0:
            pdf = unnormalised / unnormalised.sum()
        else:
            pdf = torch.full((num_bins,), 1.0 / num_bins, dtype=torch.float32)
        cdf = torch.cumsum(pdf, dim=0)
        cdf = torch.maximum(cdf, torch.cummax(cdf, dim=0)[0])
        cdf[-1] = 1.0
        return {"pdf": pdf, "cdf": cdf, "sigmas": mids, "edges": edges}

    # ------------------------------------------------------------------ the buffer
    def __len__(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self.buffer_size

    @torch.no_grad()
    def update(self, sigma: torch.Tensor, metric: torch.Tensor) -> None:
        """Add this step's samples from every rank (through ``gather_fn``) to the FIFO.

        Call it on every rank with the local ``[B]`` σ and ``[B]`` per-example MSE; all ranks must call it
        together when ``gather_fn`` is a collective. Values are stored as given (non-finite ones are dropped when
        the table is computed).
        """
        sig = sigma.detach().reshape(-1).to(torch.float32)
        met = metric.detach().reshape(-1).to(torch.float32)
        if sig.numel() != met.numel():
            raise ValueError(
                f"sigma {tuple(sigma.shape)} and metric {tuple(metric.shape)} must hold one value per example"
            )
        rows = torch.stack([sig, met.to(sig.device)], dim=1)  # [B, 2]
        if self.gather_fn is not None:
            rows = self.gather_fn(rows)
        rows = rows.to("cpu")
        self._push(rows[:, 0], rows[:, 1])

    def _push(self, sig: torch.Tensor, met: torch.Tensor) -> None:
        count = sig.numel()
        if count == 0:
            return
        self.num_seen += count
        cap = self.buffer_size
        if count >= cap:
            sig, met, count = sig[-cap:], met[-cap:], cap
        start = self._write_pos
        first = min(count, cap - start)
        self._sigma_buf[start : start + first] = sig[:first]
        self._metric_buf[start : start + first] = met[:first]
        if first < count:
            self._sigma_buf[: count - first] = sig[first:]
            self._metric_buf[: count - first] = met[first:]
        self._write_pos = (start + count) % cap
        self._length = min(cap, self._length + count)

    def buffer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part of the buffer ``(sigma [L], metric [L])`` in slot order (a view; do not modify)."""
        return self._sigma_buf[: self._length], self._metric_buf[: self._length]

    # ------------------------------------------------------------------ refreshing
    @property
    def tables(self) -> dict[str, torch.Tensor] | None:
        """The current tables (``pdf``, ``cdf``, ``sigmas``, ``edges``), or ``None`` before the first refresh."""
        return self._tables

    @property
    def ready(self) -> bool:
        return self._tables is not None

    def refresh(self, step: int | None = None) -> bool:
        """Recompute the tables if the buffer holds ``num_bins · min_per_bin`` samples; return whether it did."""
        if self._length < self.min_samples or self._length == 0:
            return False
        self._tables = self.compute_tables(*self.buffer())
        self.num_refreshes += 1
        self.last_refresh_step = step
        return True

    def maybe_refresh(self, step: int) -> bool:
        """Refresh at steps divisible by ``update_every`` (``step``: optimiser steps done, after the increment)."""
        if self.update_every <= 0 or step % self.update_every != 0:
            return False
        return self.refresh(step)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Buffer, write position, counters and tables: all a resumed run needs (loads with ``weights_only``)."""
        return {
            "version": 1,
            "settings": {
                "num_bins": self.num_bins,
                "min_per_bin": self.min_per_bin,
                "c": self.c,
                "n": self.n,
                "power": self.power,
                "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max,
                "update_every": self.update_every,
            },
            "buffer_size": self.buffer_size,
            "length": self._length,
            "write_pos": self._write_pos,
            "sigma": self._sigma_buf[: self._length].clone(),
            "metric": self._metric_buf[: self._length].clone(),
            "num_seen": self.num_seen,
            "num_refreshes": self.num_refreshes,
            "last_refresh_step": self.last_refresh_step,
            "tables": None if self._tables is None else {k: v.clone() for k, v in self._tables.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. A different ``buffer_size`` keeps the newest samples that fit."""
        length, write_pos, cap = int(state["length"]), int(state["write_pos"]), int(state["buffer_size"])
        sig = torch.as_tensor(state["sigma"], dtype=torch.float32).reshape(-1)
        met = torch.as_tensor(state["metric"], dtype=torch.float32).reshape(-1)
        if sig.numel() != length or met.numel() != length or not 0 <= write_pos < max(cap, 1) or length > cap:
            raise ValueError("inconsistent entropy estimator state (buffer length, write position or capacity)")
        self._sigma_buf.zero_()
        self._metric_buf.zero_()
        self._write_pos, self._length = 0, 0
        if cap == self.buffer_size:
            self._sigma_buf[:length] = sig
            self._metric_buf[:length] = met
            self._write_pos, self._length = write_pos, length
        else:  # re-push oldest first
            if length == cap:
                sig, met = torch.roll(sig, -write_pos), torch.roll(met, -write_pos)
            self._push(sig, met)
        self.num_seen = int(state["num_seen"])
        self.num_refreshes = int(state["num_refreshes"])
        last = state.get("last_refresh_step")
        self.last_refresh_step = None if last is None else int(last)
        tables = state.get("tables")
        self._tables = None if tables is None else check_entropy_tables(tables)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_bins={self.num_bins}, min_per_bin={self.min_per_bin}, c={self.c}, n={self.n}, "
            f"power={self.power}, sigma_range=[{self.sigma_min}, {self.sigma_max}], buffer={self._length}/"
            f"{self.buffer_size}, update_every={self.update_every}, ready={self.ready})"
        )
