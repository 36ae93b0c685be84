# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""The model calls of one sampler run, and the noise level each call is made at.

A run over `n` noise levels makes one model call per level with Euler, and with Heun one predictor call per level
plus one correction call into every level after the first. Each call has a kind:

* `"euler"`: a first-order step from its level to the next one;
* `"predictor"` / `"correction"`: the two halves of a Heun step (the correction is made at the next level);
* `"final"`: the final denoise at the last level (`terminal_sigma`), whose output is the result.

Only `"euler"` and `"predictor"` calls churn (EDM adds the churn noise before the step's first evaluation). The
plan is plain Python (lists and ints), so that the sampling loop looks up its call without reading tensors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["CallKind", "CallPlan", "ModelCall"]

CallKind = Literal["euler", "predictor", "correction", "final"]


@dataclass(frozen=True)
class ModelCall:
    """One model call of a run: its index, the grid level it belongs to and its kind."""

    index: int
    level: int
    kind: CallKind

    @property
    def may_churn(self) -> bool:
        """Whether this call starts a step, i.e. whether the churn of its level (if any) comes right before it."""
        return self.kind in ("euler", "predictor")


@dataclass(frozen=True)
class CallPlan:
    """The calls of a run over `num_levels` noise levels with `solver` (`"euler"` or `"heun"`)."""

    calls: tuple[ModelCall, ...]

    @classmethod
    @functools.lru_cache(maxsize=16)  # plans are immutable; a sampler builds the same one run after run
    def build(cls, num_levels: int, solver: str) -> CallPlan:
        last = num_levels - 1
        if solver == "euler":
            return cls(tuple(ModelCall(i, i, "final" if i == last else "euler") for i in range(num_levels)))
        calls = [ModelCall(0, 0, "predictor")]
        for level in range(1, num_levels):
            calls.append(ModelCall(len(calls), level, "correction"))
            calls.append(ModelCall(len(calls), level, "final" if level == last else "predictor"))
        return cls(tuple(calls))

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, index: int) -> ModelCall:
        return self.calls[index]

    def model_sigmas(
        self, sigmas: torch.Tensor, churn_levels: list[int], sigma_hats: torch.Tensor, first_call_churns: bool
    ) -> torch.Tensor:
        """
        The noise level of every call, float32 `[len(self)]`: the churned level `sigma_hats[k]` where a step churns
        (its level is `churn_levels[k]`), else the grid level `sigmas[level]`. With `first_call_churns=False` the first
        call is made at its grid level even when its level churns (a generic diffusers loop has no point before its
        first call to add the churn).
        """
        levels, may_churn = self._level_index
        values = sigmas[levels]
        if churn_levels:
            position = torch.full((sigmas.numel(),), -1, dtype=torch.long)
            position[torch.tensor(churn_levels)] = torch.arange(len(churn_levels))
            hat_index = position[levels]
            churns = may_churn & (hat_index >= 0)
            churns[0] &= first_call_churns
            values[churns] = sigma_hats[hat_index[churns]]
        return values

    @functools.cached_property
    def _level_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The level of every call (int64 `[len(self)]`) and whether it may churn (bool `[len(self)]`)."""
        levels = torch.tensor([call.level for call in self.calls])
        return levels, torch.tensor([call.may_churn for call in self.calls])
