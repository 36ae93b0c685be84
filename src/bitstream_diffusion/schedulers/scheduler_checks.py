# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""Argument checks of [`EntropyRateScheduler`]: each raises a `ValueError` that names the bad value and the fix.

The entropy table itself is checked by [`~bitstream_diffusion.schedulers.entropy_tables.validate_entropy_tables`];
here only whether a config holds all of it or none, and whether the options that need it have it. Model outputs are
checked by [`ModelOutputMonitor`] without a host sync per step: the first bad output of a run is remembered on the
device and reported once, at the run's final call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from .entropy_tables import TABLE_NAMES, EntropyTables

__all__ = [
    "CONFIG_CHOICES",
    "RENAMED_CONFIG_KEYS",
    "ModelOutputMonitor",
    "check_churn_window_available",
    "check_config",
    "check_custom_sigmas",
    "check_gamma",
    "check_num_levels",
    "check_step_inputs",
    "entropy_table_from_config",
    "upgrade_config",
]

#: The allowed values of the string options of the scheduler config.
CONFIG_CHOICES = {
    "noise_schedule": ("entropy", "karras"),
    "churn_window_mode": ("entropy_cdf", "sigma"),
    "self_conditioning": ("carry", "refined", "none"),
    "solver": ("euler", "heun"),
}
#: The numeric options of the scheduler config (`gamma` has its own check): each must be a finite real number.
_NUMBER_KEYS = ("sigma_min", "sigma_max", "terminal_sigma", "sigma_data", "rho", "entropic_blend_alpha", "s_noise")
#: Config keys renamed since version 0.1 (old name -> new name). Folders written with the old names still load.
RENAMED_CONFIG_KEYS = {"sigma_schedule": "noise_schedule"}


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the old key names of [`RENAMED_CONFIG_KEYS`] replaced by the new ones (a new dict).

    Raises `ValueError` when a config holds a key under both names with different values.
    """
    config = dict(config)
    for old, new in RENAMED_CONFIG_KEYS.items():
        if old not in config:
            continue
        value = config.pop(old)
        if new in config and config[new] != value:
            raise ValueError(
                f"The scheduler config sets both `{old}` (the old name of `{new}`) and `{new}`; keep only `{new}`."
            )
        config[new] = value
        defaults = config.get("_use_default_values")
        if isinstance(defaults, list):
            config["_use_default_values"] = [new if key == old else key for key in defaults]
    return config


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_gamma(gamma: float) -> None:
    """`gamma`, the per-step churn factor, must be a finite number >= 0 (not a bool)."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < math.inf:
        raise ValueError(
            f"gamma must be a finite number >= 0 (the EDM per-step churn factor; 0 = deterministic), got {gamma!r}. "
            "Convert the paper's settings with `EntropyRateScheduler.gamma_from_paper` or `gamma_from_s_churn`."
        )


def check_num_levels(num_inference_steps: int) -> None:
    """`num_inference_steps`, the number of noise levels, must be an integer >= 2 (not a bool)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 2:
        raise ValueError(
            "num_inference_steps must be an integer >= 2 (the number of noise levels: with Euler, the denoiser "
            f"calls including the final denoise; the paper's '256 NFE' is 255), got {num_inference_steps!r}."
        )


def check_custom_sigmas(sigmas: Any, num_inference_steps: int | None) -> torch.Tensor:
    """A custom grid for `set_timesteps(sigmas=...)`: >= 2 finite, positive, strictly decreasing noise levels (the last
    is the final denoise's). Returns them as a float32 CPU tensor."""
    try:
        grid = torch.as_tensor(sigmas, dtype=torch.float32).detach().to("cpu").flatten()
    except (TypeError, ValueError, RuntimeError):
        message = f"`sigmas` must be a list or 1-d tensor of noise levels, got {type(sigmas).__name__}."
        raise ValueError(message) from None
    if grid.numel() < 2 or not bool(torch.isfinite(grid).all() & (grid > 0).all() & (grid[1:] < grid[:-1]).all()):
        raise ValueError(
            "`sigmas` must hold >= 2 finite noise levels > 0 in strictly decreasing order (the last one is where the "
            f"final denoise is made), got {grid.tolist()[:8]}."
        )
    if num_inference_steps is not None and num_inference_steps != grid.numel():
        raise ValueError(f"Got num_inference_steps={num_inference_steps} and {grid.numel()} `sigmas`; pass one.")
    return grid


def _check_churn_window(window: Any, mode: str) -> None:
    try:
        low, high = window
    except (TypeError, ValueError):
        raise ValueError(f"churn_window must be a pair (low, high), got {window!r}.") from None
    if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"churn_window must be a pair of finite numbers (low, high), got {window!r}.")
    if not low <= high:
        raise ValueError(f"churn_window must satisfy low <= high, got ({low}, {high}); swap the two values.")
    if mode == "entropy_cdf" and not 0.0 <= low <= high <= 1.0:
        raise ValueError(
            f"With churn_window_mode='entropy_cdf' the window holds CDF quantiles in [0, 1], got ({low}, {high}); "
            "use churn_window_mode='sigma' for a window in noise levels."
        )
    if mode == "sigma" and low < 0:
        raise ValueError(f"A churn window in sigma must be non-negative, got ({low}, {high}).")


