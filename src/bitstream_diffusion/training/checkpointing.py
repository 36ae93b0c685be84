"""Training checkpoints: the ``checkpoint-N`` folders of an output directory, how they are written, rotated, recovered
after a kill and resumed from.

Layout of ``output_dir``::

    checkpoint-N/              a complete checkpoint after N optimizer steps: accelerate's files (model.safetensors,
                               optimizer.bin, random_states_{rank}.pkl), ours (lr_scheduler.json,
                               entropy_estimator.safetensors, ema.safetensors, training_state.json) and, last,
                               checkpoint_manifest.json (sizes and SHA-256 of all of them)
    .checkpoint-N.tmp/         a checkpoint being written
    .checkpoint-N.deleting/    a checkpoint being deleted (rotation renames it here first)

A folder named ``checkpoint-N`` is always complete: it gets that name by one rename, after its manifest was written,
and it loses it by one rename before anything in it is deleted. ``latest`` is the newest complete one. A run killed
at any point leaves at most a hidden folder behind; at start-up :func:`recover_checkpoints` finishes an interrupted
save whose folder was complete (so the newest complete state is never deleted) and removes the rest.

Saving (:func:`save_checkpoint`): every process writes into the staging folder with ``accelerator.save_state`` (our
objects through the hooks of :func:`register_checkpoint_state`, as JSON and safetensors, never pickle); the main
process then writes the training state and the manifest, renames the folder into place and rotates. A failed write
(a full disk) publishes nothing, removes the staging folder and says so.

Resuming (:func:`load_checkpoint`): :func:`~.checkpoint_files.verify_checkpoint` checks the folder first (no pickled
objects, every file present, intact, finite and readable, the RNG states restorable), and an error names the file and
an older checkpoint to resume from instead.

Each decision sits in one function: what counts as complete (:func:`is_complete_checkpoint`), what a valid training
state is (:meth:`TrainingState.from_dict`), how our objects are saved and loaded (:func:`register_checkpoint_state`),
how a checkpoint is published (:func:`_publish`) and removed (:func:`remove_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate.utils import DistributedType

from .checkpoint_files import (
    EMA_FILE,
    ESTIMATOR_FILE,
    LR_SCHEDULER_FILE,
    MANIFEST_FILE,
    CheckpointError,
    RNGStateError,
    describe_write_error,
    filesystem_step,
    incompleteness,
    is_complete,
    load_ema,
    load_estimator,
    load_lr_scheduler,
    read_manifest,
    refuse_pickled_objects,
    save_ema,
    save_estimator,
    save_lr_scheduler,
    sharded_ema_file,
    verify_checkpoint,
    write_manifest,
)
from .training_state import TRAINING_STATE_FILE, TrainingState

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .optim import ExponentialMovingAverage

__all__ = [
    "CHECKPOINT_PREFIX",
    "MANIFEST_FILE",
    "TRAINING_STATE_FILE",
    "CheckpointError",
    "RNGStateError",
    "TrainingState",
    "checkpoint_step",
    "is_complete_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "recover_checkpoints",
    "register_checkpoint_state",
    "register_sharded_ema",
    "remove_checkpoint",
    "remove_stale_staging",
    "resolve_resume_checkpoint",
    "resumable_batches",
    "rotate_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_STAGING_SUFFIX = ".tmp"
_RETIRED_SUFFIX = ".deleting"


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


# ----------------------------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N for a folder named ``checkpoint-N``, else ``None``."""
    name = Path(path).name
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def _hidden(final: Path, suffix: str) -> Path:
    return final.with_name(f".{final.name}{suffix}")


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """A folder is a complete checkpoint when its manifest (written last) is there and lists files that all are,
    with their sizes (:func:`~.checkpoint_files.is_complete`; the checksums are checked before resuming)."""
    return is_complete(path)


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(N, path), ...]`` of the complete ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        step = checkpoint_step(path)
        if step is not None and path.is_dir() and is_complete_checkpoint(path):
            found.append((step, path))
    return sorted(found)


