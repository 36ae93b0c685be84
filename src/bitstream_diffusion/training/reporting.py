"""What a training run reports besides its metrics: the log setup, the run summary (``train_summary.json``),
generated texts for the trackers, and the flags as the trackers and the exported folder record them.

One setup for logs and progress bars (:func:`configure_logging`, :func:`progress_bars_enabled`), following the
Hugging Face libraries' own switches, so that a user who silences them silences the run too:

* progress bars (data preparation, training steps) are off when ``HF_HUB_DISABLE_PROGRESS_BARS`` is set (or
  ``huggingface_hub.utils.disable_progress_bars()`` was called), when ``datasets.disable_progress_bars()`` (or
  ``HF_DATASETS_DISABLE_PROGRESS_BARS``) or transformers' or diffusers' ``disable_progress_bar()`` was called; the
  Hub variable also turns off the bars of datasets, transformers and diffusers themselves;
* the run's log lines (the script's and this package's) are INFO lines unless ``TRANSFORMERS_VERBOSITY``,
  ``DIFFUSERS_VERBOSITY`` or ``DATASETS_VERBOSITY`` asks for less (the strictest one wins); the libraries follow their
  own variables; processes other than each machine's main one log warnings and errors only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..utils.atomic_io import write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .checkpointing import TrainingState
    from .entropy_rate import EntropyRateEstimator

__all__ = [
    "check_gathered_rows",
    "configure_logging",
    "log_texts",
    "plain_args",
    "progress_bars_enabled",
    "run_log_level",
    "run_summary",
    "tracker_config",
]

_SECRET_FLAGS = ("hub_token",)
# accelerate logs one line per file it saves or loads; a checkpoint is reported once instead
_CHATTY_LOGGERS = ("accelerate.checkpointing", "accelerate.accelerator")
_VERBOSITY_VARIABLES = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "DATASETS_VERBOSITY")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
_TRUE = ("1", "true", "yes", "on")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def progress_bars_enabled() -> bool:
    """Whether the run shows progress bars: ``False`` as soon as one Hugging Face switch turns them off (see the
    module docstring). A library that is not imported yet is judged by its environment variable alone."""
    from huggingface_hub.utils import are_progress_bars_disabled

    if _env_true("HF_HUB_DISABLE_PROGRESS_BARS") or are_progress_bars_disabled():
        return False
    if "datasets" in sys.modules:
        from datasets.utils import are_progress_bars_disabled as datasets_disabled

        if datasets_disabled():
            return False
    elif _env_true("HF_DATASETS_DISABLE_PROGRESS_BARS"):
        return False
    for library in ("transformers", "diffusers"):
        if library in sys.modules:
            utils_logging = sys.modules.get(f"{library}.utils.logging")
            if utils_logging is not None and not utils_logging.is_progress_bar_enabled():
                return False
    return True


def run_log_level() -> int:
    """INFO, or the strictest level asked for by ``TRANSFORMERS_VERBOSITY``/``DIFFUSERS_VERBOSITY``/
    ``DATASETS_VERBOSITY`` (their values: debug, info, warning, error, critical)."""
    asked = [_LEVELS[value] for value in (os.environ.get(name, "").strip().lower() for name in _VERBOSITY_VARIABLES)
             if value in _LEVELS]
    return max(asked, default=logging.INFO)


def configure_logging(accelerator: Accelerator) -> None:
    """One log setup for the run (see the module docstring): lines with time and source at :func:`run_log_level` on
    each machine's main process, warnings and errors on the others (the libraries: errors); the libraries' bars off
    when :func:`progress_bars_enabled` says so."""
    import datasets
    import diffusers
    import transformers

    level = run_log_level() if accelerator.is_local_main_process else max(run_log_level(), logging.WARNING)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    logging.getLogger("bitstream_diffusion").setLevel(level)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if not accelerator.is_local_main_process:
        for library in (datasets, transformers, diffusers):
            library.utils.logging.set_verbosity_error()
    if not progress_bars_enabled():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()


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