def check_config(config: Mapping[str, Any]) -> None:
    """Every option of a scheduler config but the entropy table: choices, types, noise levels, numbers, churn."""
    for name, choices in CONFIG_CHOICES.items():
        if config[name] not in choices:
            raise ValueError(f"`{name}` must be one of {list(choices)}, got {config[name]!r}.")
    for name in _NUMBER_KEYS:
        value = config[name]
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(
                f"`{name}` must be a finite number, got {value!r} ({type(value).__name__}). Fix it in the arguments or "
                "in scheduler_config.json (numbers without quotes)."
            )
    sigma_min, terminal_sigma, sigma_max = config["sigma_min"], config["terminal_sigma"], config["sigma_max"]
    if not 0 < sigma_min <= terminal_sigma < sigma_max:
        raise ValueError(
            "Noise levels must satisfy 0 < sigma_min <= terminal_sigma < sigma_max; got "
            f"sigma_min={sigma_min}, terminal_sigma={terminal_sigma}, sigma_max={sigma_max}."
        )
    rho, sigma_data, alpha, s_noise = (config[k] for k in ("rho", "sigma_data", "entropic_blend_alpha", "s_noise"))
    if not (rho > 0 and sigma_data > 0 and 0 <= alpha <= 1 and 0 <= s_noise < math.inf):
        raise ValueError(
            "Expected rho > 0, sigma_data > 0, 0 <= entropic_blend_alpha <= 1 and s_noise >= 0; got "
            f"rho={rho}, sigma_data={sigma_data}, entropic_blend_alpha={alpha}, s_noise={s_noise}."
        )
    check_gamma(config["gamma"])
    _check_churn_window(config["churn_window"], config["churn_window_mode"])


def entropy_table_from_config(config: Mapping[str, Any]) -> EntropyTables | None:
    """The validated table of a scheduler config, or `None` if it has none (then the schedule must be `"karras"`)."""
    table = {name: config[f"entropy_{name}"] for name in TABLE_NAMES}
    if all(values is None for values in table.values()):
        if config["noise_schedule"] == "entropy":
            raise ValueError(
                "noise_schedule='entropy' needs the entropy-rate table (entropy_pdf, entropy_cdf, entropy_sigmas, "
                "entropy_edges). Load a model's scheduler folder, use "
                "`EntropyRateScheduler.from_entropy_tables(dir)`, or choose noise_schedule='karras' explicitly."
            )
        return None
    missing = [f"entropy_{name}" for name, values in table.items() if values is None]
    if missing:
        raise ValueError(f"The entropy table is incomplete: {missing} missing. Pass all four tables or none.")
    tables = EntropyTables.from_dict(table)
    if config["terminal_sigma"] >= tables.sigmas[-1].item():
        raise ValueError(
            f"terminal_sigma={config['terminal_sigma']} must lie below the last entropy-table midpoint "
            f"{tables.sigmas[-1].item():.6g}."
        )
    return tables