def resolve_resume_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The folder ``--resume_from_checkpoint`` names.

    Args:
        value: ``None``/empty (no resume), ``"latest"`` (the newest complete checkpoint in ``output_dir``, ``None``
            when there is no checkpoint folder at all; newer ``checkpoint-N`` folders that are not complete, i.e.
            damaged, are skipped with a warning that names the missing or cut file), or a folder, absolute or
            relative to the working directory or to ``output_dir`` (checked by :func:`load_checkpoint`).

    Raises:
        FileNotFoundError: a named folder that does not exist.
        CheckpointError: ``"latest"`` where ``checkpoint-N`` folders exist but none is complete.
    """
    if not value:
        return None
    output_dir = Path(output_dir)
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        newest = checkpoints[-1][0] if checkpoints else -1
        newer = sorted((checkpoint_step(p), p) for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
                       if p.is_dir() and checkpoint_step(p) is not None and checkpoint_step(p) > newest)
        skipped = {p.name: incompleteness(p) for _, p in newer}
        if skipped and not checkpoints:
            raise CheckpointError(
                f"{output_dir} holds {', '.join(skipped)} but no complete checkpoint ("
                + "; ".join(f"{name}: {why}" for name, why in skipped.items())
                + "): damaged, or written by an older version of this script. Start anew in another --output_dir."
            )
        for name, why in skipped.items():
            logger.warning(f"WARNING: {output_dir / name} is not a complete checkpoint ({why}): skipped. Resuming from "
                           f"{checkpoints[-1][1].name}, the newest complete one (or pass another with "
                           "--resume_from_checkpoint).")
        return checkpoints[-1][1] if checkpoints else None
    path = Path(value)
    if not path.exists() and (output_dir / value).exists():
        path = output_dir / value
    if not path.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} not found (--resume_from_checkpoint {value}).")
    return path


def _remove_tree(path: Path, description: str) -> None:
    filesystem_step(description)
    shutil.rmtree(path, ignore_errors=True)


def _fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(staging: Path, final: Path) -> None:
    """Rename the complete folder ``staging`` to ``final``. An existing ``final`` (the same step saved again) is first
    renamed out of the way; if a kill comes in between, :func:`recover_checkpoints` finishes the job from the complete
    staging folder, so the old one is never needed back."""
    retired = _hidden(final, _RETIRED_SUFFIX)
    if final.exists():
        if retired.exists():
            _remove_tree(retired, f"delete the leftover {retired.name}")
        filesystem_step(f"rename the existing {final.name} to {retired.name}")
        os.replace(final, retired)
    filesystem_step(f"rename {staging.name} to {final.name}")
    os.replace(staging, final)
    _fsync_directory(final.parent)
    if retired.exists():
        _remove_tree(retired, f"delete {retired.name}")


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete one checkpoint folder: first renamed to a hidden name (one atomic step: it is no longer a checkpoint),
    then deleted, so a kill never leaves a half-deleted ``checkpoint-N``."""
    path = Path(path)
    retired = _hidden(path, _RETIRED_SUFFIX)
    if retired.exists():
        _remove_tree(retired, f"delete the leftover {retired.name}")
    filesystem_step(f"rename {path.name} to {retired.name}")
    os.replace(path, retired)
    _fsync_directory(path.parent)
    _remove_tree(retired, f"delete {retired.name}")


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, *, keep: Path) -> None:
    """Delete the oldest complete checkpoints until ``total_limit`` remain; ``keep`` (the newest) always stays."""
    if total_limit is None:
        return
    for _, old in list_checkpoints(output_dir)[:-total_limit]:
        if old != keep:
            remove_checkpoint(old)


