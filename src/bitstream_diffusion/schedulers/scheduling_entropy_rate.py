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

from .call_plan import CallPlan, ModelCall
from .entropy_tables import EntropyTables, validate_entropy_tables  # noqa: F401 (validate_*: old import path)
from .noise_levels import NoiseLevelsMixin
from .scheduler_checks import (
    ModelOutputMonitor,
    check_churn_window_available,
    check_config,
    check_custom_sigmas,
    check_gamma,
    check_num_levels,
    check_step_inputs,
    entropy_table_from_config,
)
from .scheduler_conventions import SchedulerConventionsMixin
from .sigma_grids import churn_gammas, churn_levels, gamma_from_paper, gamma_from_s_churn
from .step_arithmetic import CallScalars, call_scalars, churn_, derivative, euler_update_, in_dtype, standard_normal

__all__ = ["BIT_CENTER", "MAX_GAMMA", "ChurnOutput", "EntropyRateScheduler", "EntropyRateSchedulerOutput"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The largest per-step churn factor EDM allows (Karras et al. 2022, Algorithm 2); the official code caps at it too.
MAX_GAMMA = math.sqrt(2.0) - 1.0
#: Bits live in {0, 1}; the model centres its inputs on this value, and the initial sample is centred on it.
BIT_CENTER = 0.5


@dataclass
class EntropyRateSchedulerOutput(BaseOutput):
    """
    Output class for the scheduler's `step` function.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, num_bits)`):
            The state after this call, at the next noise level: in the `churn` loop feed it to `churn` before the next
            model call; in a generic loop (no `churn` calls) it is already churned for the next call. After the final
            call (at `terminal_sigma`) it is the denoiser output itself: threshold it at 0.5 to get bits.
        pred_original_sample (`torch.Tensor` of shape `(batch_size, num_bits)`):
            The denoiser output `D` of this call (bit probabilities, the x0 estimate).
        self_cond (`torch.Tensor` or `None`):
            The self-conditioning input of the next model call under the configured `self_conditioning` policy (`None`
            with `"none"`). With Heun it is the estimate of the step's first evaluation, as in the official sampler.
        refine_sigma (`torch.Tensor` or `None`):
            Only with `self_conditioning="refined"`, after a call that completes a step: the noise level (0-d float32,
            on the device of `set_timesteps`) of the extra refining call `D(prev_sample, refine_sigma, self_cond)`,
            whose output replaces `self_cond`. `None` otherwise.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None
    self_cond: torch.Tensor | None = None
    refine_sigma: torch.Tensor | None = None


class ChurnOutput(NamedTuple):
    """The point at which the model is evaluated: `sample_hat, sigma_hat = scheduler.churn(sample, ...)`."""

    sample: torch.Tensor
    sigma: torch.Tensor


class EntropyRateScheduler(NoiseLevelsMixin, SchedulerConventionsMixin, SchedulerMixin, ConfigMixin):
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

    EDM (and the official sampler) churn *before* the model call and evaluate the model at the churned point `(x_hat,
    sigma_hat)`; diffusers' `EDMEulerScheduler` churns inside `step`, after the model saw the unchurned point. This
    scheduler does the former, in one of two ways (docs/design.md#churn-and-gamma):

    * the `churn` loop (the pipeline's, in the official draw order; complete for every solver and self-conditioning
      policy, `num_model_calls()` denoiser calls):

    ```py
    scheduler.set_timesteps(num_inference_steps, device=device, gamma=gamma)
    x = randn_tensor((B, S), generator=generator) * scheduler.init_noise_sigma + scheduler.init_sample_mean
    self_cond = None if scheduler.config.self_conditioning == "none" else torch.zeros_like(x)
    for _ in scheduler.timesteps:
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        denoised = denoiser(x_hat, sigma_hat.expand(B), self_cond)
        out = scheduler.step(denoised, sigma_hat, x_hat)
        x, self_cond = out.prev_sample, out.self_cond
        if out.refine_sigma is not None:  # self_conditioning="refined"
            self_cond = denoiser(x, out.refine_sigma.expand(B), self_cond)
            scheduler.record_model_output(self_cond, out.refine_sigma)
    bits = x > 0.5
    ```

    * a generic diffusers loop, `for t in scheduler.timesteps: x = scheduler.step(D(scheduler.scale_model_input(x,
      t), t), t, x, generator=g).prev_sample`: without `churn` calls, `step` applies the churn of the next call at its
      end, so `timesteps` holds the churned levels. The first call is made at the unchurned first level (nothing can
      churn before it); the draws are otherwise those of the `churn` loop, so the two give the same bits whenever the
      first level does not churn. `"refined"` self-conditioning needs the `churn` loop.

    Model outputs are checked without a host sync per step: the first output of a run that is NaN, infinite or
    outside [0, 1] (e.g. logits) is reported at the run's final call (one host read per run).

    This model inherits from [`SchedulerMixin`] and [`ConfigMixin`]; `save_pretrained` / `from_pretrained` store the
    entropy table in `scheduler_config.json` (`print(scheduler)` abbreviates it).

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
        noise_schedule (`Literal["entropy", "karras"]`, *optional*, defaults to `"entropy"`):
            `"entropy"`: inverse-CDF placement on the entropy table (the paper; needs the table). `"karras"`: the EDM
            grid from `sigma_max` to `terminal_sigma`. Called `sigma_schedule` before version 0.2, a name that
            `EDMEulerScheduler` uses for its own grids; the old name is still accepted (configs and arguments).
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
    #: The initial sample is `noise * init_noise_sigma + init_sample_mean`: noise around the centre of the bits.
    init_sample_mean: float = BIT_CENTER

    @register_to_config
    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        terminal_sigma: float = 0.08,
        sigma_data: float = 0.5,
        noise_schedule: Literal["entropy", "karras"] = "entropy",
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
        **kwargs,
    ) -> None:
        self._accept_renamed_arguments(kwargs, noise_schedule)
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
        self._begin_index = None
        self._reset_run()

    @classmethod
    def from_entropy_tables(cls, tables_dir: str | os.PathLike, **kwargs) -> "EntropyRateScheduler":
        """
        Build a scheduler from an official entropy-table folder: `tables_dir` holds `entropy_pdf.pt`,
        `entropy_cdf.pt`, `entropy_sigmas.pt` and `entropy_edges.pt` (the official `assets/entropy_tables/<dataset>/`
        layout, read by [`EntropyTables.from_folder`]); `kwargs` are any other config arguments.
        """
        bounds = {name: kwargs[name] for name in ("sigma_min", "sigma_max") if name in kwargs}
        return cls(**EntropyTables.from_folder(tables_dir, **bounds).to_config(), **kwargs)

    gamma_from_s_churn = staticmethod(gamma_from_s_churn)
    gamma_from_paper = staticmethod(gamma_from_paper)

    @property
    def step_index(self) -> int | None:
        """Index of the next model call in `timesteps` (None before the first `churn` or `step`)."""
        return self._step_index

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        gamma: float | None = None,
        sigmas: list[float] | torch.Tensor | None = None,
    ) -> None:
        """
        Set the noise levels of a run (to be called before inference).

        Args:
            num_inference_steps (`int`, *optional*):
                Number of noise levels, >= 2: the levels `sigmas[:num_inference_steps]` run from `init_noise_sigma`
                down to `terminal_sigma`. With Euler and carried self-conditioning this is also the number of model
                calls (see `num_model_calls`). Not needed with `sigmas`.
            device (`str` or `torch.device`, *optional*):
                The device of the model: `timesteps` and the noise levels handed to the model (`churn`, `refine_sigma`)
                live there, so that the loop moves nothing between host and device. `sigmas` and `gammas` stay on
                the CPU.
            gamma (`float`, *optional*):
                Per-step churn factor for this run, overriding the config's `gamma`.
            sigmas (`list[float]` or `torch.Tensor`, *optional*):
                A custom grid instead of the configured schedule: >= 2 finite noise levels, strictly decreasing, the
                last one being where the final denoise is made. Churn follows the config's window and `gamma`.

        After this call, `timesteps` holds the noise level of every model call of a generic loop (the churned level
        where a step churns; see the class docstring), `sigmas` the grid followed by 0, `gammas` the churn factor of
        each step.
        """
        if sigmas is not None:
            grid = check_custom_sigmas(sigmas, num_inference_steps)
            num_inference_steps = grid.numel()
        else:
            check_num_levels(num_inference_steps)
            grid = self._remembered(("grid", num_inference_steps), self._compute_grid, num_inference_steps)
        gamma = self.config.gamma if gamma is None else gamma
        check_gamma(gamma)
        check_churn_window_available(self.config, self._table, gamma)
        if gamma > MAX_GAMMA:
            logger.warning(f"gamma={gamma} exceeds sqrt(2) - 1; it is capped there as in EDM and the official code.")

        window = self._remembered("churn window", lambda: self.churn_window_sigmas) if gamma > 0 else None
        self.num_inference_steps = num_inference_steps
        self.sigmas = torch.cat([grid, torch.zeros(1, dtype=torch.float32)])
        self.gammas = churn_gammas(grid, min(float(gamma), MAX_GAMMA), window)
        self._begin_index = None
        self._reset_run()
        self._first_sigma = float(grid[0])
        self._plan = CallPlan.build(num_inference_steps, self.config.solver)
        levels, hats, deltas = churn_levels(self.sigmas, self.gammas)
        self.timesteps = self._plan.model_sigmas(self.sigmas, levels, hats, first_call_churns=False).to(device)
        # One copy to the device per run: the loop hands these to the model without a host-to-device copy per call.
        self._call_sigmas = self._plan.model_sigmas(self.sigmas, levels, hats, first_call_churns=True).to(device)
        self._call_sigmas, self._level_sigmas = self._call_sigmas.unbind(), self.sigmas.to(device)
        # The scalars of every step, once per run over the whole grid: the same values as per-step 0-d float32 math.
        self._grid_scalars = call_scalars(self.sigmas[:-1], self.sigmas[1:])
        self._churn_scalars = dict(zip(levels, call_scalars(hats, self.sigmas[[level + 1 for level in levels]])))
        self._churn_deltas = dict(zip(levels, deltas.tolist()))
        self._s_noise = torch.tensor(self.config.s_noise, dtype=torch.float32).item()  # a float32 value

    def _reset_run(self) -> None:
        """Forget the progress of a run (the grid stays)."""
        self._step_index = None
        self._churned = None  # (call index, sigma handed to the model, its `CallScalars` on the CPU) of a churned call
        self._churn_driven = False  # `churn` was called in this run: the caller churns, `step` does not
        self._heun_state = None
        self._monitor = ModelOutputMonitor()
        self._first_sigma = None
        self._plan = None
        self._churn_deltas: dict[int, float] = {}  # level -> sqrt(sigma_hat^2 - sigma^2) of each churned step
        self._grid_scalars, self._churn_scalars = [], {}

    def _next_call(self) -> ModelCall:
        """The next model call of the run (the first one is `begin_index`, default 0)."""
        if self._plan is None:
            raise RuntimeError("Call `set_timesteps(num_inference_steps)` before `churn` or `step`.")
        index = (self._begin_index or 0) if self._step_index is None else self._step_index
        if index >= len(self._plan):
            raise RuntimeError(
                f"All {len(self._plan)} model calls of this run are done; call `set_timesteps` to start a new run."
            )
        return self._plan[index]

    def _apply_churn(self, sample: torch.Tensor, call: ModelCall, generator) -> torch.Tensor:
        """EDM's churn before `call`: `x + delta * (eps * s_noise)` with one `sample`-shaped draw (see `churn`)."""
        if isinstance(generator, list) and len(generator) != sample.shape[0]:
            raise ValueError(f"Got {len(generator)} generators for a batch of {sample.shape[0]}; pass one per row.")
        delta = self._churn_deltas[call.level]
        eps = standard_normal(tuple(sample.shape), generator, sample.device)
        self._churned = (call.index, self._call_sigmas[call.index], self._churn_scalars[call.level])
        if sample.dtype == torch.float32:
            return churn_(eps, sample, self._s_noise, delta)  # in place, the same bits
        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        return sample.to(compute_dtype) + delta * (eps * self._s_noise).to(compute_dtype)

    def _churns(self, call: ModelCall) -> bool:
        return call.may_churn and call.level in self._churn_deltas

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
        sigma)`. Call it once before every model call (the `churn` loop of the class docstring).

        Args:
            sample (`torch.Tensor` of shape `(batch_size, ...)`): the current state.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): the source of the churn noise.

        Returns:
            `ChurnOutput(sample, sigma)`: the model input and its noise level (a 0-d float32 tensor on the device of
            `set_timesteps`; expand it to the batch for the model), to pass on to `step`.
        """
        call = self._next_call()
        if not self._churn_driven and self._churned is not None and self._churned[0] == call.index:
            raise RuntimeError("This call was already churned at the end of the previous `step` (a generic loop).")
        self._churn_driven = True
        if self._churns(call):
            sample = self._apply_churn(sample, call, generator)
        else:
            self._churned = (call.index, self._call_sigmas[call.index], self._grid_scalars[call.level])
        self._step_index = call.index
        return ChurnOutput(sample, self._churned[1])

    def record_model_output(self, model_output: torch.Tensor, sigma: torch.Tensor) -> None:
        """
        Check a model output that does not pass through `step` (the refining call of `"refined"`
        self-conditioning) like those that do: a NaN, infinite or out-of-range value is reported at the final call.
        """
        self._monitor.record(model_output, "of the refining call at sigma={sigma:.6g}", sigma=sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> EntropyRateSchedulerOutput | tuple:
        """
        Advance the run by one model call, given the denoiser output at the point the model was evaluated at.

        Euler: `d = -sigma_hat * ((D - x_hat) / sigma_hat^2)`, `x_next = x_hat + (sigma_{i+1} - sigma_hat) * d`
        (float32; the official op order, bit-exact). Heun (EDM Algorithm 2): the first call of a step returns the
        Euler predictor, the second (made at the predictor and `sigma_{i+1}`) the trapezoidal correction
        `x_hat + 0.5 * h * (d + d')`; the correction is made on every step, also the one into `terminal_sigma`,
        because only the final denoise plays the role of EDM's step to sigma = 0. The last call is the final denoise
        at `terminal_sigma`: it returns `prev_sample = D` (bits = `prev_sample > 0.5`).

        In a generic loop (no `churn` calls) the churn of the next call is applied to `prev_sample` here, with
        `generator` (see the class docstring). In the `churn` loop `generator` is not used.

        Args:
            model_output (`torch.Tensor`):
                The denoiser output `D(x_hat, sigma_hat)`: bit probabilities in [0, 1], same shape as `sample`.
                Checked once per run, at the final call, without a host sync per step.
            timestep (`float` or `torch.Tensor`):
                The noise level the model was evaluated at: the `sigma` returned by `churn`, or `timesteps[i]` in a
                generic loop (a scalar, or one equal value per row).
            sample (`torch.Tensor`):
                The model input: the sample returned by `churn`, or the current state in a generic loop.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return an [`EntropyRateSchedulerOutput`] or a tuple `(prev_sample, pred_original_sample)`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                The churn noise of a generic loop.

        Returns:
            [`EntropyRateSchedulerOutput`] or `tuple`. `prev_sample` is float32 (float64 if `sample` is float64).
        """
        call = self._next_call()
        scalars, evaluated_at = self._evaluated_sigma(call)
        sigma_hat = scalars.sigma
        check_step_inputs(model_output, timestep, sample, sigma_hat, evaluated_at)
        self._monitor.record(model_output, "at level {level} (sigma={sigma:.6g})", level=call.level, sigma=sigma_hat)

        compute_dtype = torch.promote_types(sample.dtype, torch.float32)
        sample = sample.to(compute_dtype)
        denoised = model_output.to(compute_dtype)
        self_cond = None if self.config.self_conditioning == "none" else denoised
        refine_level = None

        if call.kind == "final":
            prev_sample = denoised
        elif call.kind == "correction":  # at the predictor's next level, with the predictor's step size
            sample_hat, drift, first_scalars, first_denoised = self._heun_state
            drift_next = derivative(sample, denoised, in_dtype(self._grid_scalars[call.level], compute_dtype))
            prev_sample = sample_hat + 0.5 * first_scalars.step_size * (drift + drift_next)
            self._heun_state = None
            if self_cond is not None:
                self_cond = first_denoised  # the official sampler carries the first evaluation's estimate
            refine_level = call.level
        else:
            scalars = in_dtype(scalars, compute_dtype)
            drift = derivative(sample, denoised, scalars)
            if call.kind == "predictor":
                prev_sample = sample + scalars.step_size * drift
                self._heun_state = (sample, drift, scalars, denoised)
            else:
                prev_sample = euler_update_(drift, sample, scalars.step_size)
                refine_level = call.level + 1

        refined = self.config.self_conditioning == "refined" and refine_level is not None
        refine_sigma = self._level_sigmas[refine_level] if refined else None
        self._step_index, self._churned = call.index + 1, None
        if call.kind == "final":
            self._monitor.raise_if_bad()  # the run's one host read
        elif not self._churn_driven:
            prev_sample = self._churn_next_call(prev_sample, generator)

        if not return_dict:
            return (prev_sample, denoised)
        return EntropyRateSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised, self_cond=self_cond, refine_sigma=refine_sigma
        )

    def _evaluated_sigma(self, call: ModelCall) -> tuple[CallScalars, torch.Tensor]:
        """
        `(scalars, handed_to_model)` of the current call: the scalars of the level it was evaluated at (0-d CPU
        float32, for the math; `scalars.sigma` is the level) and the tensor the caller got for the model (from
        `churn`, or the generic loop's `timesteps[i]`).
        """
        if self._churned is not None and self._churned[0] == call.index:
            return self._churned[2], self._churned[1]
        if self._churn_driven and self._churns(call):
            raise RuntimeError(
                f"Step {call.level} churns (gamma={self.gammas[call.level].item():.4g}): call `scheduler.churn(sample, "
                "generator=...)` before the model call and evaluate the model at the point it returns."
            )
        return self._grid_scalars[call.level], self.timesteps[call.index]

    def _churn_next_call(self, sample: torch.Tensor, generator) -> torch.Tensor:
        """A generic loop's churn: the churn of the next call, applied at the end of this step."""
        if self._step_index >= len(self._plan) or not self._churns(self._plan[self._step_index]):
            return sample
        if self.config.self_conditioning == "refined":
            raise ValueError(
                "self_conditioning='refined' makes its refining call between a step and the next churn, so it needs "
                "the `churn` loop (see the class docstring) or the pipeline; a generic loop cannot place it."
            )
        sample = self._apply_churn(sample, self._plan[self._step_index], generator)
        index, _, sigma = self._churned
        self._churned = (index, self.timesteps[index], sigma)  # the generic loop hands `timesteps[i]` to the model
        return sample
