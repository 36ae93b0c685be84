"""Checkpoint folders and the training state: what counts as a checkpoint, resolving ``latest``, rotation, stale
staging folders, a save/load round trip through accelerate, and resuming the batch order mid-epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bitstream_diffusion.training import EntropyRateEstimator, ExponentialMovingAverage, TrainingState
from bitstream_diffusion.training.checkpoint_files import write_manifest
from bitstream_diffusion.training.checkpointing import (
    TRAINING_STATE_FILE,
    list_checkpoints,
    load_checkpoint,
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
                          validation_history=[{"step": 5, "loss": 0.25}])
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
