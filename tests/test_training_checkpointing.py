"""Checkpoint folders and the training state: what counts as a checkpoint, resolving ``latest``, rotation, recovery
after a kill, a save/load round trip through accelerate, resuming the batch order mid-epoch; and the clear errors for
a damaged checkpoint, lost RNG states and a full disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bitstream_diffusion.training import EntropyRateEstimator, ExponentialMovingAverage, TrainingState
from bitstream_diffusion.training.checkpoint_files import CheckpointError, RNGStateError, write_manifest
from bitstream_diffusion.training.checkpointing import (
    TRAINING_STATE_FILE,
    is_complete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    recover_checkpoints,
    register_checkpoint_state,
    remove_stale_staging,
    resolve_resume_checkpoint,
    resumable_batches,
    rotate_checkpoints,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own (CPU) Accelerator; leave no process state behind for other tests."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _accelerator(seed: int = 0):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed))


def _fake_checkpoint(output_dir: Path, step: int, complete: bool = True) -> Path:
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    TrainingState(global_step=step, micro_batches=step).save(path / TRAINING_STATE_FILE)
    if complete:
        write_manifest(path, step)
    return path


def test_training_state_round_trip_and_clear_errors(tmp_path):
    state = TrainingState(global_step=7, epoch=1, batches_in_epoch=3, micro_batches=14, tokens_seen=448,
                          validation_history=[{"step": 5, "loss": 0.25, "vlb_bpd": 0.74, "vlb_rows": 256}])
    state.save(tmp_path / "state.json")
    assert json.loads((tmp_path / "state.json").read_text()) == state.to_dict()
    assert TrainingState.load(tmp_path / "state.json") == state

    (tmp_path / "extra.json").write_text(json.dumps({**state.to_dict(), "lr": 1.0}))
    with pytest.raises(ValueError, match=r"extra\.json is not a training state.*unknown fields \['lr'\]"):
        TrainingState.load(tmp_path / "extra.json")
    (tmp_path / "short.json").write_text(json.dumps({"global_step": 3}))
    with pytest.raises(ValueError, match=r"missing fields \['batches_in_epoch', 'epoch'"):
        TrainingState.load(tmp_path / "short.json")
    (tmp_path / "torn.json").write_text('{"global_step": 3,')
    with pytest.raises(ValueError, match=r"Cannot read the training state .*torn\.json.*--resume_from_checkpoint"):
        TrainingState.load(tmp_path / "torn.json")


def test_only_complete_checkpoints_count_and_latest_is_the_newest(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == [] and resolve_resume_checkpoint("latest", tmp_path) is None
    for step in (5, 20, 10):
        _fake_checkpoint(tmp_path, step)
    _fake_checkpoint(tmp_path, 30, complete=False)  # no manifest: not a checkpoint
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / ".checkpoint-40.tmp").mkdir()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [5, 10, 20]
    assert resolve_resume_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-20"
    assert resolve_resume_checkpoint("checkpoint-10", tmp_path) == tmp_path / "checkpoint-10"  # relative to output
    assert resolve_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="checkpoint-31 not found"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-31"), tmp_path)


def test_rotation_keeps_the_newest_and_stale_staging_is_removed(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, None, keep=tmp_path / "checkpoint-4")
    assert len(list_checkpoints(tmp_path)) == 4
    rotate_checkpoints(tmp_path, 2, keep=tmp_path / "checkpoint-4")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]
    (tmp_path / ".checkpoint-5.tmp").mkdir()
    (tmp_path / ".pipeline.exporting-x").mkdir()
    remove_stale_staging(tmp_path)
    assert not (tmp_path / ".checkpoint-5.tmp").exists() and (tmp_path / ".pipeline.exporting-x").exists()


def test_save_and_load_checkpoint_restore_every_registered_object(tmp_path):
    accelerator = _accelerator()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=8)
    ema = ExponentialMovingAverage(model, decay=0.5)
    register_checkpoint_state(accelerator, lr_scheduler=scheduler, estimator=estimator, ema=ema)

    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    ema.update(model)
    estimator.update(torch.tensor([0.1, 1.0, 10.0]), torch.tensor([0.01, 0.2, 0.25]))
    state = TrainingState(global_step=1, micro_batches=1, validation_history=[{"step": 1, "loss": 0.5}])
    saved = {"weight": model.weight.detach().clone(), "ema": ema.shadow["weight"].clone(),
             "lr": scheduler.get_last_lr(), "buffer": estimator.buffer()[0].clone()}
    path = save_checkpoint(accelerator, tmp_path, state, total_limit=None)
    assert path == tmp_path / "checkpoint-1" and not list(tmp_path.glob(".checkpoint-*"))
    assert not list(path.glob("*.pkl")) or sorted(p.name for p in path.glob("*.pkl")) == ["random_states_0.pkl"]
    for name in ("lr_scheduler.json", "entropy_estimator.safetensors", "ema.safetensors", "checkpoint_manifest.json"):
        assert (path / name).is_file(), name

    with torch.no_grad():
        model.weight.zero_()
    ema.shadow["weight"].zero_()
    scheduler.step()
    estimator.update(torch.tensor([2.0]), torch.tensor([0.1]))
    resumed = load_checkpoint(accelerator, resolve_resume_checkpoint("latest", tmp_path))
    assert resumed == state
    assert torch.equal(model.weight, saved["weight"]) and torch.equal(ema.shadow["weight"], saved["ema"])
    assert scheduler.get_last_lr() == saved["lr"] and torch.equal(estimator.buffer()[0], saved["buffer"])


def test_resumable_batches_continue_mid_epoch_exactly(tmp_path):
    accelerator = _accelerator(seed=3)
    loader = accelerator.prepare(DataLoader(torch.arange(20), batch_size=3, shuffle=True, drop_last=True,
                                            generator=torch.Generator().manual_seed(3)))

    def run(state: TrainingState, max_steps: int) -> list[list[int]]:
        seen = []
        for batch in resumable_batches(accelerator, loader, state, max_steps):
            seen.append(batch.tolist())
            state.batches_in_epoch += 1
            state.global_step += 1
        return seen

    full = run(TrainingState(), 14)  # 6 batches per epoch: epochs 0, 1 and two batches of epoch 2
    assert len(full) == 14 and full[:6] != full[6:12]  # each epoch is shuffled anew
    assert all(len(set(sum(epoch, []))) == 18 for epoch in (full[:6], full[6:12]))  # 18 distinct of 20 rows
    paused = TrainingState()
    first = run(paused, 8)
    assert paused.epoch == 1 and paused.batches_in_epoch == 2
    assert first + run(TrainingState(**paused.to_dict()), 14) == full
    assert run(TrainingState(global_step=14), 14) == []  # a finished run yields nothing


# ----------------------------------------------------------------------------------------------------------------------
# Resuming from a damaged checkpoint, losing the RNG states, a full disk: clear errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_checkpoints(tmp_path):
    """``checkpoint-1`` and ``checkpoint-2`` of a tiny model (every object registered) in ``tmp_path / "run"``."""
    from transformers import get_scheduler

    accelerator = _accelerator()
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=8)
    ema = ExponentialMovingAverage(model, decay=0.5)
    register_checkpoint_state(accelerator, lr_scheduler=scheduler, estimator=estimator, ema=ema)
    output_dir = tmp_path / "run"
    for step in (1, 2):
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        ema.update(model)
        estimator.update(torch.tensor([0.1, 1.0, 10.0]), torch.tensor([0.01, 0.2, 0.25]))
        save_checkpoint(accelerator, output_dir, TrainingState(global_step=step, micro_batches=step), None)
    return accelerator, output_dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _nan_weights(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(path), metadata=metadata)  # the same size: only the values say what is wrong


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("model.safetensors", _truncate, "is truncated or was replaced"),
        ("model.safetensors", _nan_weights, "holds NaN or infinite values"),
        ("ema.safetensors", _nan_weights, "holds NaN or infinite values"),
        ("model.safetensors", lambda p: _flip_byte(p, 4), "is not a readable safetensors file"),
        ("optimizer.bin", _flip_byte, "changed after the checkpoint was written"),
        ("optimizer.bin", Path.unlink, "is missing"),
        ("lr_scheduler.json", lambda p: p.write_text("{"), "is not valid JSON"),
        ("training_state.json", lambda p: p.write_text('{"global_step": 2,'), "is not valid JSON"),
        ("entropy_estimator.safetensors", _truncate, "is truncated or was replaced"),
    ],
    ids=["truncated-weights", "nan-weights", "nan-ema", "torn-header", "flipped-byte", "deleted", "bad-json",
         "torn-state", "truncated-estimator"],
)
def test_a_damaged_latest_checkpoint_names_the_file_and_an_older_one(two_checkpoints, caplog, file, damage, problem):
    accelerator, output_dir = two_checkpoints
    damaged = output_dir / "checkpoint-2"
    damage(damaged / file)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(accelerator, damaged)
    message = str(error.value)
    assert str(damaged / file) in message and problem in message, message
    assert "--resume_from_checkpoint checkpoint-1" in message, message
    # "latest": a folder with a missing or cut file is not complete, so the newest complete one is taken, loudly;
    # damage that keeps the sizes is found when loading (above)
    with caplog.at_level("WARNING"):
        latest = resolve_resume_checkpoint("latest", output_dir)
    if latest == output_dir / "checkpoint-1":
        assert f"{damaged} is not a complete checkpoint ({file}" in caplog.text and "skipped" in caplog.text
    else:
        assert latest == damaged
    assert load_checkpoint(accelerator, output_dir / "checkpoint-1").global_step == 1  # the older one is fine


def test_lost_or_unreadable_rng_states_refuse_unless_allowed(two_checkpoints, caplog):
    accelerator, output_dir = two_checkpoints
    checkpoint = output_dir / "checkpoint-2"
    (checkpoint / "random_states_0.pkl").unlink()
    with pytest.raises(RNGStateError) as error:
        load_checkpoint(accelerator, checkpoint)
    message = str(error.value)
    assert "random_states_0.pkl" in message and "is missing" in message and "not bit-identical" in message
    assert "--resume_without_rng_state true" in message and "checkpoint-1" in message
    with caplog.at_level("WARNING"):
        assert load_checkpoint(accelerator, checkpoint, require_rng_state=False).global_step == 2
    assert "not bit-identical" in caplog.text and "Resuming anyway" in caplog.text

    (checkpoint / "random_states_0.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(RNGStateError, match=r"random_states_0\.pkl cannot be read weights-only"):
        load_checkpoint(accelerator, checkpoint)


@pytest.mark.parametrize("where", ["accelerate", "manifest"])
def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones_and_says_where(two_checkpoints, monkeypatch, where):
    import errno

    import accelerate.checkpointing

    from bitstream_diffusion.training import checkpoint_files

    accelerator, output_dir = two_checkpoints

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "accelerate":  # accelerate's torch.save of the optimizer state
        monkeypatch.setattr(accelerate.checkpointing, "save", disk_full)
    else:  # our last file
        monkeypatch.setattr(checkpoint_files, "write_json_atomic", disk_full)
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(accelerator, output_dir, TrainingState(global_step=3, micro_batches=3), 1)
    monkeypatch.undo()
    message = str(error.value)
    assert message.startswith("The disk is full") and str(output_dir / ".checkpoint-3.tmp") in message
    assert "checkpoint-1, checkpoint-2" in message and f"Free space on the filesystem of {output_dir}" in message
    assert [step for step, _ in list_checkpoints(output_dir)] == [1, 2]  # nothing published, nothing rotated
    assert not list(output_dir.glob(".checkpoint-*"))  # the partial save is gone (it held the space)
    assert load_checkpoint(accelerator, output_dir / "checkpoint-2").global_step == 2


def test_recovery_finishes_complete_saves_and_removes_the_rest(two_checkpoints):
    _, output_dir = two_checkpoints
    os.replace(output_dir / "checkpoint-2", output_dir / ".checkpoint-2.tmp")  # killed before the rename
    shutil.copytree(output_dir / "checkpoint-1", output_dir / ".checkpoint-3.tmp")
    (output_dir / ".checkpoint-3.tmp" / "checkpoint_manifest.json").unlink()  # killed before the manifest
    shutil.copytree(output_dir / "checkpoint-1", output_dir / ".checkpoint-0.deleting")  # killed while rotating
    notes = recover_checkpoints(output_dir)
    assert [step for step, _ in list_checkpoints(output_dir)] == [1, 2]
    assert not list(output_dir.glob(".checkpoint-*"))
    assert any("finished the interrupted save of checkpoint-2" in note for note in notes)
    assert any("removed .checkpoint-3.tmp" in note for note in notes)

    # a checkpoint being deleted that is the newest complete state gets its name back
    os.replace(output_dir / "checkpoint-2", output_dir / ".checkpoint-2.deleting")
    shutil.rmtree(output_dir / "checkpoint-1")
    assert any("restored checkpoint-2" in note for note in recover_checkpoints(output_dir))
    assert resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-2"


def test_a_checkpoint_is_complete_only_with_its_manifest_and_every_listed_file(two_checkpoints):
    _, output_dir = two_checkpoints
    checkpoint = output_dir / "checkpoint-2"
    manifest = json.loads((checkpoint / "checkpoint_manifest.json").read_text())
    assert manifest["global_step"] == 2 and set(manifest["files"]) == {
        "model.safetensors", "optimizer.bin", "random_states_0.pkl", "lr_scheduler.json",
        "entropy_estimator.safetensors", "ema.safetensors", "training_state.json"}
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # nothing of ours is pickled
    assert is_complete_checkpoint(checkpoint)
    _truncate(checkpoint / "optimizer.bin")
    assert not is_complete_checkpoint(checkpoint)
    assert resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-1"
    shutil.rmtree(output_dir / "checkpoint-1")
    (checkpoint / "checkpoint_manifest.json").unlink()
    with pytest.raises(CheckpointError, match="holds checkpoint-2 but no complete checkpoint .checkpoint-2: it has no"):
        resolve_resume_checkpoint("latest", output_dir)


def test_a_training_state_must_fit_the_run_that_resumes_it():
    state = TrainingState(global_step=20, epoch=1, batches_in_epoch=5, micro_batches=40)
    state.check_fits_run(max_train_steps=20, batches_per_epoch=30, checkpoint_step=20, source="s.json")
    with pytest.raises(ValueError, match=r"s\.json: field 'global_step' is 20, beyond --max_train_steps 10"):
        state.check_fits_run(max_train_steps=10, batches_per_epoch=30, checkpoint_step=20, source="s.json")
    with pytest.raises(ValueError, match="'global_step' is 20 but the folder is checkpoint-30"):
        state.check_fits_run(max_train_steps=40, batches_per_epoch=30, checkpoint_step=30, source="s.json")
    with pytest.raises(ValueError, match="'batches_in_epoch' is 5, but an epoch of this run has 4 batches"):
        state.check_fits_run(max_train_steps=40, batches_per_epoch=4, checkpoint_step=None, source="s.json")


def test_stopping_a_validation_early_releases_accelerates_loader():
    """A validation capped at `max_batches` must end its loader's iteration: a prepared loader left mid-way stays
    accelerate's active loader, whose end-of-data flag then drives the training loop's gradient synchronisation."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from bitstream_diffusion.training.objective import first_batches

    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(torch.arange(10), batch_size=2))
    seen = [int(batch[0]) for _, batch in first_batches(loader, 2)]
    assert seen == [0, 2]
    assert accelerator.gradient_state.active_dataloader is None
    assert [int(batch[0]) for _, batch in first_batches(loader, None)] == [0, 2, 4, 6, 8]
