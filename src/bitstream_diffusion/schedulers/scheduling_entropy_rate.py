# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The entropy-rate noise schedule and the EDM churn sampler of CoBit (arXiv 2605.07013) as a diffusers scheduler."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The largest per-step churn factor EDM allows (Karras et al. 2022, Algorithm 2); the official code caps at it too.
MAX_GAMMA = math.sqrt(2.0) - 1.0
#: Bits live in {0, 1}; the model centres its inputs on this value.
BIT_CENTER = 0.5
#: Absolute tolerance of the distribution checks on the entropy tables (the official tables are exact to 5e-8).
TABLE_ATOL = 1e-4
ENTROPY_TABLE_NAMES = ("pdf", "cdf", "sigmas", "edges")


@dataclass
class EntropyRateSchedulerOutput(BaseOutput):
    """
    Output class for the scheduler's `step` function.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, num_bits)`):
            The state after this call, at the next noise level; feed it to `churn` before the next model call. After
            the final call (at `terminal_sigma`) it is the denoiser output itself: threshold it at 0.5 to get bits.
        pred_original_sample (`torch.Tensor` of shape `(batch_size, num_bits)`):
            The denoiser output `D` of this call (bit probabilities, the x0 estimate).
        self_cond (`torch.Tensor` or `None`):
            The self-conditioning input of the next model call under the configured `self_conditioning` policy (`None`
            with `"none"`). With Heun it is the estimate of the step's first evaluation, as in the official sampler.
        refine_sigma (`torch.Tensor` or `None`):
            Only with `self_conditioning="refined"`, after a call that completes a step: the noise level (0-d float32,
            CPU) of the extra refining call `D(prev_sample, refine_sigma, self_cond)`, whose output replaces
            `self_cond`. `None` otherwise.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None
    self_cond: torch.Tensor | None = None
    refine_sigma: torch.Tensor | None = None


class ChurnOutput(NamedTuple):
    """The point at which the model is evaluated: `sample_hat, sigma_hat = scheduler.churn(sample, ...)`."""

    sample: torch.Tensor
    sigma: torch.Tensor


def validate_entropy_tables(
    pdf: torch.Tensor, cdf: torch.Tensor, sigmas: torch.Tensor, edges: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Check that four tensors form an entropy-rate table and return them as float32 CPU tensors.

    A table over `K` log-sigma bins is: `pdf` (K, a probability mass per bin), `cdf` (K, its running sum, ending at
    1), `sigmas` (K, the bin midpoints, increasing) and `edges` (K+1, the bin edges, increasing, bracketing the
    midpoints). Raises `ValueError` naming the first violated property.
    """
    tables = {}
    for name, values in zip(ENTROPY_TABLE_NAMES, (pdf, cdf, sigmas, edges)):
        tensor = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
        if tensor.ndim != 1:
            raise ValueError(f"`entropy_{name}` must be a flat list of floats, got shape {tuple(tensor.shape)}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`entropy_{name}` contains NaN or infinite values.")
        tables[name] = tensor
    pdf, cdf, sigmas, edges = (tables[name] for name in ENTROPY_TABLE_NAMES)

    num_bins = pdf.numel()
    if num_bins < 2 or cdf.numel() != num_bins or sigmas.numel() != num_bins or edges.numel() != num_bins + 1:
        raise ValueError(
            "Entropy tables must have lengths K, K, K and K+1 (pdf, cdf, sigmas, edges) with K >= 2; got "
            f"{pdf.numel()}, {cdf.numel()}, {sigmas.numel()}, {edges.numel()}. Load all four files of one table "
            "folder, e.g. with `EntropyRateScheduler.from_entropy_tables(dir)`."
        )
    if (pdf < 0).any():
        raise ValueError(f"`entropy_pdf` has negative mass at bins {torch.nonzero(pdf < 0).flatten().tolist()}.")
    total = pdf.double().sum().item()
    if abs(total - 1.0) > TABLE_ATOL:
        raise ValueError(f"`entropy_pdf` must sum to 1 (a probability mass per bin), but sums to {total:.6g}.")
    # Float32 rounding may leave a bin a hair above the final 1.0 that the official estimator writes (e.g. 1.0000001
    # before trailing empty bins); only decreases beyond the table tolerance are errors.
    if (cdf[1:] < cdf[:-1] - TABLE_ATOL).any() or cdf[0] < -TABLE_ATOL or abs(cdf[-1].item() - 1.0) > TABLE_ATOL:
        raise ValueError("`entropy_cdf` must be non-decreasing, start at or above 0 and end at 1.")
    cdf_error = (pdf.double().cumsum(0) - cdf.double()).abs().max().item()
    if cdf_error > TABLE_ATOL:
        raise ValueError(
            f"`entropy_cdf` is not the running sum of `entropy_pdf` (max abs difference {cdf_error:.3g}); were two "
            "tables swapped?"
        )
    if (sigmas <= 0).any() or (sigmas[1:] <= sigmas[:-1]).any():
        raise ValueError("`entropy_sigmas` (the bin midpoints) must be positive and strictly increasing.")
    if (edges <= 0).any() or (edges[1:] <= edges[:-1]).any():
        raise ValueError("`entropy_edges` must be positive and strictly increasing.")
    if (sigmas < edges[:-1]).any() or (sigmas > edges[1:]).any():
        raise ValueError("Each `entropy_sigmas[k]` must lie inside its bin `[entropy_edges[k], entropy_edges[k+1]]`.")
    return pdf, cdf, sigmas, edges


