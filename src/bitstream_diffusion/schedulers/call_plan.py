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
        self, sigmas: torch.Tensor, churned: dict[int, torch.Tensor], first_call_churns: bool
    ) -> torch.Tensor:
        """
        The noise level of every call, float32 `[len(self)]`: the churned level `churned[level]` where a step churns,
        else the grid level `sigmas[level]`. With `first_call_churns=False` the first call is made at its grid level
        even when its level churns (a generic diffusers loop has no point before its first call to add the churn).
        """
        values = []
        for call in self.calls:
            churns = call.may_churn and call.level in churned and (first_call_churns or call.index > 0)
            values.append(churned[call.level] if churns else sigmas[call.level])
        return torch.stack(values)