def recover_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """Clean up after a run killed while saving or rotating (main process, before training); returns what was done.

    * ``.checkpoint-N.tmp`` that is complete (killed after its manifest, before or during the rename): published as
      ``checkpoint-N``, the save finished. An incomplete one is deleted.
    * ``.checkpoint-N.deleting``: deleted, unless no complete checkpoint of step N or later exists (then it is the
      newest complete state and gets its name back).
    """
    output_dir = Path(output_dir)
    done: list[str] = []
    if not output_dir.is_dir():
        return done
    for staging in sorted(output_dir.glob(f".{CHECKPOINT_PREFIX}*{_STAGING_SUFFIX}")):
        final = output_dir / staging.name[1 : -len(_STAGING_SUFFIX)]
        step = checkpoint_step(final)
        manifest = read_manifest(staging) if step is not None else None
        if manifest is not None and manifest["global_step"] == step and is_complete(staging):
            _publish(staging, final)
            done.append(f"finished the interrupted save of {final.name} (its files were complete)")
        else:
            _remove_tree(staging, f"delete the incomplete {staging.name}")
            done.append(f"removed {staging.name}, left incomplete by an interrupted save")
    for retired in sorted(output_dir.glob(f".{CHECKPOINT_PREFIX}*{_RETIRED_SUFFIX}")):
        final = output_dir / retired.name[1 : -len(_RETIRED_SUFFIX)]
        step = checkpoint_step(final)
        newer = [s for s, _ in list_checkpoints(output_dir) if step is not None and s >= step]
        if step is not None and not newer and not final.exists() and is_complete(retired):
            filesystem_step(f"rename {retired.name} back to {final.name}")
            os.replace(retired, final)
            done.append(f"restored {final.name}: it was being deleted but is the newest complete checkpoint")
        else:
            _remove_tree(retired, f"delete {retired.name}")
            done.append(f"finished deleting {retired.name}")
    return done


def remove_stale_staging(output_dir: str | os.PathLike) -> None:
    """The former name of :func:`recover_checkpoints` (it no longer deletes a complete interrupted save)."""
    recover_checkpoints(output_dir)


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def _agree(accelerator: Accelerator, error: BaseException | None) -> None:
    """Raise on every process when ``error`` happened on any (so that no process waits forever for the others)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        messages = gather_object([None if error is None else str(error)])
        if error is None:
            failed = [m for m in messages if m]
            if failed:
                raise CheckpointError(f"Another process failed: {failed[0]}")
    if error is not None:
        raise error


def _older_checkpoint_hint(path: Path) -> str:
    step = checkpoint_step(path)
    others = [(s, p) for s, p in list_checkpoints(path.parent) if p.resolve() != path.resolve()]
    older = [(s, p) for s, p in others if step is None or s < step] or others
    if older:
        return (f"Resume from an older complete checkpoint instead: --resume_from_checkpoint {older[-1][1].name} "
                f"(in {path.parent}).")
    return (f"No other complete checkpoint is in {path.parent}: start the run anew without --resume_from_checkpoint "
            "(move this folder away first).")


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, state: TrainingState, total_limit: int | None
) -> Path:
    """Write ``checkpoint-{state.global_step}`` (all processes call this) and return its path.

    Raises:
        CheckpointError: a write failed (e.g. the disk is full): nothing was published, the staging folder is removed
            and the earlier checkpoints are intact; the message says what happened and where.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
    staging = _hidden(final, _STAGING_SUFFIX)  # the same path on every process
    main = accelerator.is_main_process
    previous = [p.name for _, p in list_checkpoints(output_dir)] if main else []
    intact = (f"the earlier checkpoints ({', '.join(previous)}) are intact." if previous
              else "no earlier checkpoint exists.")

    def failed(error: BaseException) -> CheckpointError:
        if main:
            shutil.rmtree(staging, ignore_errors=True)  # frees the space the partial save took
        return CheckpointError(describe_write_error(error, what=final.name, where=staging, intact=intact))

    error: BaseException | None = None
    if main and staging.exists():
        _remove_tree(staging, f"delete the stale {staging.name}")
    accelerator.wait_for_everyone()
    try:
        if main:
            filesystem_step(f"accelerate.save_state into {staging.name}")
        accelerator.save_state(str(staging))
    except OSError as caught:
        error = caught
    _agree(accelerator, None if error is None else failed(error))
    if main:
        try:
            filesystem_step(f"write {TRAINING_STATE_FILE}")
            state.save(staging / TRAINING_STATE_FILE)
            filesystem_step(f"write {MANIFEST_FILE}")
            write_manifest(staging, state.global_step)  # last: from here on the folder is complete
            _publish(staging, final)
        except OSError as caught:
            error = failed(caught)
    _agree(accelerator, error)
    if main:
        rotate_checkpoints(output_dir, total_limit, keep=final)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: str | os.PathLike, *, require_rng_state: bool = True
) -> TrainingState:
    """Check ``path`` (main process), restore accelerate's state (model, optimizer, RNG) and our objects, and return
    the training state saved with it.

    Args:
        require_rng_state: ``False`` resumes even when the RNG states cannot be restored (with a loud warning: the run
            is then not bit-identical to an uninterrupted one).

    Raises:
        CheckpointError: the folder fails :func:`~.checkpoint_files.verify_checkpoint` or cannot be loaded; the
            message names the file and an older complete checkpoint to resume from.
    """
    path = Path(path)
    hint = _older_checkpoint_hint(path)
    error: BaseException | None = None
    warnings: list[str] = []
    if accelerator.is_main_process:
        try:
            warnings = verify_checkpoint(path, num_processes=accelerator.num_processes,
                                         require_rng_state=require_rng_state, hint=hint)
        except CheckpointError as caught:
            error = caught
    _agree(accelerator, error)
    for warning in warnings:
        logger.warning(f"WARNING: {warning}")
    try:
        accelerator.load_state(str(path))
    except CheckpointError as caught:
        raise CheckpointError(f"{caught} {hint}") from caught
    except Exception as caught:  # accelerate's and torch's own errors, e.g. a weight of the wrong shape
        raise CheckpointError(f"Cannot load {path} ({type(caught).__name__}: {caught}). {hint}") from caught
    try:
        state = TrainingState.load(path / TRAINING_STATE_FILE)
    except ValueError as caught:
        raise CheckpointError(f"{caught} {hint}") from caught
    step = checkpoint_step(path)
    if step is not None and state.global_step != step:
        raise CheckpointError(f"{path / TRAINING_STATE_FILE}: field 'global_step' is {state.global_step}, but the "
                              f"folder is {path.name}: it was renamed or its files swapped. {hint}")
    return state


