"""The files of a training checkpoint that are ours, the manifest that marks a checkpoint complete, and the checks a
checkpoint passes before a run resumes from it.

A checkpoint folder is input a run trusts with its weights, so nothing in it may run code and nothing corrupt may be
taken silently:

* Our objects never go through pickle. accelerate's ``register_for_checkpointing`` would store them as
  ``custom_checkpoint_*.pkl`` and load them with ``weights_only=False``, which runs whatever code a planted file
  carries. Instead the LR schedule is JSON (``lr_scheduler.json``), the entropy-rate estimator and the EMA are
  safetensors (``entropy_estimator.safetensors``, ``ema.safetensors``; under FSDP ``ema_rank{N}.safetensors``, each
  rank's shards), and a folder holding any ``custom_checkpoint_*.pkl`` is refused (:func:`refuse_pickled_objects`).
  accelerate's own files load weights-only (model safetensors, optimizer, RNG states).
* ``checkpoint_manifest.json`` is written last: the size and SHA-256 of every file, fsynced first. A folder is a
  complete checkpoint when its manifest is there and the sizes match (:func:`is_complete`);
  :func:`verify_checkpoint` also checks every checksum, parses the JSON files, looks for NaN/inf in every
  safetensors file and reads the RNG states, and names the file that fails.
* The RNG states (``random_states_{rank}.pkl``): accelerate falls back silently to fresh random states when it cannot
  read one, and the resumed run is then no longer bit-identical (dropout draws from them). Here a missing, unreadable
  or altered RNG file is an error (:class:`RNGStateError`) unless the caller allows resuming without it, in which case
  :func:`verify_checkpoint` returns a warning for the caller to log.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..utils.atomic_io import write_bytes_atomic, write_json_atomic, write_text_atomic
from .training_state import TRAINING_STATE_FILE, TrainingState

__all__ = [
    "CUSTOM_PICKLE_GLOB",
    "EMA_FILE",
    "ESTIMATOR_FILE",
    "LR_SCHEDULER_FILE",
    "MANIFEST_FILE",
    "CheckpointError",
    "RNGStateError",
    "describe_write_error",
    "filesystem_step",
    "incompleteness",
    "is_complete",
    "load_ema",
    "load_estimator",
    "load_lr_scheduler",
    "read_manifest",
    "refuse_pickled_objects",
    "rng_state_file",
    "save_ema",
    "save_estimator",
    "save_lr_scheduler",
    "sharded_ema_file",
    "verify_checkpoint",
    "write_manifest",
]

MANIFEST_FILE = "checkpoint_manifest.json"
EMA_FILE = "ema.safetensors"
ESTIMATOR_FILE = "entropy_estimator.safetensors"
LR_SCHEDULER_FILE = "lr_scheduler.json"
CUSTOM_PICKLE_GLOB = "custom_checkpoint_*.pkl"
_MANIFEST_FORMAT = "bitstream-diffusion-training-checkpoint"
_MANIFEST_VERSION = 1
_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")

# Test hook of the kill matrix (tests/test_reliability_training.py): every filesystem step of saving, publishing,
# rotating and recovering checkpoints calls filesystem_step(); with the first variable set to k the process dies
# (os._exit, no clean-up) right before the k-th step, and with the second one each step is appended to that file.
KILL_AT_STEP_ENV = "BITSTREAM_DIFFUSION_TEST_KILL_AT_FILESYSTEM_STEP"
TRACE_STEPS_ENV = "BITSTREAM_DIFFUSION_TEST_TRACE_FILESYSTEM_STEPS"
_steps_done = 0


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or resumed from; the message names the file, the problem and what to do."""


class RNGStateError(CheckpointError):
    """A checkpoint's random states cannot be restored, so a resumed run would not be bit-identical."""