def check_churn_window_available(config: Mapping[str, Any], tables: EntropyTables | None, gamma: float) -> None:
    """Churn with a window in entropy-CDF quantiles needs the table that maps them to sigmas."""
    if gamma > 0 and config["churn_window_mode"] == "entropy_cdf" and tables is None:
        raise ValueError(
            "Churn (gamma > 0) with churn_window_mode='entropy_cdf' needs the entropy table to place the window; "
            "pass the table, or set churn_window_mode='sigma' and churn_window=(low_sigma, high_sigma)."
        )


def check_step_inputs(
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    expected: float | torch.Tensor,
    evaluated_at: torch.Tensor | None = None,
) -> None:
    """
    `timestep` must be the noise level the model was evaluated at (`expected`, a float32 value as a Python float or a
    0-d CPU tensor) and `model_output` must be shaped like `sample`. Nothing is read from the device when `timestep` is
    `evaluated_at` (the tensor `churn` returned) or a view of the same memory (an element of `timesteps`).
    """
    if not _same_tensor(timestep, evaluated_at):
        values = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten()
        expected = torch.as_tensor(expected, dtype=torch.float64)
        if values.numel() == 0 or not torch.allclose(values, expected.expand_as(values), rtol=1e-6, atol=0.0):
            raise ValueError(
                f"`timestep` must be the noise level the model was evaluated at, {expected.item():.8g} (the sigma "
                f"returned by `churn`, or `scheduler.timesteps[i]` in a generic loop), got {values.tolist()[:4]}."
            )
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; pass the "
            "denoiser's bit probabilities for every position."
        )


def _same_tensor(a: Any, b: torch.Tensor | None) -> bool:
    """Whether `a` is `b` or a tensor over the same memory (same device, dtype, shape and data pointer)."""
    if a is b:
        return True
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.device == b.device
        and a.dtype == b.dtype
        and a.numel() == b.numel() == 1
        and a.data_ptr() == b.data_ptr()
    )


class ModelOutputMonitor:
    """
    Finds the first model output of a run that is not a probability: NaN, infinite, or outside [0, 1] (for example
    logits passed instead of `sigmoid(logits)`).

    `record` costs one `aminmax` reduction on the output's device (its two 0-d results are kept, a few bytes per
    call) and reads nothing back to the host, so a sampling loop stays free of per-step syncs. `raise_if_bad` checks
    all of them at once and reads one flag back (a single host sync) at the end of a run. Each recorded output carries
    a description, e.g. `("at level {level}", sigma)`, that names it in the error.
    """

    def __init__(self) -> None:
        self._descriptions: list[tuple[str, int | None, float | torch.Tensor | None]] = []
        self._lows: list[torch.Tensor] = []
        self._highs: list[torch.Tensor] = []

    def record(
        self, output: torch.Tensor, what: str, level: int | None = None, sigma: float | torch.Tensor | None = None
    ) -> None:
        """Remember the range of `output`; `what`, `level` and `sigma` name it in the error."""
        low, high = torch.aminmax(output.detach())
        self._lows.append(low)
        self._highs.append(high)
        self._descriptions.append((what, level, sigma))

    def raise_if_bad(self) -> None:
        """Raise `ValueError` naming the first bad output recorded, if any (one host read)."""
        if not self._lows:
            return
        lows, highs = torch.stack(self._lows).float(), torch.stack(self._highs).float()
        is_bad = ~((lows >= 0) & (highs <= 1))  # NaN compares False either way
        if not bool(is_bad.any()):
            return
        index = int(is_bad.int().argmax())  # the first bad output
        low, high = float(lows[index]), float(highs[index])
        what, level, sigma = self._descriptions[index]
        where = what.format(level=level, sigma=float("nan") if sigma is None else float(sigma))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                f"The model output {where} contains NaN or infinite values; check the model's weights and precision "
                "(e.g. run the matched filter and sigmoid in float32)."
            )
        raise ValueError(
            f"The model output {where} has values in [{low:.4g}, {high:.4g}], outside [0, 1]: `step` takes the "
            "denoiser's bit probabilities D(x, sigma) = sigmoid(logits), not logits."
        )
