"""Where a training run stands (:class:`TrainingState`), saved as ``training_state.json`` in every checkpoint.

A checkpoint folder is user input: the file may have been edited, truncated or swapped. :meth:`TrainingState.from_dict`
therefore checks every field (type, range, consistency with the others) and :meth:`TrainingState.check_fits_run`
checks the state against the run that resumes from it, so that a state such as ``global_step: -5`` or ``1e6`` is an
error naming the file and the field instead of a run that silently "completes" or writes checkpoints no rotation
removes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.atomic_io import write_json_atomic

__all__ = ["TRAINING_STATE_FILE", "TrainingState"]

TRAINING_STATE_FILE = "training_state.json"
_COUNTERS = ("global_step", "epoch", "batches_in_epoch", "micro_batches", "tokens_seen")
_RESUME_HINT = "Resume from another checkpoint with --resume_from_checkpoint checkpoint-N."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainingState:
    """Where a run stands: what a resumed run needs beyond accelerate's files to continue at the exact next batch.

    Attributes:
        global_step: optimizer steps done.
        epoch: the current epoch (0-based).
        batches_in_epoch: micro-batches of ``epoch`` already consumed (a resumed run skips them).
        micro_batches: micro-batches done in total (the per-micro-batch random seeds are indexed by it).
        tokens_seen: training tokens consumed, all processes together.
        validation_history: ``[{"step": int, "loss": float, <metric>: number, ...}, ...]``, one entry per
            validation; besides the loss an entry may carry the validation's other numbers (the bound in bits per
            dimension, the baseline's bits per token, ...).
    """

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    micro_batches: int = 0
    tokens_seen: int = 0
    validation_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "the training state") -> TrainingState:
        """Build the state from its JSON form, checking every field.

        Raises:
            ValueError: a missing or unknown field, a counter that is not a non-negative integer (``1e6`` is a float
                in JSON, ``-5`` is negative), counters that contradict each other, or a malformed validation history;
                the message names ``source`` and the field (the caller adds what to do).
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(
                f"{source} is not a training state of this script (missing fields {missing}, unknown fields "
                f"{unknown})."
            )

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{source}: field {name!r} {why}. The file is corrupt or was edited.")

        for name in _COUNTERS:
            value = data[name]
            if not _is_int(value) or value < 0:
                raise bad(name, f"must be a non-negative integer, got {value!r}")
        if data["micro_batches"] < data["global_step"]:
            raise bad("micro_batches", f"({data['micro_batches']}) is smaller than global_step ({data['global_step']})"
                      ": every optimizer step takes at least one micro-batch")
        for name in ("batches_in_epoch", "epoch"):
            if data[name] > data["micro_batches"]:
                raise bad(name, f"({data[name]}) exceeds micro_batches ({data['micro_batches']})")
        history = data["validation_history"]
        if not isinstance(history, list):
            raise bad("validation_history", f"must be a list, got {type(history).__name__}")
        for index, entry in enumerate(history):
            if not isinstance(entry, dict) or not {"step", "loss"} <= set(entry):
                want = "{'step': int, 'loss': float, ...}"
                raise bad("validation_history", f"entry {index} must be {want}, got {entry!r}")
            extra = {key: value for key, value in entry.items() if key not in ("step", "loss")}
            for key, value in extra.items():
                if not isinstance(key, str) or not _is_number(value):
                    raise bad("validation_history", f"entry {index} has metric {key!r} = {value!r}, not a number")
            step, loss = entry["step"], entry["loss"]
            if not _is_int(step) or not 0 <= step <= data["global_step"]:
                raise bad("validation_history", f"entry {index} has step {step!r} outside [0, global_step]")
            if not _is_number(loss) or not math.isfinite(loss):
                raise bad("validation_history", f"entry {index} has loss {loss!r}, not a finite number")
        return cls(**{name: data[name] for name in names})

    def check_fits_run(
        self, *, max_train_steps: int, batches_per_epoch: int, checkpoint_step: int | None, source: str
    ) -> None:
        """Check the state against the run that resumes from it.

        Args:
            max_train_steps: the run's optimizer steps.
            batches_per_epoch: micro-batches per epoch of the run's data loader (this process).
            checkpoint_step: ``N`` of the ``checkpoint-N`` folder the state came from (``None``: not such a folder).
            source: the file, for the message.

        Raises:
            ValueError: ``global_step`` differs from the folder's step or lies beyond ``max_train_steps``, or
                ``batches_in_epoch`` exceeds an epoch.
        """
        if checkpoint_step is not None and self.global_step != checkpoint_step:
            raise ValueError(
                f"{source}: field 'global_step' is {self.global_step} but the folder is checkpoint-{checkpoint_step}. "
                "The file is corrupt or was moved. Resume from a checkpoint with --resume_from_checkpoint checkpoint-N."
            )
        if self.global_step > max_train_steps:
            raise ValueError(
                f"{source}: field 'global_step' is {self.global_step}, beyond --max_train_steps {max_train_steps}. "
                "Raise --max_train_steps to continue this run, or resume from an earlier checkpoint-N."
            )
        if self.batches_in_epoch > batches_per_epoch:
            raise ValueError(
                f"{source}: field 'batches_in_epoch' is {self.batches_in_epoch}, but an epoch of this run has "
                f"{batches_per_epoch} batches per process. Resume with the data, batch size and number of processes "
                "of the run that wrote it."
            )

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingState:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the training state {path} ({error}). {_RESUME_HINT}") from error
        try:
            return cls.from_dict(data, source=str(path))
        except ValueError as error:
            raise ValueError(f"{error} {_RESUME_HINT}") from None