def register_checkpoint_state(
    accelerator: Accelerator, *, lr_scheduler: Any, estimator: Any, ema: ExponentialMovingAverage | None
) -> None:
    """Make ``save_checkpoint``/``load_checkpoint`` (and ``accelerator.save_state``/``load_state``) carry the objects
    accelerate does not know about, as files of our own beside accelerate's.

    The LR scheduler (``lr_scheduler.json``), the entropy-rate estimator with its buffer and table
    (``entropy_estimator.safetensors``) and the EMA (``ema.safetensors``; under FSDP every rank keeps the shadows of
    its own shards, :func:`register_sharded_ema`) are written by accelerate's save-state hook and read by its
    load-state hook. ``register_for_checkpointing`` is not used: it pickles, and its loader unpickles with
    ``weights_only=False``. The load hook refuses a folder holding ``custom_checkpoint_*.pkl``.
    """
    sharded_ema = ema is not None and accelerator.distributed_type == DistributedType.FSDP

    def save_hook(models, weights, output_dir):
        if not accelerator.is_main_process:
            return
        output_dir = Path(output_dir)
        filesystem_step(f"write {LR_SCHEDULER_FILE}")
        save_lr_scheduler(lr_scheduler, output_dir / LR_SCHEDULER_FILE)
        filesystem_step(f"write {ESTIMATOR_FILE}")
        save_estimator(estimator, output_dir / ESTIMATOR_FILE)
        if ema is not None and not sharded_ema:
            filesystem_step(f"write {EMA_FILE}")
            save_ema(ema, output_dir / EMA_FILE)

    def load_hook(models, input_dir):
        input_dir = Path(input_dir)
        refuse_pickled_objects(input_dir)
        load_lr_scheduler(lr_scheduler, input_dir / LR_SCHEDULER_FILE)
        load_estimator(estimator, input_dir / ESTIMATOR_FILE)
        if ema is not None and not sharded_ema:
            load_ema(ema, input_dir / EMA_FILE)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    if sharded_ema:
        register_sharded_ema(accelerator, ema)


def register_sharded_ema(accelerator: Accelerator, ema: ExponentialMovingAverage) -> None:
    """FSDP: each rank saves and loads the EMA of its own parameter shards (``ema_rank{N}.safetensors``); a single
    file would keep only the main process's shards."""
    name = sharded_ema_file(accelerator.process_index)

    def save_hook(models, weights, output_dir):
        save_ema(ema, Path(output_dir) / name)

    def load_hook(models, input_dir):
        load_ema(ema, Path(input_dir) / name)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