def _interp_linear(x: torch.Tensor, y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear `y(x_query)` on increasing knots `x`, clamped to `[x[0], x[-1]]` (float32, official order)."""
    x_query = x_query.clamp(min=x[0], max=x[-1])
    idx = torch.searchsorted(x, x_query, right=False).clamp(min=1, max=x.numel() - 1)
    weight = (x_query - x[idx - 1]) / (x[idx] - x[idx - 1]).clamp_min(1e-20)
    return y[idx - 1] + weight * (y[idx] - y[idx - 1])


class EntropyRateScheduler(SchedulerMixin, ConfigMixin):
    """
    The entropy-rate sampler of CoBit [1]: Euler (or Heun) steps on the variance-exploding probability-flow ODE
    `dx/dsigma = (x - D(x, sigma)) / sigma` over a noise grid placed by the inverse CDF of a learned entropy-rate
    table, with EDM stochastic churn [2] inside a window of that table, and one final denoise at `terminal_sigma`.

    [1] "CoBit: Language Modeling with Bitstream Diffusion", arXiv 2605.07013 (official code:
    https://github.com/GBATZOLIS/BitstreamDiffusion). [2] Karras et al., "Elucidating the Design Space of
    Diffusion-Based Generative Models", https://huggingface.co/papers/2206.00364.

    Samples are bits in {0, 1} plus noise (`x_sigma = x0 + sigma * eps`); the model output the scheduler consumes is
    the denoiser `D(x, sigma)`, i.e. bit probabilities. `num_inference_steps` noise levels cost exactly that many model
    calls with Euler and carried self-conditioning (the final denoise included; the paper's "256 NFE" is 255
    levels); Heun and refined self-conditioning each add one call per step, see `num_model_calls`.

    Unlike diffusers' `EDMEulerScheduler`, which adds the churn noise inside `step`, i.e. *after* the model was
    evaluated at the unchurned point, and then reuses that evaluation at the churned level, this scheduler churns in
    a separate `churn` call *before* the model call, so the model is evaluated at the churned point `(x_hat,
    sigma_hat)` as in EDM Algorithm 2 and the official sampler. The denoising loop (see `step` for the complete
    version with Heun and refined self-conditioning):

    ```py
    scheduler.set_timesteps(num_inference_steps)
    x = randn_tensor((B, S), generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma + 0.5
    self_cond = torch.zeros_like(x)
    for _ in scheduler.timesteps:
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        denoised = denoiser(x_hat, sigma_hat, self_cond)
        out = scheduler.step(denoised, sigma_hat, x_hat)
        x, self_cond = out.prev_sample, out.self_cond
    bits = x > 0.5
    ```

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]; `save_pretrained` / `from_pretrained` store the
    entropy table in `scheduler_config.json`.

    Args:
        sigma_min (`float`, *optional*, defaults to `0.002`):
            Smallest noise level of the training range (the lower edge of the entropy table). Only a lower bound for
            `terminal_sigma` here. Range (0, `terminal_sigma`].
        sigma_max (`float`, *optional*, defaults to `80.0`):
            Largest noise level of the training range. The entropy grid starts at `min(sigma_max, last table
            midpoint)` (76.756 for the official tables), the Karras grid at `sigma_max`. Range (`terminal_sigma`, inf).
        terminal_sigma (`float`, *optional*, defaults to `0.08`):
            The last noise level, where the final denoise is made. Range [`sigma_min`, `sigma_max`).
        sigma_data (`float`, *optional*, defaults to `0.5`):
            Standard deviation of the data for the EDM preconditioning helpers (0.5 for fair bits).
        sigma_schedule (`Literal["entropy", "karras"]`, *optional*, defaults to `"entropy"`):
            `"entropy"`: inverse-CDF placement on the entropy table (the paper; needs the table). `"karras"`: the EDM
            grid from `sigma_max` to `terminal_sigma`.
        rho (`float`, *optional*, defaults to `7.0`):
            Exponent of the Karras grid (also used by `entropic_blend_alpha`). Range (0, inf); EDM uses 7.
        entropic_blend_alpha (`float`, *optional*, defaults to `0.0`):
            Blend `(1 - alpha) * entropy + alpha * karras` of the two grids (an official knob, 0 in the paper).
            Range [0, 1].
        gamma (`float`, *optional*, defaults to `0.0`):
            EDM per-step churn factor: each step whose grid level lies in the churn window first raises the noise
            level to `sigma * (1 + gamma)`. 0 gives the deterministic sampler; values above sqrt(2) - 1 are capped
            there. Can be overridden per run in `set_timesteps`. The paper's settings convert with
            `gamma_from_paper` / `gamma_from_s_churn` (e.g. 0.2 at "256 NFE" is 0.20079 per step at 255 levels).
        s_noise (`float`, *optional*, defaults to `1.003`):
            Multiplier of the churn noise standard deviation (EDM's S_noise). Range [0, ~1.1].
        churn_window (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`):
            The range of grid levels that churn, `(low, high)` with `low <= high`. Read as entropy-CDF quantiles or as
            sigmas according to `churn_window_mode`; in both cases clamped to `[terminal_sigma, sigma_max]`.
        churn_window_mode (`Literal["entropy_cdf", "sigma"]`, *optional*, defaults to `"entropy_cdf"`):
            `"entropy_cdf"`: `churn_window` holds quantiles q in [0, 1] of the entropy CDF, mapped to sigma as the
            official code does (linear interpolation between bin midpoints, q = 0 gives the first midpoint); needs
            the table. `"sigma"`: `churn_window` holds noise levels directly, e.g. `(0.0, 80.0)` churns everywhere.
        self_conditioning (`Literal["carry", "refined", "none"]`, *optional*, defaults to `"carry"`):
            `"carry"`: the self-conditioning input of a call is the previous call's estimate (the paper). `"refined"`:
            after each step an extra call `D(x_next, sigma_next, D)` refreshes it (+1 call per step). `"none"`: the
            model gets no estimate. The first call of every policy but `"none"` gets an all-zeros estimate.
        solver (`Literal["euler", "heun"]`, *optional*, defaults to `"euler"`):
            `"euler"`: first order, one call per level (the paper). `"heun"`: EDM's second-order correction on every
            step (+1 call per step).
        entropy_pdf (`list[float]`, *optional*):
            Probability mass of each of the K log-sigma bins of the entropy-rate table.
        entropy_cdf (`list[float]`, *optional*):
            Running sum of `entropy_pdf` (K values, non-decreasing, ending at 1).
        entropy_sigmas (`list[float]`, *optional*):
            The K bin midpoints, increasing.
        entropy_edges (`list[float]`, *optional*):
            The K+1 bin edges, increasing. Not used for sampling; kept so the table round-trips whole.
    """

    _compatibles = []
    order = 1

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        terminal_sigma: float = 0.08,
        sigma_data: float = 0.5,
        sigma_schedule: Literal["entropy", "karras"] = "entropy",
        rho: float = 7.0,
        entropic_blend_alpha: float = 0.0,
        gamma: float = 0.0,
        s_noise: float = 1.003,
        churn_window: tuple[float, float] = (0.0, 1.0),
        churn_window_mode: Literal["entropy_cdf", "sigma"] = "entropy_cdf",
        self_conditioning: Literal["carry", "refined", "none"] = "carry",
        solver: Literal["euler", "heun"] = "euler",
        entropy_pdf: list[float] | None = None,
        entropy_cdf: list[float] | None = None,
        entropy_sigmas: list[float] | None = None,
        entropy_edges: list[float] | None = None,
    ) -> None:
        self._check_choice("sigma_schedule", sigma_schedule, ("entropy", "karras"))
        self._check_choice("churn_window_mode", churn_window_mode, ("entropy_cdf", "sigma"))
        self._check_choice("self_conditioning", self_conditioning, ("carry", "refined", "none"))
        self._check_choice("solver", solver, ("euler", "heun"))
        if not 0 < sigma_min <= terminal_sigma < sigma_max:
            raise ValueError(
                "Noise levels must satisfy 0 < sigma_min <= terminal_sigma < sigma_max; got "
                f"sigma_min={sigma_min}, terminal_sigma={terminal_sigma}, sigma_max={sigma_max}."
            )
        if not (rho > 0 and sigma_data > 0 and 0 <= entropic_blend_alpha <= 1 and 0 <= s_noise < math.inf):
            raise ValueError(
                "Expected rho > 0, sigma_data > 0, 0 <= entropic_blend_alpha <= 1 and s_noise >= 0; got "
                f"rho={rho}, sigma_data={sigma_data}, entropic_blend_alpha={entropic_blend_alpha}, s_noise={s_noise}."
            )
        self._check_gamma(gamma)
        self.register_to_config(churn_window=self._check_window(churn_window, churn_window_mode))

        table = (entropy_pdf, entropy_cdf, entropy_sigmas, entropy_edges)
        if all(values is None for values in table):
            self._table = None
        elif any(values is None for values in table):
            missing = [f"entropy_{n}" for n, values in zip(ENTROPY_TABLE_NAMES, table) if values is None]
            raise ValueError(f"The entropy table is incomplete: {missing} missing. Pass all four tables or none.")
        else:
            self._table = validate_entropy_tables(*table)
            self.register_to_config(**{f"entropy_{n}": t.tolist() for n, t in zip(ENTROPY_TABLE_NAMES, self._table)})
            if terminal_sigma >= self._table[2][-1].item():
                raise ValueError(
                    f"terminal_sigma={terminal_sigma} must lie below the last entropy-table midpoint "
                    f"{self._table[2][-1].item():.6g}."
                )
        if sigma_schedule == "entropy" and self._table is None:
            raise ValueError(
                "sigma_schedule='entropy' needs the entropy-rate table (entropy_pdf, entropy_cdf, entropy_sigmas, "
                "entropy_edges). Load a model's scheduler folder, use "
                "`EntropyRateScheduler.from_entropy_tables(dir)`, or choose sigma_schedule='karras' explicitly."
            )
        self._check_window_available(gamma)

        # settable values
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self.gammas = None
        self._step_index = None
        self._churned_sigma = None
        self._heun_state = None
        self._churn_points = {}
        self._grid_cache: dict[int, torch.Tensor] = {}
        self._window_sigmas: tuple[float, float] | None = None
        self._cached_for_config = self.config
        # The grid's first level does not depend on the number of levels.
        self._init_noise_sigma = float(self._compute_grid(2)[0])

    @classmethod
    def from_entropy_tables(cls, tables_dir: str | os.PathLike, **kwargs) -> "EntropyRateScheduler":
        """
        Build a scheduler from an official entropy-table folder.

        Args:
            tables_dir (`str` or `os.PathLike`):
                A folder with `entropy_pdf.pt`, `entropy_cdf.pt`, `entropy_sigmas.pt` and `entropy_edges.pt` (the
                official `assets/entropy_tables/<dataset>/` layout, read with `torch.load(weights_only=True)`).
            kwargs:
                Any other config argument of [`EntropyRateScheduler`].
        """
        tables_dir = Path(tables_dir)
        paths = {name: tables_dir / f"entropy_{name}.pt" for name in ENTROPY_TABLE_NAMES}
        missing = [path.name for path in paths.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"Entropy table files {missing} not found in {tables_dir}.")
        tables = {}
        for name, path in paths.items():
            tensor = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{path} must hold a tensor, found {type(tensor).__name__}.")
            tables[f"entropy_{name}"] = tensor.to(torch.float32).flatten().tolist()
        return cls(**tables, **kwargs)

    # ----------------------------------------------------------------------------------------------------------------
    # Paper settings and bookkeeping
    # ----------------------------------------------------------------------------------------------------------------

    @staticmethod
    def gamma_from_s_churn(s_churn: float, num_inference_steps: int) -> float:
        """
        Convert the official/EDM `S_churn` into the per-step `gamma` for `num_inference_steps` levels.

        The official sampler uses `gamma_i = min(S_churn / (N - 1), sqrt(2) - 1)` on an N-point grid (the cap is
        applied by the scheduler).
        """
        if num_inference_steps < 2:
            raise ValueError(f"num_inference_steps must be >= 2, got {num_inference_steps}.")
        return float(s_churn) / (num_inference_steps - 1)

    @staticmethod
    def gamma_from_paper(gamma: float, nfe: int) -> float:
        """
        Convert the paper's `gamma` "at NFE `nfe`" into the per-step `gamma` of this scheduler.

        The official evaluation sets `S_churn = gamma * (nfe - 1)` but samples with `nfe - 1` levels (so `nfe - 1`
        model calls), hence `gamma * (nfe - 1) / (nfe - 2)` per step; run it with `num_inference_steps = nfe - 1`.
        E.g. the paper's 0.2 at 256 NFE is 0.20079 per step on 255 levels.
        """
        if nfe < 3:
            raise ValueError(f"nfe must be >= 3 (the paper's sampler uses nfe - 1 >= 2 levels), got {nfe}.")
        return EntropyRateScheduler.gamma_from_s_churn(float(gamma) * (nfe - 1), nfe - 1)

    def num_model_calls(self, num_inference_steps: int | None = None) -> int:
        """
        Denoiser calls a run with `num_inference_steps` levels makes (default: the levels of the last `set_timesteps`).

        Euler: `n` (n - 1 steps and the final denoise). Heun adds one call per step, refined self-conditioning adds
        one call per step: Euler + refined `2n - 1`, Heun + carry `2n - 1`, Heun + refined `3n - 2`.
        """
        n = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        if n is None:
            raise ValueError("Pass num_inference_steps or call `set_timesteps` first.")
        self._check_num_inference_steps(n)
        extra_per_step = int(self.config.solver == "heun") + int(self.config.self_conditioning == "refined")
        return n + extra_per_step * (n - 1)

    @property
    def init_noise_sigma(self) -> float:
        """The first noise level exactly (float32 value): the initial sample is `noise * init_noise_sigma + 0.5`."""
        return self._init_noise_sigma

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in `timesteps` (None before the first `churn` or `step`)."""
        return self._step_index

    @property
    def churn_window_sigmas(self) -> tuple[float, float]:
        """The churn window `(low, high)` in sigma, clamped to `[terminal_sigma, sigma_max]`."""
        low, high = self.config.churn_window
        if self.config.churn_window_mode == "entropy_cdf":
            if self._table is None:
                raise ValueError(
                    "churn_window_mode='entropy_cdf' reads the window from the entropy table, which this scheduler "
                    "lacks; pass the table or use churn_window_mode='sigma' with a window in sigma units."
                )
            low, high = self.entropy_quantile(low), self.entropy_quantile(high)
        floor, ceiling = float(self.config.terminal_sigma), float(self.config.sigma_max)
        return max(floor, min(float(low), ceiling)), max(floor, min(float(high), ceiling))

    def entropy_quantile(self, q: float) -> float:
        """
        The sigma at level `q` of the entropy CDF, as the official code maps it: linear interpolation between bin
        midpoints, with the cumulative mass of a bin paired with its midpoint; `q = 0` gives the first midpoint.
        """
        if self._table is None:
            raise ValueError("entropy_quantile needs the entropy table; this scheduler has none.")
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"Quantile q must lie in [0, 1], got {q}.")
        _, cdf, sigmas, _ = self._sampling_table()
        q_t = torch.tensor(q, dtype=torch.float32)
        i = int(torch.searchsorted(cdf, q_t, right=False).clamp(0, cdf.numel() - 1))
        if i == 0:
            return float(sigmas[0])
        weight = (q_t - cdf[i - 1]) / (cdf[i] - cdf[i - 1]).clamp_min(1e-20)
        return float(sigmas[i - 1] + weight * (sigmas[i] - sigmas[i - 1]))

    # ----------------------------------------------------------------------------------------------------------------
    # EDM preconditioning (the SDT model applies these itself; exposed for training code and custom pipelines)
    # ----------------------------------------------------------------------------------------------------------------

    def precondition_inputs(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Centre and scale the noisy bits: `(x - 0.5) * c_in` with `c_in = 1 / sqrt(sigma^2 + sigma_data^2)`."""
        sigma = self._per_row(sigma, sample)
        return (sample - BIT_CENTER) / (sigma**2 + self.config.sigma_data**2) ** 0.5

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The noise conditioning of the model: `c_noise = ln(sigma)` (not EDM's `ln(sigma) / 4`)."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma], dtype=torch.float32)
        return torch.log(sigma)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, sigmas: float | torch.Tensor
    ) -> torch.Tensor:
        """
        The forward process `x0 + sigma * noise`.

        Args:
            original_samples (`torch.Tensor` of shape `(batch_size, ...)`): clean bits in {0, 1}.
            noise (`torch.Tensor`): standard normal noise of the same shape.
            sigmas (`float` or `torch.Tensor`): noise levels (not timestep indices), a scalar or one per row.
        """
        return original_samples + noise * self._per_row(sigmas, original_samples)

    # ----------------------------------------------------------------------------------------------------------------
    # The grid
    # ----------------------------------------------------------------------------------------------------------------

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None, gamma: float | None = None
    ) -> None:
        """
        Set the noise levels of a run (to be called before inference).

        Args:
            num_inference_steps (`int`):
                Number of noise levels, >= 2: the levels `sigmas[:num_inference_steps]` run from `init_noise_sigma`
                down to `terminal_sigma`. With Euler and carried self-conditioning this is also the number of model
                calls (see `num_model_calls`).
            device (`str` or `torch.device`, *optional*):
                Where to put `timesteps`; `sigmas` and `gammas` stay on the CPU.
            gamma (`float`, *optional*):
                Per-step churn factor for this run, overriding the config's `gamma`.
        """
        self._check_num_inference_steps(num_inference_steps)
        gamma = self.config.gamma if gamma is None else gamma
        self._check_gamma(gamma)
        self._check_window_available(gamma)
        if gamma > MAX_GAMMA:
            logger.warning(f"gamma={gamma} exceeds sqrt(2) - 1; it is capped there as in EDM and the official code.")

        if self._cached_for_config is not self.config:  # `register_to_config` replaced the config: recompute
            self._grid_cache, self._window_sigmas, self._cached_for_config = {}, None, self.config
        grid = self._grid_cache.get(num_inference_steps)
        if grid is None:  # the grid depends on the (frozen) config and the number of levels only
            grid = self._grid_cache[num_inference_steps] = self._compute_grid(num_inference_steps)
        grid = grid.clone()
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.cat([grid, torch.zeros(1, dtype=torch.float32)])
        self.gammas = self._compute_gammas(grid, gamma)
        timesteps = grid if self.config.solver == "euler" else torch.cat([grid[:1], grid[1:].repeat_interleave(2)])
        self.timesteps = timesteps.to(device=device)
        self._step_index = None
        self._churned_sigma = None
        self._heun_state = None
        self._churn_points = self._compute_churn_points()

    def _compute_churn_points(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """
        For each churned step `i`: `(sigma_hat, delta)` with `sigma_hat = float32(sigma_i * float32(1 + gamma_i))` and
        `delta = sqrt(max(sigma_hat^2 - sigma_i^2, 0))` (0-d float32), computed once per run instead of per call.
        """
        churned = torch.nonzero(self.gammas > 0).flatten().tolist()
        if not churned:
            points = {}
        else:  # elementwise float32, bit-identical to the per-step scalar formula
            sigmas = self.sigmas[: self.gammas.numel()]
            sigma_hats = sigmas * (1.0 + self.gammas).to(torch.float32)
            deltas = (sigma_hats.square() - sigmas.square()).clamp_min(0.0).sqrt()
            sigma_hats, deltas = sigma_hats.unbind(), deltas.unbind()
            points = {level: (sigma_hats[level], deltas[level]) for level in churned}
        self._s_noise = torch.tensor(self.config.s_noise, dtype=torch.float32)
        return points

    def _compute_grid(self, num_levels: int) -> torch.Tensor:
        """The `num_levels` noise levels, descending, float32 (bit-exact with the official `SigmaSchedule`)."""
        if self.config.sigma_schedule == "karras":
            return self._karras_grid(num_levels)
        grid = self._entropy_grid(num_levels)
        alpha = float(self.config.entropic_blend_alpha)
        if alpha > 0:
            grid = (1.0 - alpha) * grid + alpha * self._karras_grid(num_levels)
        return grid

    def _karras_grid(self, num_levels: int) -> torch.Tensor:
        """EDM's grid `(s_max^(1/rho) + t (s_min^(1/rho) - s_max^(1/rho)))^rho` with exact endpoints."""
        sigma_min, sigma_max = float(self.config.terminal_sigma), float(self.config.sigma_max)
        rho = float(self.config.rho)
        ramp = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float32)
        max_inv_rho, min_inv_rho = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
        grid = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
        grid[0], grid[-1] = sigma_max, sigma_min
        return grid

    def _entropy_grid(self, num_levels: int) -> torch.Tensor:
        """
        Inverse-CDF placement: level j sits at CDF value `F_lo + (1 - j/(n-1)) (F_hi - F_lo)`, mapped to sigma by
        linear interpolation between bin midpoints (the official midpoint/CDF pairing), between
        `max(terminal_sigma, first midpoint)` and `min(sigma_max, last midpoint)`.
        """
        _, cdf, sigmas, _ = self._sampling_table()
        sigma_lo = max(float(self.config.terminal_sigma), float(sigmas[0]))
        sigma_hi = min(float(self.config.sigma_max), float(sigmas[-1]))
        cdf_lo = _interp_linear(sigmas, cdf, torch.tensor(sigma_lo, dtype=torch.float32))
        cdf_hi = _interp_linear(sigmas, cdf, torch.tensor(sigma_hi, dtype=torch.float32))
        if abs(float(cdf_hi - cdf_lo)) < 1e-12:
            # No entropy mass between the endpoints: the official code falls back to a geometric grid.
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

    def _compute_gammas(self, grid: torch.Tensor, gamma: float) -> torch.Tensor:
        """Per-step churn factor (float64, one per step): `min(gamma, sqrt(2)-1)` where the level is in the window."""
        if gamma == 0:
            return torch.zeros(grid.numel() - 1, dtype=torch.float64)
        if self._window_sigmas is None:
            self._window_sigmas = self.churn_window_sigmas
        low, high = self._window_sigmas
        levels = grid[:-1].double()  # exact; compared with the float64 window like the official Python floats
        capped = min(float(gamma), MAX_GAMMA)
        return ((levels >= low) & (levels <= high)).to(torch.float64) * capped

    def _sampling_table(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The table as the sampler reads it: the CDF's last value forced to exactly 1 (as the official code does)."""
        pdf, cdf, sigmas, edges = self._table
        cdf = cdf.clone()
        cdf[-1] = 1.0
        return pdf, cdf, sigmas, edges

    # ----------------------------------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------------------------------

    def _call_kind(self, call_index: int) -> tuple[int, Literal["euler", "predictor", "correction", "final"]]:
        """
        What model call number `call_index` of the run is, and its level index. Euler: call i is a step from level
        i, the last one the final denoise. Heun: call 0 predicts from level 0, then call 2k-1 corrects into level k
        and call 2k predicts from level k (the final denoise when k is the last level).
        """
        last = self.num_inference_steps - 1
        if self.config.solver == "euler":
            return call_index, ("final" if call_index == last else "euler")
        level = (call_index + 1) // 2
        if call_index % 2 == 1:
            return level, "correction"
        return level, ("final" if level == last else "predictor")

    def _current_call(self) -> tuple[int, str]:
        if self.timesteps is None:
            raise RuntimeError("Call `set_timesteps(num_inference_steps)` before `churn` or `step`.")
        if self._step_index is None:
            self._step_index = 0
        if self._step_index >= len(self.timesteps):
            raise RuntimeError(
                f"All {len(self.timesteps)} model calls of this run are done; call `set_timesteps` to start a new run."
            )
        return self._call_kind(self._step_index)

    def churn(
        self,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> ChurnOutput:
        """
        Move the state to the point where the model is evaluated next (EDM Algorithm 2, lines 5-7).

        At a step from level `sigma_i` with `gamma_i = gammas[i] > 0`: `sigma_hat = float32(sigma_i * float32(1 +
        gamma_i))` and `x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) * (eps * s_noise)`, with `eps` one `sample`-shaped
        float32 standard-normal draw from `generator` (a list of generators draws each row from its own generator).
        Otherwise, and for Heun's correction and the final denoise, nothing is drawn and the point is `(sample,
        sigma)`. Call it once before every model call.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, ...)`): the current state.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): the source of the churn noise.

        Returns:
            `ChurnOutput(sample, sigma)`: the model input and its noise level (a 0-d float32 CPU tensor; expand it to
            the batch for the model), to pass on to `step`.
        """
        level, kind = self._current_call()
        churn_point = self._churn_points.get(level) if kind in ("euler", "predictor") else None
        if churn_point is None:
            sigma = self.sigmas[level]
        else:
            if isinstance(generator, list) and len(generator) != sample.shape[0]:
                raise ValueError(
                    f"Got {len(generator)} generators for a batch of {sample.shape[0]}; pass one per row."
                )
            compute_dtype = torch.promote_types(sample.dtype, torch.float32)
            sigma, delta = churn_point
            eps = randn_tensor(tuple(sample.shape), generator=generator, device=sample.device, dtype=torch.float32)
            eps = eps * self._s_noise
            sample = sample.to(compute_dtype) + delta.to(compute_dtype) * eps.to(compute_dtype)
        self._churned_sigma = (self._step_index, sigma)
        return ChurnOutput(sample, sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> EntropyRateSchedulerOutput | tuple:
        """
        Advance the run by one model call, given the denoiser output at the point returned by `churn`.

        Euler: `d = -sigma_hat * ((D - x_hat) / sigma_hat^2)`, `x_next = x_hat + (sigma_{i+1} - sigma_hat) * d`
        (float32; the official op order, bit-exact). Heun (EDM Algorithm 2): the first call of a step returns the
        Euler predictor, the second (made at the predictor and `sigma_{i+1}`) the trapezoidal correction
        `x_hat + 0.5 * h * (d + d')`; the correction is made on every step, also the one into `terminal_sigma`,
        because only the final denoise plays the role of EDM's step to sigma = 0. The last call is the final denoise
        at `terminal_sigma`: it returns `prev_sample = D` (bits = `prev_sample > 0.5`).

        The complete loop, with `nfe` equal to `num_model_calls()` for every solver and self-conditioning policy:

        ```py
        scheduler.set_timesteps(num_inference_steps, gamma=gamma)
        x = randn_tensor((B, S), generator=generator, dtype=torch.float32) * scheduler.init_noise_sigma + 0.5
        self_cond = None if scheduler.config.self_conditioning == "none" else torch.zeros_like(x)
        for _ in scheduler.timesteps:
            x_hat, sigma_hat = scheduler.churn(x, generator=generator)
            denoised = denoiser(x_hat, sigma_hat.expand(B), self_cond)
            out = scheduler.step(denoised, sigma_hat, x_hat)
            x, self_cond = out.prev_sample, out.self_cond
            if out.refine_sigma is not None:  # self_conditioning="refined"
                self_cond = denoiser(x, out.refine_sigma.expand(B), self_cond)
        bits = x > 0.5
        ```

        Args:
            model_output (`torch.Tensor`):
                The denoiser output `D(x_hat, sigma_hat)`: bit probabilities in [0, 1], same shape as `sample`.
            timestep (`float` or `torch.Tensor`):
                The noise level the model was evaluated at: the `sigma` returned by `churn` (a scalar, or one equal
                value per row).
            sample (`torch.Tensor`):
                The model input returned by `churn`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return an [`EntropyRateSchedulerOutput`] or a tuple `(prev_sample, pred_original_sample)`.

        Returns:
            [`EntropyRateSchedulerOutput`] or `tuple`. `prev_sample` is float32 (float64 if `sample` is float64).
        """
        level, kind = self._current_call()
        sigma_hat = self._evaluated_sigma(level, kind)
        if timestep is not sigma_hat:  # the tensor `churn` returned needs no check
            self._check_timestep(timestep, sigma_hat)
        self._check_model_output(model_output, sample, level, sigma_hat)

        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        sample = sample.to(compute_dtype)
        denoised = model_output.to(compute_dtype)
        self_cond = None if self.config.self_conditioning == "none" else denoised
        refine_sigma = None

        if kind == "final":
            prev_sample = denoised
        elif kind == "correction":
            sample_hat, derivative, first_sigma, first_denoised = self._heun_state
            sigma_next = self.sigmas[level]
            step_size = (sigma_next - first_sigma).to(compute_dtype)
            derivative_next = self._derivative(sample, denoised, sigma_next.to(compute_dtype))
            prev_sample = sample_hat + 0.5 * step_size * (derivative + derivative_next)
            self._heun_state = None
            if self_cond is not None:
                self_cond = first_denoised  # the official sampler carries the first evaluation's estimate
            refine_sigma = sigma_next
        else:
            sigma_next = self.sigmas[level + 1]
            step_size = (sigma_next - sigma_hat).to(compute_dtype)
            derivative = self._derivative(sample, denoised, sigma_hat.to(compute_dtype))
            prev_sample = sample + step_size * derivative
            if kind == "predictor":
                self._heun_state = (sample, derivative, sigma_hat, denoised)
            else:
                refine_sigma = sigma_next

        if self.config.self_conditioning != "refined":
            refine_sigma = None
        self._step_index += 1
        self._churned_sigma = None

        if not return_dict:
            return (prev_sample, denoised)
        return EntropyRateSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised, self_cond=self_cond, refine_sigma=refine_sigma
        )

    @staticmethod
    def _derivative(sample: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The probability-flow drift `dx/dsigma = (x - D) / sigma`, in the official op order `-sigma * score`."""
        return -sigma * ((denoised - sample) / sigma**2)

    def _evaluated_sigma(self, level: int, kind: str) -> torch.Tensor:
        """The noise level of the current call: the churned sigma, or the grid level where nothing churns."""
        if self._churned_sigma is not None and self._churned_sigma[0] == self._step_index:
            return self._churned_sigma[1]
        if kind in ("euler", "predictor") and self.gammas[level] > 0:
            raise RuntimeError(
                f"Step {level} churns (gamma={self.gammas[level].item():.4g}): call `scheduler.churn(sample, "
                "generator=...)` before the model call and evaluate the model at the point it returns."
            )
        return self.sigmas[level]

    # ----------------------------------------------------------------------------------------------------------------
    # Checks
    # ----------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")

    @staticmethod
    def _check_gamma(gamma: float) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < math.inf:
            raise ValueError(
                f"gamma must be a finite number >= 0 (the EDM per-step churn factor; 0 = deterministic), got "
                f"{gamma!r}. "
                "Convert the paper's settings with `EntropyRateScheduler.gamma_from_paper` or `gamma_from_s_churn`."
            )

    @staticmethod
    def _check_num_inference_steps(num_inference_steps: int) -> None:
        is_int = isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool)
        if not is_int or num_inference_steps < 2:
            raise ValueError(
                "num_inference_steps must be an integer >= 2 (the number of noise levels: with Euler, the denoiser "
                f"calls including the final denoise; the paper's '256 NFE' is 255), got {num_inference_steps!r}."
            )

    @staticmethod
    def _check_window(window: tuple[float, float], mode: str) -> list[float]:
        try:
            low, high = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ValueError(f"churn_window must be a pair (low, high), got {window!r}.") from None
        if not low <= high:
            raise ValueError(f"churn_window must satisfy low <= high, got ({low}, {high}); swap the two values.")
        if mode == "entropy_cdf" and not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"With churn_window_mode='entropy_cdf' the window holds CDF quantiles in [0, 1], got ({low}, {high}); "
                "use churn_window_mode='sigma' for a window in noise levels."
            )
        if mode == "sigma" and low < 0:
            raise ValueError(f"A churn window in sigma must be non-negative, got ({low}, {high}).")
        return [low, high]

    def _check_window_available(self, gamma: float) -> None:
        if gamma > 0 and self.config.churn_window_mode == "entropy_cdf" and self._table is None:
            raise ValueError(
                "Churn (gamma > 0) with churn_window_mode='entropy_cdf' needs the entropy table to place the window; "
                "pass the table, or set churn_window_mode='sigma' and churn_window=(low_sigma, high_sigma)."
            )

    @staticmethod
    def _check_timestep(timestep: float | torch.Tensor, sigma_hat: torch.Tensor) -> None:
        values = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten()
        expected = sigma_hat.double()
        if values.numel() == 0 or not torch.allclose(values, expected.expand_as(values), rtol=1e-6, atol=0.0):
            raise ValueError(
                f"`timestep` must be the noise level the model was evaluated at, {expected.item():.8g} (the sigma "
                f"returned by `churn`), got {values.tolist()[:4]}."
            )

    @staticmethod
    def _check_model_output(model_output: torch.Tensor, sample: torch.Tensor, level: int, sigma: torch.Tensor) -> None:
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; pass the "
                "denoiser's bit probabilities for every position."
            )
        if not torch.isfinite(model_output.sum(dtype=torch.float32)):  # one reduction: NaN/inf anywhere propagate
            raise ValueError(
                f"The model output at level {level} (sigma={sigma.item():.6g}) contains NaN or infinite values; "
                "check the model's weights and precision (e.g. run the matched filter and sigmoid in float32)."
            )

    @staticmethod
    def _per_row(sigma: float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """`sigma` as a tensor that broadcasts one value per row of `sample`."""
        sigma = torch.as_tensor(sigma, dtype=sample.dtype, device=sample.device)
        if sigma.ndim == 0:
            return sigma
        if sigma.numel() != sample.shape[0]:
            raise ValueError(f"Expected one sigma per row ({sample.shape[0]}), got {sigma.numel()}.")
        return sigma.reshape(-1, *([1] * (sample.ndim - 1)))