def filesystem_step(description: str) -> None:
    """Mark the start of one filesystem step of checkpointing (see ``KILL_AT_STEP_ENV``); a no-op otherwise."""
    global _steps_done
    _steps_done += 1
    trace = os.environ.get(TRACE_STEPS_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as handle:
            handle.write(f"{_steps_done}\t{description}\n")
    if os.environ.get(KILL_AT_STEP_ENV) == str(_steps_done):
        os._exit(9)


def rng_state_file(rank: int) -> str:
    """accelerate's RNG file of process ``rank``."""
    return f"random_states_{int(rank)}.pkl"


def sharded_ema_file(rank: int) -> str:
    """The EMA file of process ``rank`` under FSDP (each rank keeps the shadows of its own shards)."""
    return f"ema_rank{int(rank)}.safetensors"


# ----------------------------------------------------------------------------------------------------------------------
# Our objects: JSON and safetensors, never pickle
# ----------------------------------------------------------------------------------------------------------------------


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    write_bytes_atomic(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for a torn header or data
        raise CheckpointError(f"Cannot read {path} ({type(error).__name__}: {error}).") from error


def save_lr_scheduler(scheduler: Any, path: str | os.PathLike) -> None:
    """``scheduler.state_dict()`` as JSON (Python writes floats with all their digits: the values come back exact)."""
    state = scheduler.state_dict()
    try:
        text = json.dumps(state, indent=1)
    except TypeError as error:
        raise CheckpointError(
            f"The LR scheduler {type(scheduler).__name__} has a state JSON cannot hold ({error}); use one of the "
            "script's --lr_scheduler choices."
        ) from error
    write_text_atomic(path, text + "\n")


def load_lr_scheduler(scheduler: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"expected a JSON object, got {type(state).__name__}")
        scheduler.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"Cannot restore the LR schedule from {path} ({error}).") from error


def save_estimator(estimator: Any, path: str | os.PathLike) -> None:
    """The entropy-rate estimator: buffer and table tensors as safetensors, its counters as JSON metadata."""
    state = dict(estimator.state_dict())
    tensors = {"sigma": state.pop("sigma"), "metric": state.pop("metric")}
    tables = state.pop("tables")
    for name, tensor in (tables or {}).items():
        tensors[f"tables.{name}"] = tensor
    metadata = {"format": "entropy_rate_estimator", "state": json.dumps(state), "has_tables": json.dumps(bool(tables))}
    _save_safetensors(tensors, Path(path), metadata)


def load_estimator(estimator: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    tensors, metadata = _load_safetensors(path)
    try:
        state = json.loads(metadata["state"])
        state["sigma"], state["metric"] = tensors.pop("sigma"), tensors.pop("metric")
        tables = {key[len("tables."):]: value for key, value in tensors.items() if key.startswith("tables.")}
        state["tables"] = tables if json.loads(metadata["has_tables"]) else None
        estimator.load_state_dict(state)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"Cannot restore the entropy-rate estimator from {path} ({error}).") from error


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) tensor; the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def save_ema(ema: Any, path: str | os.PathLike) -> None:
    """The EMA shadows (this rank's shards under FSDP) as safetensors, the decay as metadata."""
    shadows = {name: _local(tensor) for name, tensor in ema.shadow.items()}
    _save_safetensors(shadows, Path(path), {"format": "ema", "decay": repr(float(ema.decay))})


