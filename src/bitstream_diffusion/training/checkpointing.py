"""Training checkpoints: the ``checkpoint-N`` folders of an output directory and the training-state file in them.

Layout of ``output_dir``::

    checkpoint-N/           a complete checkpoint after N optimizer steps: accelerate's files (model, optimizer,
                            RNG states, the objects of register_checkpoint_state) + training_state.json
    .checkpoint-N.tmp/      a checkpoint being written; only a run killed while saving leaves one behind, and the
                            next run removes it (remove_stale_staging)

Saving (:func:`save_checkpoint`): every process writes into the hidden staging folder with
``accelerator.save_state``; the main process writes the training-state file last, renames the folder to
``checkpoint-N`` and deletes the checkpoints beyond the limit. A folder counts as a checkpoint only when it is named
``checkpoint-N`` and holds the training-state file (:func:`is_complete_checkpoint`), so a reader never takes a
half-written one for ``latest``.

Each decision sits in one function, so that a stricter policy changes one place: what counts as complete
(:func:`is_complete_checkpoint`), what a valid training state is (:meth:`TrainingState.from_dict`), how our objects
are saved and loaded (:func:`register_checkpoint_state`, :func:`load_checkpoint`), how an old checkpoint is removed
(:func:`remove_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from ..utils.atomic_io import replace_directory, write_json_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .optim import ExponentialMovingAverage

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINING_STATE_FILE",
    "TrainingState",
    "is_complete_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "register_checkpoint_state",
    "register_sharded_ema",
    "remove_checkpoint",
    "remove_stale_staging",
    "resolve_resume_checkpoint",
    "resumable_batches",
    "rotate_checkpoints",
    "save_checkpoint",
]

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
_STAGING_SUFFIX = ".tmp"


@dataclass
class TrainingState:
    """Where a run stands: what a resumed run needs beyond accelerate's files to continue at the exact next batch.

    Attributes:
        global_step: optimizer steps done.
        epoch: the current epoch (0-based).
        batches_in_epoch: micro-batches of ``epoch`` already consumed (a resumed run skips them).
        micro_batches: micro-batches done in total (the per-micro-batch random seeds are indexed by it).
        tokens_seen: training tokens consumed, all processes together.
        validation_history: ``[{"step": int, "loss": float}, ...]``, one entry per validation.
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
        """Build the state from its JSON form; a missing or unknown field is an error naming ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must hold a JSON object, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(
                f"{source} is not a training state of this script (missing fields {missing}, unknown fields "
                f"{unknown}). Resume from another checkpoint with --resume_from_checkpoint checkpoint-N."
            )
        return cls(**{name: data[name] for name in names})

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingState:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"Cannot read the training state {path} ({error}). Resume from another checkpoint with "
                "--resume_from_checkpoint checkpoint-N."
            ) from error
        return cls.from_dict(data, source=str(path))


def resumable_batches(
    accelerator: Accelerator, dataloader: DataLoader, state: TrainingState, max_steps: int
) -> Iterator[Any]:
    """The training batches from where ``state`` stands, epoch after epoch, until ``state.global_step`` reaches
    ``max_steps``.

    ``dataloader`` is prepared with accelerate's seedable sampler, so epoch ``e`` visits the rows in an order drawn
    from the seed and ``e`` alone; a resumed run skips the ``state.batches_in_epoch`` batches it already consumed and
    sees exactly the batches the uninterrupted run saw. The caller counts ``state.batches_in_epoch`` (and the steps)
    after each batch; a new epoch starts here once all of the current one's batches are counted.
    """
    while state.global_step < max_steps:
        if state.batches_in_epoch >= len(dataloader):
            state.epoch += 1
            state.batches_in_epoch = 0
        dataloader.set_epoch(state.epoch)
        skip = state.batches_in_epoch
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        loader.set_epoch(state.epoch)
        for batch in loader:
            yield batch
            if state.global_step >= max_steps:
                return


def _step_of(path: Path) -> int | None:
    """N for a folder named ``checkpoint-N``, else ``None``."""
    suffix = path.name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A folder is a complete checkpoint when its training-state file (written last) is there."""
    return (Path(path) / TRAINING_STATE_FILE).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(N, path), ...]`` of the complete ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        step = _step_of(path)
        if step is not None and path.is_dir() and is_complete_checkpoint(path):
            found.append((step, path))
    return sorted(found)


