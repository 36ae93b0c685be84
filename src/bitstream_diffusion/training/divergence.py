"""Stopping a diverged run before the weights take a NaN or infinite update.

The training loop checks the logits of every micro-batch (:func:`check_finite_logits`, agreed by all processes so
that they stop together), the loss and the gradient norm (:func:`check_finite`); on the first bad value it raises
:class:`TrainingDivergedError`, whose message names the step, the last good checkpoint and how to resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .checkpointing import TrainingState

__all__ = ["TrainingDivergedError", "check_finite", "check_finite_logits", "nonfinite_logits"]


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; training stopped before the weights took it."""

    @classmethod
    def at(cls, what: str, value: float, state: TrainingState, last_checkpoint: str | None) -> TrainingDivergedError:
        """The error for ``what`` (e.g. ``"loss"``) being ``value`` during the optimizer step after ``state``."""
        last = last_checkpoint or "none (no checkpoint was written yet)"
        return cls(
            f"Training stopped: the {what} is {value} at optimizer step {state.global_step + 1} "
            f"(epoch {state.epoch}, batch {state.batches_in_epoch}). The weights were not updated with it. The last "
            f"good checkpoint is {last}; resume with --resume_from_checkpoint latest, a lower --learning_rate or "
            "--max_grad_norm, or another --mixed_precision."
        )


def nonfinite_logits(logits: torch.Tensor, accelerator: Accelerator) -> float | None:
    """``nan`` or ``inf`` when the logits of this micro-batch hold one on any process (NaN wins), else ``None``.

    One flag per process (2 = NaN, 1 = inf), reduced with ``max`` across processes: every process gets the same
    answer and they all stop at the same micro-batch.
    """
    bad = torch.maximum(2.0 * torch.isnan(logits).any().float(), torch.isinf(logits).any().float())
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
