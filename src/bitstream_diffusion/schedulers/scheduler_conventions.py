# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The diffusers scheduler conventions of [`EntropyRateScheduler`], apart from its sampler.

What a diffusers user or a generic loop expects of any scheduler (compare `EDMEulerScheduler` and
`HeunDiscreteScheduler`): `scale_model_input`, `add_noise`, `order`, `begin_index` / `set_begin_index`, `len()`, a
readable `repr`, configs saved under older key names that still load, and load errors that name the file.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .scheduler_checks import upgrade_config

__all__ = ["SchedulerConventionsMixin"]


class SchedulerConventionsMixin:
    """Mixed into [`EntropyRateScheduler`] (a diffusers `SchedulerMixin` + `ConfigMixin`)."""

    #: Old `__init__` argument names, still accepted (see `upgrade_config`); diffusers passes them from old configs.
    _deprecated_kwargs = ["sigma_schedule"]

    def _accept_renamed_arguments(self, kwargs: dict[str, Any], noise_schedule: str) -> None:
        """Take `sigma_schedule=` (the old name of `noise_schedule`) with a `FutureWarning`; refuse anything else."""
        unknown = sorted(set(kwargs) - set(self._deprecated_kwargs))
        if unknown:
            raise TypeError(f"EntropyRateScheduler got unexpected keyword arguments {unknown}.")
        if "sigma_schedule" not in kwargs:
            return
        old = kwargs["sigma_schedule"]
        explicit = "noise_schedule" not in self.config.get("_use_default_values", [])
        if explicit and noise_schedule != old:
            raise ValueError(
                f"Got noise_schedule={noise_schedule!r} and its old name sigma_schedule={old!r}; pass one of them."
            )
        warnings.warn("`sigma_schedule` is now called `noise_schedule`; pass that name instead.", FutureWarning)
        defaults = [key for key in self.config.get("_use_default_values", []) if key != "noise_schedule"]
        self.register_to_config(noise_schedule=old, _use_default_values=defaults)

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # Configs saved before a key was renamed (`sigma_schedule`) load under the new name, without a warning.
        return super().extract_init_dict(upgrade_config(config_dict), **upgrade_config(kwargs))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: str | None = None, **kwargs):
        """diffusers' `SchedulerMixin.from_pretrained`, with an invalid value named together with the file it is in
        (a hand-edited `scheduler_config.json` otherwise gives a message that names the field but not the folder)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except ValueError as error:
            parts = [str(pretrained_model_name_or_path), subfolder, cls.config_name]
            where = "/".join(part.rstrip("/") for part in parts if part)
            raise ValueError(f"Invalid scheduler config {where}: {error}") from error

    def __repr__(self) -> str:
        """The config as JSON with each entropy-table list abbreviated (a table is hundreds of floats)."""
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        for key, values in config.items():
            if key.startswith("entropy_") and isinstance(values, (list, tuple)):
                config[key] = f"[{len(values)} floats: {values[0]:.6g} .. {values[-1]:.6g}]"
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"

    def __len__(self) -> int:
        """The model calls of the run set by `set_timesteps` (`len(timesteps)`), 0 before the first `set_timesteps`."""
        return 0 if self.timesteps is None else len(self.timesteps)

    def __bool__(self) -> bool:  # a scheduler is never "empty", whatever `len` says before `set_timesteps`
        return True

    @property
    def order(self) -> int:
        """Model calls per step of the solver, as in diffusers: 1 for Euler, 2 for Heun."""
        return 2 if self.config.solver == "heun" else 1

    @property
    def begin_index(self) -> int | None:
        """The call a run starts at (`set_begin_index`); `None` means the first one."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """
        Start the run at model call `begin_index` of `timesteps` instead of the first one (e.g. from a partly denoised
        state, as diffusers' image-to-image pipelines do). Call it after `set_timesteps`, which resets it.
        """
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or not 0 <= begin_index < len(self):
            raise ValueError(f"begin_index must be an integer in [0, {len(self)}) (a model call), got {begin_index!r}.")
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """
        The identity: the SDT applies EDM's input scaling `c_in(sigma)` itself, so the model takes the state as it is.
        Kept so that generic diffusers loops (`model(scheduler.scale_model_input(x, t), t)`) run unchanged.
        """
        return sample

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, sigmas: float | torch.Tensor
    ) -> torch.Tensor:
        """
        The forward process `x0 + sigma * noise`.

        Args:
            original_samples (`torch.Tensor` of shape `(batch_size, ...)`): clean bits in {0, 1}.
            noise (`torch.Tensor`): standard normal noise of the same shape.
            sigmas (`float` or `torch.Tensor`): noise levels (not timestep indices): a scalar or a single value (both
                broadcast over the batch), or one per row.
        """
        sigmas = torch.as_tensor(sigmas, dtype=original_samples.dtype, device=original_samples.device)
        if sigmas.numel() == 1:
            sigmas = sigmas.reshape(())
        if sigmas.ndim > 0 and sigmas.numel() != original_samples.shape[0]:
            raise ValueError(f"Expected one sigma per row ({original_samples.shape[0]}), got {sigmas.numel()}.")
        return original_samples + noise * sigmas.reshape(-1, *([1] * (original_samples.ndim - 1)))

