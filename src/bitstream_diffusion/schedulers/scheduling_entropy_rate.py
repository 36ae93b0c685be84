# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The entropy-rate noise schedule and the EDM churn sampler of CoBit (arXiv 2605.07013) as a diffusers scheduler."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

from .entropy_tables import EntropyTables, validate_entropy_tables  # noqa: F401 (validate_*: old import path)
from .scheduler_checks import (
    check_churn_window_available,
    check_config,
    check_gamma,
    check_num_levels,
    check_step_inputs,
    entropy_table_from_config,
)
from .sigma_grids import churn_gammas, churn_points, entropy_grid, entropy_quantile, karras_grid

__all__ = ["BIT_CENTER", "MAX_GAMMA", "ChurnOutput", "EntropyRateScheduler", "EntropyRateSchedulerOutput"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The largest per-step churn factor EDM allows (Karras et al. 2022, Algorithm 2); the official code caps at it too.
MAX_GAMMA = math.sqrt(2.0) - 1.0
#: Bits live in {0, 1}; the model centres its inputs on this value.
BIT_CENTER = 0.5


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
    sigma_hat)` as in EDM Algorithm 2 and the official sampler. The denoising loop, complete for every solver and
    self-conditioning policy (the number of `denoiser` calls is `num_model_calls()`):

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
            Standard deviation of the data (0.5 for fair bits). Kept in the config for reference; the model applies
            its own EDM input scaling and the sampler does not read it.
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

    The four `entropy_*` lists are one [`EntropyTables`] (validated on construction; `from_entropy_tables` reads the
    official folder of `.pt` files).
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
        check_config(self.config)
        self.register_to_config(churn_window=[float(v) for v in churn_window])

        self._table = entropy_table_from_config(self.config)
        if self._table is not None:
            self.register_to_config(**self._table.to_config())  # float lists, also where tensors were passed
        check_churn_window_available(self.config, self._table, gamma)

        # the state of a run, set by `set_timesteps`
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self.gammas = None
        self._step_index = None
        self._churned_sigma = None
        self._heun_state = None
        self._churn_points = {}

    @classmethod
    def from_entropy_tables(cls, tables_dir: str | os.PathLike, **kwargs) -> "EntropyRateScheduler":
        """
        Build a scheduler from an official entropy-table folder: `tables_dir` holds `entropy_pdf.pt`,
        `entropy_cdf.pt`, `entropy_sigmas.pt` and `entropy_edges.pt` (the official `assets/entropy_tables/<dataset>/`
        layout, read by [`EntropyTables.from_folder`]); `kwargs` are any other config arguments.
        """
        bounds = {name: kwargs[name] for name in ("sigma_min", "sigma_max") if name in kwargs}
        return cls(**EntropyTables.from_folder(tables_dir, **bounds).to_config(), **kwargs)

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
        check_num_levels(n)
        extra_per_step = int(self.config.solver == "heun") + int(self.config.self_conditioning == "refined")
        return n + extra_per_step * (n - 1)

    @property
    def init_noise_sigma(self) -> float:
        """The first noise level exactly (float32 value): the initial sample is `noise * init_noise_sigma + 0.5`."""
        return float(self._compute_grid(2)[0])  # the first level does not depend on the number of levels

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in `timesteps` (None before the first `churn` or `step`)."""
        return self._step_index

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
        sigmas = torch.as_tensor(sigmas, dtype=original_samples.dtype, device=original_samples.device)
        if sigmas.ndim > 0 and sigmas.numel() != original_samples.shape[0]:
            raise ValueError(f"Expected one sigma per row ({original_samples.shape[0]}), got {sigmas.numel()}.")
        return original_samples + noise * sigmas.reshape(-1, *([1] * (original_samples.ndim - 1)))

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
        check_num_levels(num_inference_steps)
        gamma = self.config.gamma if gamma is None else gamma
        check_gamma(gamma)
        check_churn_window_available(self.config, self._table, gamma)
        if gamma > MAX_GAMMA:
            logger.warning(f"gamma={gamma} exceeds sqrt(2) - 1; it is capped there as in EDM and the official code.")

        grid = self._compute_grid(num_inference_steps)
        window = self.churn_window_sigmas if gamma > 0 else None
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.cat([grid, torch.zeros(1, dtype=torch.float32)])
        self.gammas = churn_gammas(grid, min(float(gamma), MAX_GAMMA), window)
        timesteps = grid if self.config.solver == "euler" else torch.cat([grid[:1], grid[1:].repeat_interleave(2)])
        self.timesteps = timesteps.to(device=device)
        self._step_index = None
        self._churned_sigma = None
        self._heun_state = None
        self._churn_points = churn_points(self.sigmas, self.gammas)

    def _compute_grid(self, num_levels: int) -> torch.Tensor:
        """The `num_levels` noise levels, descending, float32 (bit-exact with the official `SigmaSchedule`)."""
        config = self.config
        karras = karras_grid(num_levels, config.terminal_sigma, config.sigma_max, config.rho)
        if config.sigma_schedule == "karras":
            return karras
        grid = entropy_grid(self._table, num_levels, config.terminal_sigma, config.sigma_max)
        alpha = float(config.entropic_blend_alpha)
        return (1.0 - alpha) * grid + alpha * karras if alpha > 0 else grid

    def _next_call(self) -> tuple[int, int, Literal["euler", "predictor", "correction", "final"]]:
        """
        `(call_index, level, kind)` of the next model call. Euler: call i is a step from level i, the last one the
        final denoise. Heun: call 0 predicts from level 0, then call 2k-1 corrects into level k and call 2k predicts
        from level k (the final denoise when k is the last level).
        """
        if self.timesteps is None:
            raise RuntimeError("Call `set_timesteps(num_inference_steps)` before `churn` or `step`.")
        call_index = 0 if self._step_index is None else self._step_index
        if call_index >= len(self.timesteps):
            raise RuntimeError(
                f"All {len(self.timesteps)} model calls of this run are done; call `set_timesteps` to start a new run."
            )
        last = self.num_inference_steps - 1
        if self.config.solver == "euler":
            return call_index, call_index, ("final" if call_index == last else "euler")
        level = (call_index + 1) // 2
        if call_index % 2 == 1:
            return call_index, level, "correction"
        return call_index, level, ("final" if level == last else "predictor")

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
        call_index, level, kind = self._next_call()
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
            eps = eps * torch.tensor(self.config.s_noise, dtype=torch.float32)
            sample = sample.to(compute_dtype) + delta.to(compute_dtype) * eps.to(compute_dtype)
        self._step_index, self._churned_sigma = call_index, (call_index, sigma)
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

        The complete loop is in the class docstring.

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
        call_index, level, kind = self._next_call()
        sigma_hat = self._evaluated_sigma(call_index, level, kind)
        check_step_inputs(model_output, timestep, sample, sigma_hat, level)

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
        self._step_index, self._churned_sigma = call_index + 1, None

        if not return_dict:
            return (prev_sample, denoised)
        return EntropyRateSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised, self_cond=self_cond, refine_sigma=refine_sigma
        )

    @staticmethod
    def _derivative(sample: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The probability-flow drift `dx/dsigma = (x - D) / sigma`, in the official op order `-sigma * score`."""
        return -sigma * ((denoised - sample) / sigma**2)

    def _evaluated_sigma(self, call_index: int, level: int, kind: str) -> torch.Tensor:
        """The noise level of the current call: the churned sigma, or the grid level where nothing churns."""
        if self._churned_sigma is not None and self._churned_sigma[0] == call_index:
            return self._churned_sigma[1]
        if kind in ("euler", "predictor") and self.gammas[level] > 0:
            raise RuntimeError(
                f"Step {level} churns (gamma={self.gammas[level].item():.4g}): call `scheduler.churn(sample, "
                "generator=...)` before the model call and evaluate the model at the point it returns."
            )
        return self.sigmas[level]