def resolve_resume_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The folder ``--resume_from_checkpoint`` names.

    Args:
        value: ``None``/empty (no resume), ``"latest"`` (the newest complete checkpoint in ``output_dir``, ``None``
            when there is none), or a folder, absolute or relative to the working directory or to ``output_dir``.

    Raises:
        FileNotFoundError: a named folder that is not a complete checkpoint.
    """
    if not value:
        return None
    output_dir = Path(output_dir)
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(value)
    if not path.exists() and (output_dir / value).exists():
        path = output_dir / value
    if not is_complete_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINING_STATE_FILE}).")
    return path


def remove_stale_staging(output_dir: str | os.PathLike) -> None:
    """Delete the staging folders a run killed while saving left behind (main process, before training)."""
    for stale in Path(output_dir).glob(f".{CHECKPOINT_PREFIX}*{_STAGING_SUFFIX}"):
        shutil.rmtree(stale, ignore_errors=True)


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete one checkpoint folder (rotation)."""
    shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, *, keep: Path) -> None:
    """Delete the oldest complete checkpoints until ``total_limit`` remain; ``keep`` (the newest) always stays."""
    if total_limit is None:
        return
    for _, old in list_checkpoints(output_dir)[:-total_limit]:
        if old != keep:
            remove_checkpoint(old)


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, state: TrainingState, total_limit: int | None
) -> Path:
    """Write ``checkpoint-{state.global_step}`` (all processes call this) and return its path.

    ``accelerator.save_state`` fills the staging folder on every process; the main process then writes the training
    state, publishes the folder under its final name (replacing an older one of the same step only once the new one
    is complete) and rotates.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
    staging = output_dir / f".{final.name}{_STAGING_SUFFIX}"  # the same path on every process
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(staging / TRAINING_STATE_FILE)
        replace_directory(staging, final)
        rotate_checkpoints(output_dir, total_limit, keep=final)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> TrainingState:
    """Restore accelerate's state (model, optimizer, RNG, registered objects) from ``path`` and return the training
    state saved with it."""
    accelerator.load_state(str(path))
    return TrainingState.load(Path(path) / TRAINING_STATE_FILE)


def register_checkpoint_state(
    accelerator: Accelerator, *, lr_scheduler: Any, estimator: Any, ema: ExponentialMovingAverage | None
) -> None:
    """Make ``save_checkpoint``/``load_checkpoint`` carry the objects accelerate does not know about.

    The LR scheduler, the entropy-rate estimator (buffer and tables included) and the EMA are registered with
    ``accelerator.register_for_checkpointing``, in this order (``custom_checkpoint_0/1/2.pkl``). Under FSDP the EMA
    shadows this rank's parameter shards, so every rank keeps its own file instead (:func:`register_sharded_ema`).
    """
    objects = [lr_scheduler, estimator]
    if ema is not None and accelerator.distributed_type == DistributedType.FSDP:
        register_sharded_ema(accelerator, ema)
    elif ema is not None:
        objects.append(ema)
    accelerator.register_for_checkpointing(*objects)


def register_sharded_ema(accelerator: Accelerator, ema: ExponentialMovingAverage) -> None:
    """FSDP: each rank saves and loads the EMA of its own parameter shards (``ema_rank{N}.pt`` in the checkpoint);
    ``register_for_checkpointing`` would keep only the main process's shards."""

    def local(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to_local() if hasattr(tensor, "to_local") else tensor

    def save_hook(models, weights, output_dir):
        state = {"decay": ema.decay, "shadow": {k: local(v).detach().cpu() for k, v in ema.shadow.items()}}
        torch.save(state, os.path.join(output_dir, f"ema_rank{accelerator.process_index}.pt"))

    def load_hook(models, input_dir):
        state = torch.load(os.path.join(input_dir, f"ema_rank{accelerator.process_index}.pt"), weights_only=True)
        ema.decay = float(state["decay"])
        for name, tensor in state["shadow"].items():
            local(ema.shadow[name]).copy_(tensor)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
