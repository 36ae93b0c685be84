# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The noise levels of [`EntropyRateScheduler`] as its config sets them: the grid of a run, its first level, the
churn window in sigma, and the number of model calls a run makes. The sampler itself (`set_timesteps`, `churn`,
`step`) is in `scheduling_entropy_rate`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch

from .scheduler_checks import check_num_levels
from .sigma_grids import entropy_grid, entropy_quantile, karras_grid

__all__ = ["NoiseLevelsMixin"]


class NoiseLevelsMixin:
    """Mixed into [`EntropyRateScheduler`]; reads its `config`, its entropy table `_table` and its current run."""

    def num_model_calls(self, num_inference_steps: int | None = None) -> int:
        """
        Denoiser calls a run with `num_inference_steps` levels makes (default: the levels of the last `set_timesteps`).

        Euler: `n` (n - 1 steps and the final denoise). Heun adds one call per step, refined self-conditioning adds
        one call per step: Euler + refined `2n - 1`, Heun + carry `2n - 1`, Heun + refined `3n - 2`.
        """
        n = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        if n is None:
            raise ValueError("Pass num_inference_steps or call `set_timesteps` first.")
        check_num_levels(n)
        extra_per_step = int(self.config.solver == "heun") + int(self.config.self_conditioning == "refined")
        return n + extra_per_step * (n - 1)

    @property
    def init_noise_sigma(self) -> float:
        """The first noise level exactly (float32 value): the initial sample is `noise * init_noise_sigma + 0.5`."""
        if self._first_sigma is not None:
            return self._first_sigma
        return float(self._compute_grid(2)[0])  # the first level does not depend on the number of levels

    @property
    def churn_window_sigmas(self) -> tuple[float, float]:
        """The churn window `(low, high)` in sigma, clamped to `[terminal_sigma, sigma_max]`."""
        window = self.config.churn_window
        if self.config.churn_window_mode == "entropy_cdf":
            window = [self.entropy_quantile(q) for q in window]
        floor, ceiling = float(self.config.terminal_sigma), float(self.config.sigma_max)
        return tuple(max(floor, min(float(v), ceiling)) for v in window)

    def entropy_quantile(self, q: float) -> float:
        """
        The sigma at level `q` of the entropy CDF, as the official code maps it: linear interpolation between bin
        midpoints, with the cumulative mass of a bin paired with its midpoint; `q = 0` gives the first midpoint.
        """
        if self._table is None:
            raise ValueError(
                "Entropy-CDF quantiles need the entropy table, which this scheduler lacks; pass the table, or use "
                "churn_window_mode='sigma' with a churn window in sigma units."
            )
        return entropy_quantile(self._table, q)

    def _remembered(self, key: Hashable, compute: Callable[..., Any], *args: Any) -> Any:
        """
        `compute(*args)`, computed once per `key` for the current config (a grid, the churn window): a run of the
        sampler starts with the same ones as the last. A config replaced by `register_to_config` starts afresh. The
        values are shared between runs, so they are never modified in place.
        """
        memory = getattr(self, "_memory", None)
        if memory is None or memory[0] is not self.config or len(memory[1]) > 64:
            memory = self._memory = (self.config, {})
        if key not in memory[1]:
            memory[1][key] = compute(*args)
        return memory[1][key]

    def _compute_grid(self, num_levels: int) -> torch.Tensor:
        """The `num_levels` noise levels, descending, float32 (bit-exact with the official `SigmaSchedule`)."""
        config = self.config
        karras = karras_grid(num_levels, config.terminal_sigma, config.sigma_max, config.rho)
        if config.noise_schedule == "karras":
            return karras
        grid = entropy_grid(self._table, num_levels, config.terminal_sigma, config.sigma_max)
        alpha = float(config.entropic_blend_alpha)
        return (1.0 - alpha) * grid + alpha * karras if alpha > 0 else grid
