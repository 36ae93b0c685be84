"""What a training run reports besides its metrics: the log setup, the run summary (``train_summary.json``),
generated texts for the trackers, and the flags as the trackers and the exported folder record them.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..utils.atomic_io import write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .checkpointing import TrainingState
    from .entropy_rate import EntropyRateEstimator

__all__ = ["check_gathered_rows", "configure_logging", "log_texts", "plain_args", "run_summary", "tracker_config"]

_SECRET_FLAGS = ("hub_token",)
# accelerate logs one line per file it saves or loads; a checkpoint is reported once instead
_CHATTY_LOGGERS = ("accelerate.checkpointing", "accelerate.accelerator")


def configure_logging(accelerator: Accelerator) -> None:
    """One log setup for the run: INFO lines with time and source on every process; the libraries' own messages
    (datasets, transformers, diffusers; their verbosity variables apply) once per machine, from its main process."""
    import datasets
    import diffusers
    import transformers

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not accelerator.is_local_main_process:
        for library in (datasets, transformers, diffusers):
            library.utils.logging.set_verbosity_error()


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as saved with the run (``training_config.yaml``), without secrets."""
    return {key: value for key, value in vars(args).items() if key not in _SECRET_FLAGS}


def tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as the trackers take them: numbers, strings and booleans as they are, anything else as a string."""
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in plain_args(args).items()}


def log_texts(accelerator: Accelerator, texts: list[str], step: int, output_dir: str | os.PathLike) -> None:
    """Write generated texts to ``output_dir/samples/step-NNNNNNNN.txt`` and to the tensorboard or wandb tracker."""
    write_text_atomic(Path(output_dir) / "samples" / f"step-{step:08d}.txt", "\n\n".join(texts) + "\n")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_text("validation/samples", "\n\n".join(f"{i}. {t}" for i, t in enumerate(texts)), step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation/samples": wandb.Table(columns=["text"], data=[[t] for t in texts])}, step=step)


def check_gathered_rows(
    accelerator: Accelerator, estimator: EntropyRateEstimator, sigma: torch.Tensor
) -> dict[str, Any]:
    """Right after ``estimator.update(sigma, ...)``: whether the newest buffer rows are every process's ``sigma``,
    in rank order (call on every process). Recorded once in the summary."""
    gathered = accelerator.gather(sigma.detach().float()).cpu()
    buffered = estimator.buffer()[0][-gathered.numel() :]
    return {"world_size": accelerator.num_processes, "local_batch": int(sigma.numel()),
            "rows_added": int(gathered.numel()), "buffer_matches_all_ranks": bool(torch.equal(buffered, gathered))}


def run_summary(
    state: TrainingState,
    estimator: EntropyRateEstimator,
    *,
    status: str,
    started: float,
    last_checkpoint: str | None,
    gather_check: dict[str, Any],
    error: str | None = None,
) -> dict[str, Any]:
    """The content of ``train_summary.json``.

    Args:
        status: ``"completed"`` or ``"diverged"``.
        started: ``time.time()`` at the start of the run.
        last_checkpoint: the newest checkpoint written or resumed from.
        gather_check: :func:`check_gathered_rows` of the first micro-batch.
        error: the message that stopped the run.
    """
    history = state.validation_history
    return {
        "status": status,
        "error": error,
        "global_step": state.global_step,
        "epoch": state.epoch,
        "micro_batches": state.micro_batches,
        "tokens_seen": state.tokens_seen,
        "validation_history": history,
        "initial_validation_loss": history[0]["loss"] if history and history[0]["step"] == 0 else None,
        "final_validation_loss": history[-1]["loss"] if history else None,
        "last_checkpoint": last_checkpoint,
        "estimator": {
            "num_seen": estimator.num_seen,
            "buffer_length": len(estimator),
            "num_refreshes": estimator.num_refreshes,
            "last_refresh_step": estimator.last_refresh_step,
            "gather_check": gather_check,
        },
        "wall_seconds": round(time.time() - started, 2),
    }
