# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""Argument checks of [`EntropyRateScheduler`]: each raises a `ValueError` that names the bad value and the fix.

The entropy table itself is checked by [`~bitstream_diffusion.schedulers.entropy_tables.validate_entropy_tables`];
here only whether a config holds all of it or none, and whether the options that need it have it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .entropy_tables import TABLE_NAMES, EntropyTables

__all__ = [
    "CONFIG_CHOICES",
    "check_churn_window_available",
    "check_config",
    "check_gamma",
    "check_num_levels",
    "check_step_inputs",
    "entropy_table_from_config",
]

#: The allowed values of the string options of the scheduler config.
CONFIG_CHOICES = {
    "sigma_schedule": ("entropy", "karras"),
    "churn_window_mode": ("entropy_cdf", "sigma"),
    "self_conditioning": ("carry", "refined", "none"),
    "solver": ("euler", "heun"),
}


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


def _check_churn_window(window: Any, mode: str) -> None:
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


def check_config(config: Mapping[str, Any]) -> None:
    """Every option of a scheduler config but the entropy table: choices, noise levels, numbers, churn."""
    for name, choices in CONFIG_CHOICES.items():
        if config[name] not in choices:
            raise ValueError(f"`{name}` must be one of {list(choices)}, got {config[name]!r}.")
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
        if config["sigma_schedule"] == "entropy":
            raise ValueError(
                "sigma_schedule='entropy' needs the entropy-rate table (entropy_pdf, entropy_cdf, entropy_sigmas, "
                "entropy_edges). Load a model's scheduler folder, use "
                "`EntropyRateScheduler.from_entropy_tables(dir)`, or choose sigma_schedule='karras' explicitly."
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
    model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, level: int
) -> None:
    """`timestep` must be the noise level `sigma` of the call, `model_output` finite and shaped like `sample`."""
    if timestep is not sigma:  # the tensor `churn` returned needs no check
        values = torch.as_tensor(timestep).detach().to("cpu", torch.float64).flatten()
        expected = sigma.double()
        if values.numel() == 0 or not torch.allclose(values, expected.expand_as(values), rtol=1e-6, atol=0.0):
            raise ValueError(
                f"`timestep` must be the noise level the model was evaluated at, {expected.item():.8g} (the sigma "
                f"returned by `churn`), got {values.tolist()[:4]}."
            )
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