def load_ema(ema: Any, path: str | os.PathLike) -> None:
    """Restore :func:`save_ema` into ``ema`` (every parameter's shadow must be in the file, with its shape)."""
    path = Path(path)
    tensors, metadata = _load_safetensors(path)
    missing, unexpected = sorted(set(ema.shadow) - set(tensors)), sorted(set(tensors) - set(ema.shadow))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model: missing EMA shadows {missing[:5]}, unexpected {unexpected[:5]} "
            f"({len(missing)} and {len(unexpected)} in all). Resume with the model settings of the run that wrote it."
        )
    for name, tensor in tensors.items():
        target = _local(ema.shadow[name])
        if target.shape != tensor.shape:
            raise CheckpointError(f"{path}: EMA shadow {name!r} has shape {tuple(tensor.shape)}, the model "
                                  f"{tuple(target.shape)}. Resume with the model settings of the run that wrote it.")
    try:
        ema.decay = float(metadata["decay"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path} lacks a valid EMA decay in its metadata ({error}).") from error
    with torch.no_grad():
        for name, tensor in tensors.items():
            _local(ema.shadow[name]).copy_(tensor)


def refuse_pickled_objects(folder: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming every ``custom_checkpoint_*.pkl`` in ``folder``: this script never writes
    them, and accelerate would unpickle them with ``weights_only=False`` (arbitrary code)."""
    pickled = sorted(p.name for p in Path(folder).glob(CUSTOM_PICKLE_GLOB))
    if pickled:
        raise CheckpointError(
            f"{folder} holds {', '.join(pickled)}: pickled Python objects that this script never writes (its "
            "checkpoints keep the LR schedule, the EMA and the entropy estimator as JSON and safetensors). Loading "
            "them could run arbitrary code, so the run refuses to resume from this folder. If you did not put them "
            "there, someone else did: resume from another checkpoint (--resume_from_checkpoint checkpoint-N), or "
            "delete these files if you trust the rest of the folder."
        )


# ----------------------------------------------------------------------------------------------------------------------
# The manifest: the completeness marker, written last
# ----------------------------------------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
        os.fsync(handle.fileno())  # the data is on disk before the manifest says the folder is complete
    return sha.hexdigest()


def _content_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: str | os.PathLike, global_step: int) -> Path:
    """Write ``checkpoint_manifest.json`` (every file's size and SHA-256, the files fsynced first): the last file of
    a checkpoint, so its presence means the folder is complete."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
             for p in _content_files(folder)}
    manifest = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "global_step": int(global_step),
                "files": files}
    return write_json_atomic(folder / MANIFEST_FILE, manifest)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``folder``, or ``None`` when it is absent or not a manifest of this format."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("global_step"), int):
        return None
    return manifest


def incompleteness(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint (no valid manifest; a listed file missing or of another size), or
    ``None`` when it is (cheap: sizes only, no checksums)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return f"it has no valid {MANIFEST_FILE}"
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        expected = entry.get("bytes") if isinstance(entry, dict) else None
        if path.stat().st_size != expected:
            return f"{name} has {path.stat().st_size} bytes, its manifest says {expected}"
    return None


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a manifest and every file it lists with the listed size (:func:`incompleteness`)."""
    return incompleteness(folder) is None


# ----------------------------------------------------------------------------------------------------------------------
# Verification before resuming
# ----------------------------------------------------------------------------------------------------------------------


def _check_json(path: Path, global_step: int) -> None:
    """Parse a JSON file of the checkpoint; the training state must also be valid and of the manifest's step."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}): the file is corrupt.") from error
    if path.name == TRAINING_STATE_FILE:
        try:
            state = TrainingState.from_dict(data, source=str(path))
        except ValueError as error:
            raise CheckpointError(str(error)) from error
        if state.global_step != global_step:
            raise CheckpointError(
                f"{path}: field 'global_step' is {state.global_step}, but the checkpoint was written at step "
                f"{global_step} (its {MANIFEST_FILE}): the file was edited or swapped."
            )


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise CheckpointError(
                        f"{path} holds NaN or infinite values (tensor {key!r}): these weights diverged before they "
                        "were saved, or the file is corrupt."
                    )
    except CheckpointError:
        raise
    except Exception as error:
        message = f"{path} is not a readable safetensors file ({type(error).__name__}: {error})."
        raise CheckpointError(message) from error


def _check_rng_file(path: Path) -> None:
    from accelerate.utils import load

    try:
        states = load(path)  # weights-only, with accelerate's allow-list of numpy types
    except Exception as error:
        # torch's message goes on about weights_only=False, which is exactly what must not be done with this file
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        raise RNGStateError(f"{path} cannot be read weights-only ({type(error).__name__}: {reason}).") from error
    if not isinstance(states, dict) or any(key not in states for key in _RNG_KEYS):
        raise RNGStateError(f"{path} is not an RNG state of accelerate (expected the keys {list(_RNG_KEYS)}).")


def verify_checkpoint(
    folder: str | os.PathLike,
    *,
    num_processes: int = 1,
    require_rng_state: bool = True,
    hint: str = "",
) -> list[str]:
    """Check that a run can resume from ``folder`` exactly, before anything is loaded.

    In order: no pickled objects (:func:`refuse_pickled_objects`); a manifest; then for each file it lists: present;
    a JSON file parses (the training state with every field checked, and of the manifest's step) and an RNG file (of
    each of the ``num_processes`` ranks) reads weights-only; its size; a safetensors file holds no NaN/inf; its
    checksum.

    Args:
        hint: appended to every error message (e.g. which older checkpoint to resume from instead).
        require_rng_state: ``False`` turns RNG problems into warnings (returned) instead of errors.

    Returns:
        the warnings (RNG problems when ``require_rng_state`` is ``False``).

    Raises:
        CheckpointError: the first problem, naming the file; :class:`RNGStateError` for an RNG file.
    """
    folder = Path(folder)
    suffix = f" {hint}" if hint else ""
    warnings: list[str] = []
    try:
        refuse_pickled_objects(folder)
    except CheckpointError as error:
        raise CheckpointError(f"{error}{suffix}") from None
    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(
            f"{folder} has no valid {MANIFEST_FILE}, the file a checkpoint gets last: a save was interrupted, or "
            f"the folder was written by an older version of this script.{suffix}"
        )
    files: dict[str, Any] = manifest["files"]
    rng_wanted = {rng_state_file(rank) for rank in range(max(1, int(num_processes)))}

    def rng_problem(message: str) -> None:
        text = (f"Cannot restore the random states: {message} Without them the resumed run is not bit-identical to "
                "an uninterrupted one (dropout draws from them).")
        if require_rng_state:
            raise RNGStateError(f"{text}{suffix} To resume anyway, pass --resume_without_rng_state true.")
        warnings.append(f"{text} Resuming anyway (--resume_without_rng_state).")

    for name in sorted(rng_wanted - set(files)):
        if not (folder / name).is_file():
            rng_problem(f"{folder / name} is missing (the checkpoint was written by fewer processes, or the file was "
                        "deleted).")
        else:
            rng_problem(f"{folder / name} is not listed in {folder / MANIFEST_FILE}: it was added afterwards.")
    for name, entry in sorted(files.items()):
        path = folder / name
        is_rng = name in rng_wanted or (name.startswith("random_states_") and name.endswith(".pkl"))
        try:
            if not path.is_file():
                raise CheckpointError(f"{path} is missing (deleted after the checkpoint was written).")
            # JSON and RNG contents first: "field x is -5" or "not loadable weights-only" say more than a size
            if path.suffix == ".json":
                _check_json(path, manifest["global_step"])
            elif is_rng:
                _check_rng_file(path)
            size = path.stat().st_size
            if size != entry.get("bytes"):
                raise CheckpointError(f"{path} is truncated or was replaced: {size} bytes, the manifest says "
                                      f"{entry.get('bytes')}.")
            if path.suffix == ".safetensors":
                _check_safetensors(path)
            if _digest(path) != entry.get("sha256"):
                raise CheckpointError(f"{path} changed after the checkpoint was written (its SHA-256 differs from "
                                      "the manifest's): the file is corrupt.")
        except CheckpointError as error:
            if is_rng:
                if name in rng_wanted:
                    rng_problem(str(error))
                continue
            raise CheckpointError(f"{error}{suffix}") from error
    return warnings


def describe_write_error(error: BaseException, *, what: str, where: Path, intact: str) -> str:
    """The message for a failed checkpoint write: a full disk is named as such, with the folder to free space in."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return (f"The disk is full: writing {what} into {where} failed ({error}). Nothing was published; {intact} "
                f"Free space on the filesystem of {where.parent} (or lower --checkpoints_total_limit), then resume "
                "with --resume_from_checkpoint latest.")
    return (f"Writing {what} into {where} failed ({type(error).__name__}: {error}). Nothing was published; {intact} "
            "Fix the cause, then resume with --resume_from_checkpoint latest.")

