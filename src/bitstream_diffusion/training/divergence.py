"""Stopping a diverged run before the weights take a NaN or infinite update.

A training step computes, in order, the model input ``x_t`` (and sigma), the self-conditioning estimate (a first
pass of the model), the logits and the loss, the gradient norm. A diverging run (a learning rate far too high, an
fp16 overflow) shows a NaN or an inf at the first of them that goes wrong, often the self-conditioning estimate of a
model whose weights already blew up. :class:`NonFiniteMonitor` watches each of them during a micro-batch
(:func:`~.objective.noisy_batch` screens the model input and the estimate, so the model never sees them and never
raises its own input error), and its :meth:`~NonFiniteMonitor.check` decides for all processes at once (one
reduction), so they stop together. :func:`check_finite` covers the gradient norm (the same on every process) and
:func:`check_finite_weights` the weights before a checkpoint is written, so that the last checkpoint is always a good
one. Every stop raises :class:`TrainingDivergedError`, whose message names the step, the last good checkpoint and how
to resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .checkpointing import TrainingState

__all__ = [
    "STEP_QUANTITIES",
    "NonFiniteMonitor",
    "TrainingDivergedError",
    "check_finite",
    "check_finite_logits",
    "check_finite_weights",
    "nonfinite_logits",
]

# what a training step computes, in order; the monitor reports the earliest one that held a NaN or an inf
STEP_QUANTITIES = ("model input", "self-conditioning estimate", "loss")


class TrainingDivergedError(RuntimeError):
    """A value of the training step (or the weights) became NaN or infinite; training stopped before the weights
    (or a checkpoint) took it."""

    @classmethod
    def at(
        cls,
        what: str,
        value: float,
        state: TrainingState,
        last_checkpoint: str | None,
        *,
        step: int | None = None,
    ) -> TrainingDivergedError:
        """The error for ``what`` (e.g. ``"loss"``) being ``value`` during optimizer step ``step`` (default: the step
        after ``state``, the one being computed)."""
        last = last_checkpoint or "none (no checkpoint was written yet)"
        step = state.global_step + 1 if step is None else step
        verb = "are" if what.endswith("weights") else "is"
        return cls(
            f"Training stopped: the {what} {verb} {value} at optimizer step {step} "
            f"(epoch {state.epoch}, batch {state.batches_in_epoch}). The weights were not updated with it and no "
            f"checkpoint was written from it. The last good checkpoint is {last}; resume with "
            "--resume_from_checkpoint latest and a lower --learning_rate (or a lower --max_grad_norm, or another "
            "--mixed_precision). If the run diverges again from there, resume from an older checkpoint-N."
        )


def _flag(tensor: torch.Tensor) -> float:
    """2 when ``tensor`` holds a NaN, 1 when it holds an inf (and no NaN), else 0."""
    return float(torch.maximum(2.0 * torch.isnan(tensor).any().float(), torch.isinf(tensor).any().float()))


class NonFiniteMonitor:
    """The first quantity of one micro-batch that held a NaN or an inf (see :data:`STEP_QUANTITIES`).

    ``screen`` a tensor the model is about to receive (a non-finite one is recorded and replaced by a finite copy so
    that every process still runs the same passes), ``observe`` one that is only checked, then ``check`` once per
    micro-batch on every process.
    """

    def __init__(self) -> None:
        self.found: dict[str, float] = {}

    def observe(self, what: str, tensor: torch.Tensor) -> None:
        if what not in STEP_QUANTITIES:
            raise ValueError(f"unknown step quantity {what!r}; expected one of {STEP_QUANTITIES}")
        flag = _flag(tensor.detach())
        if flag:
            self.found[what] = max(self.found.get(what, 0.0), flag)

    def screen(self, what: str, tensor: torch.Tensor, *, fill: float = 0.0) -> torch.Tensor:
        """``tensor`` itself when finite; else record it and return a copy with ``fill`` in place of NaN/inf."""
        self.observe(what, tensor)
        if what in self.found:
            return torch.nan_to_num(tensor, nan=fill, posinf=fill, neginf=fill)
        return tensor

    def first(self) -> tuple[str, float] | None:
        """``(quantity, nan or inf)`` of the earliest quantity found on this process, or ``None``."""
        for what in STEP_QUANTITIES:
            if what in self.found:
                return what, float("nan") if self.found[what] == 2.0 else float("inf")
        return None

    def check(self, accelerator: Accelerator, state: TrainingState, last_checkpoint: str | None) -> None:
        """Raise :class:`TrainingDivergedError` on every process when any process found a non-finite quantity (one
        reduction: the earliest quantity of the step wins, NaN over inf)."""
        code = 0.0
        found = self.first()
        if found is not None:
            rank = len(STEP_QUANTITIES) - STEP_QUANTITIES.index(found[0])
            code = 2.0 * rank + (1.0 if math.isnan(found[1]) else 0.0)
        if accelerator.num_processes > 1:
            code = float(accelerator.reduce(torch.tensor(code, device=accelerator.device), reduction="max"))
        if code:
            what = STEP_QUANTITIES[len(STEP_QUANTITIES) - int(code // 2)]
            raise TrainingDivergedError.at(what, float("nan") if code % 2 else float("inf"), state, last_checkpoint)


def nonfinite_logits(logits: torch.Tensor, accelerator: Accelerator) -> float | None:
    """``nan`` or ``inf`` when the logits of this micro-batch hold one on any process (NaN wins), else ``None``.

    One flag per process (2 = NaN, 1 = inf), reduced with ``max`` across processes: every process gets the same
    answer and they all stop at the same micro-batch.
    """
    bad = torch.tensor(_flag(logits), device=logits.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="max")
    flag = float(bad)
    if flag == 0.0:
        return None
    return float("nan") if flag == 2.0 else float("inf")


def check_finite_logits(
    logits: torch.Tensor, accelerator: Accelerator, state: TrainingState, last_checkpoint: str | None
) -> None:
    """Raise :class:`TrainingDivergedError` on every process when any process's logits hold a NaN or an inf."""
    bad = nonfinite_logits(logits, accelerator)
    if bad is not None:
        raise TrainingDivergedError.at("loss", bad, state, last_checkpoint)


def check_finite(what: str, value: torch.Tensor, state: TrainingState, last_checkpoint: str | None) -> None:
    """Raise :class:`TrainingDivergedError` when the 0-d ``value`` (the loss, the gradient norm) is NaN or infinite."""
    if not bool(torch.isfinite(value)):
        raise TrainingDivergedError.at(what, float(value), state, last_checkpoint)


def check_finite_weights(
    tensors: Iterable[torch.Tensor], accelerator: Accelerator, state: TrainingState, last_checkpoint: str | None
) -> None:
    """Before a checkpoint: raise :class:`TrainingDivergedError` on every process when any weight (or EMA shadow)
    of any process is NaN or infinite after optimizer step ``state.global_step``."""
    flag = 0.0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        flag = max(flag, _flag(local.detach()))
        if flag == 2.0:
            break
    if accelerator.num_processes > 1:
        flag = float(accelerator.reduce(torch.tensor(flag, device=accelerator.device), reduction="max"))
    if flag:
        raise TrainingDivergedError.at("weights", float("nan") if flag == 2.0 else float("inf"), state,
                                       last_checkpoint, step=state.global_step)
