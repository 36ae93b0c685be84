"""What must never happen to a training run's checkpoints, and the kill matrix that shows it.

* A planted ``custom_checkpoint_*.pkl`` never runs code on resume (accelerate would unpickle it with
  ``weights_only=False``); the resume refuses and names it.
* A half-deleted checkpoint is never ``latest``; rotation never leaves one; start-up never deletes the last complete
  state (an interrupted save whose files were complete is finished instead).
* A training state with an invalid field (``global_step`` -5 or 1e6, ...) is an error naming the file and the field.
* Kill matrix: a run killed at every filesystem step of saving, publishing, rotating (and recovering) checkpoints
  resumes from ``latest`` and ends bit-identical to an uninterrupted run. The same driver checks the script's own
  refusals: a planted pickle, a deleted RNG file (and ``--resume_without_rng_state``).

The kill is injected, never timed: ``training/checkpoint_files.filesystem_step`` marks each step (write a file,
rename a folder, delete one) and ``os._exit(9)``s right before the k-th one when
``BITSTREAM_DIFFUSION_TEST_KILL_AT_FILESYSTEM_STEP=k``; a trace variable lists the steps of a run.

Speed: one driver subprocess imports torch, transformers, accelerate and the script once, then ``fork``s a child per
run (the parent never computes, so the children start clean); the model is tiny (1 block of width 32, 16-token
rows, 3 optimizer steps with a checkpoint after each and a limit of one, so every save after the first rotates). One
uninterrupted reference run serves every case.

Scenarios:

* rotation: a fresh run killed before each step of the save at step 2 (write our files, accelerate's files, the
  training state, the manifest; rename into place; retire and delete ``checkpoint-1``); resumed from ``latest``; and,
  where the kill left a hidden folder, a second kill at the first step of the resumed run's start-up recovery first;
* same step saved again: a run resumed from ``checkpoint-1`` next to an existing ``checkpoint-2``, killed before each
  step of the save that replaces ``checkpoint-2``; resumed from ``latest``.

After every kill each ``checkpoint-N`` folder is complete (a folder is complete under its final name or not there).

The first tests use only the names the checkpointing module has always had, so that they also run (and fail) against
the code before these guarantees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "examples" / "train_bitstream_diffusion" / "train_bitstream_diffusion.py"
KILL_ENV = "BITSTREAM_DIFFUSION_TEST_KILL_AT_FILESYSTEM_STEP"
TRACE_ENV = "BITSTREAM_DIFFUSION_TEST_TRACE_FILESYSTEM_STEPS"
KILLED = 9  # the exit status of os._exit(9)

# the smallest run that checkpoints and rotates: dropout on (the RNG states matter), 2 accumulated micro-batches a step
TINY_CONFIG = {
    "data_recipe": "lm1b",
    "dataset_name": "builtin:wiki_summaries",
    "max_train_documents": 40,
    "tokenizer_name_or_path": "packaged:bert-base-uncased",
    "num_tokens": 16,
    "validation_fraction": 0.05,
    "model_preset": "cobit-s-lm1b",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "dropout": 0.1,
    "entropy_warmup_steps": 1,
    "entropy_transition_steps": 1,
    "entropy_update_every": 1,
    "entropy_min_per_bin": 1,
    "entropy_num_bins": 8,
    "entropy_buffer_size": 64,
    "train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_train_steps": 3,
    "learning_rate": 1.0e-3,
    "lr_warmup_steps": 1,
    "ema_decay": 0.9,
    "mixed_precision": "no",
    "seed": 5,
    "report_to": "none",
    "logging_steps": 1,
    "checkpointing_steps": 1,
    "checkpoints_total_limit": 1,
    "validation_steps": 3,
    "validation_at_start": False,
    "max_validation_batches": 1,
    "num_validation_samples": 0,
}


# ----------------------------------------------------------------------------------------------------------------------
# Must never happen (in-process, a tiny model)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def accelerate_run():
    """A CPU Accelerator with a model, optimizer, LR schedule, estimator and EMA registered for checkpointing, one
    step trained; ``save(step)`` writes ``checkpoint-{step}``. The process state is reset afterwards."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    from bitstream_diffusion.training import EntropyRateEstimator, ExponentialMovingAverage, TrainingState
    from bitstream_diffusion.training.checkpointing import register_checkpoint_state, save_checkpoint

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=1, num_training_steps=10,
                              scheduler_specific_kwargs={"min_lr": 1e-6})
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=8)
    ema = ExponentialMovingAverage(model, decay=0.5)
    register_checkpoint_state(accelerator, lr_scheduler=scheduler, estimator=estimator, ema=ema)

    def train_step() -> None:
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        ema.update(model)
        estimator.update(torch.tensor([0.1, 1.0, 10.0]), torch.tensor([0.01, 0.2, 0.25]))

    def save(output_dir: Path, step: int, limit: int | None = None) -> Path:
        train_step()
        state = TrainingState(global_step=step, micro_batches=step, validation_history=[{"step": step, "loss": 0.5}])
        return save_checkpoint(accelerator, output_dir, state, limit)

    yield accelerator, save, model
    AcceleratorState._reset_state(reset_partial_state=True)


class _Payload:
    """Unpickling this creates a folder: what a planted pickle could do instead (any code at all)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("indices", [(0,), (0, 3)], ids=["swapped-in", "added"])
def test_a_planted_pickle_never_runs_on_resume_and_the_resume_refuses(accelerate_run, tmp_path, indices):
    from bitstream_diffusion.training.checkpointing import load_checkpoint

    accelerator, save, _ = accelerate_run
    checkpoint = save(tmp_path / "run", 1)
    marker = tmp_path / "PWNED"
    for index in indices:  # in place of one of accelerate's custom-object files, or one more beside them
        torch.save({"state": _Payload(marker)}, checkpoint / f"custom_checkpoint_{index}.pkl")
    with pytest.raises(Exception) as error:
        load_checkpoint(accelerator, checkpoint)
    assert not marker.exists(), "the planted pickle ran"
    names = ", ".join(f"custom_checkpoint_{index}.pkl" for index in indices)
    assert f"holds {names}: pickled Python objects" in str(error.value) and "arbitrary code" in str(error.value)
    assert "--resume_from_checkpoint" in str(error.value)


def test_a_poisoned_rng_file_never_runs_and_is_named(accelerate_run, tmp_path):
    from bitstream_diffusion.training.checkpointing import load_checkpoint

    accelerator, save, _ = accelerate_run
    save(tmp_path / "run", 1)
    checkpoint = save(tmp_path / "run", 2)
    marker = tmp_path / "PWNED"
    torch.save({"random_state": _Payload(marker)}, checkpoint / "random_states_0.pkl")
    with pytest.raises(Exception, match=r"random_states_0\.pkl.*bit-identical.*checkpoint-1"):
        load_checkpoint(accelerator, checkpoint)
    assert not marker.exists()


def test_a_half_deleted_checkpoint_is_never_latest(accelerate_run, tmp_path):
    from bitstream_diffusion.training.checkpointing import resolve_resume_checkpoint

    _, save, _ = accelerate_run
    output_dir = tmp_path / "run"
    save(output_dir, 1)
    newest = save(output_dir, 2)
    (newest / "model.safetensors").unlink()  # what a delete killed half-way (or a damaged disk) leaves
    assert resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-1"


def test_rotation_interrupted_while_deleting_leaves_no_half_checkpoint(accelerate_run, tmp_path, monkeypatch):
    from bitstream_diffusion.training import checkpointing

    _, save, _ = accelerate_run
    output_dir = tmp_path / "run"
    save(output_dir, 1)
    save(output_dir, 2)

    class Killed(BaseException):
        pass

    def killed_rmtree(path, *args, **kwargs):  # deletes the weights first, then the process "dies"
        (Path(path) / "model.safetensors").unlink(missing_ok=True)
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(Killed):
        checkpointing.rotate_checkpoints(output_dir, 1, keep=output_dir / "checkpoint-2")
    monkeypatch.undo()
    names = sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-"))
    for name in names:
        assert (output_dir / name / "model.safetensors").is_file(), f"{name} is half-deleted but still named so"
    assert checkpointing.resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-2"


def test_start_up_finishes_a_complete_interrupted_save_instead_of_deleting_it(accelerate_run, tmp_path):
    from bitstream_diffusion.training.checkpointing import remove_stale_staging, resolve_resume_checkpoint

    _, save, _ = accelerate_run
    output_dir = tmp_path / "run"
    only = save(output_dir, 1)
    os.replace(only, output_dir / ".checkpoint-1.tmp")  # killed after the last file, before the rename
    remove_stale_staging(output_dir)  # what the next run does at start-up
    assert resolve_resume_checkpoint("latest", output_dir) == output_dir / "checkpoint-1"
    assert not (output_dir / ".checkpoint-1.tmp").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"global_step": -5}, "'global_step' must be a non-negative integer, got -5"),
        ({"global_step": 1e6}, "'global_step' must be a non-negative integer, got 1000000.0"),
        ({"global_step": 1000000, "micro_batches": 1000000}, "'global_step' is 1000000, but the checkpoint was"),
        ({"micro_batches": "12"}, "'micro_batches' must be a non-negative integer, got '12'"),
        ({"batches_in_epoch": 99}, "'batches_in_epoch' \\(99\\) exceeds micro_batches"),
        ({"validation_history": [{"step": 7, "loss": 0.1}]}, "entry 0 has step 7 outside"),
        ({"validation_history": [{"step": 1, "loss": "low"}]}, "entry 0 has loss 'low', not a finite number"),
        ({"validation_history": [{"step": 1, "loss": 0.1, "vlb_bpd": "low"}]}, "metric 'vlb_bpd' = 'low', not a"),
    ],
)
def test_an_invalid_training_state_field_is_named_with_its_file(accelerate_run, tmp_path, fields, message):
    from bitstream_diffusion.training.checkpointing import load_checkpoint

    accelerator, save, _ = accelerate_run
    save(tmp_path / "run", 1)
    checkpoint = save(tmp_path / "run", 2)
    path = checkpoint / "training_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    with pytest.raises(Exception, match=message) as error:
        load_checkpoint(accelerator, checkpoint)
    assert "training_state.json" in str(error.value) and "--resume_from_checkpoint" in str(error.value)


# ----------------------------------------------------------------------------------------------------------------------
# The kill matrix (the training script)
# ----------------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------------
# The driver (runs in its own process: python tests/test_reliability_training.py WORKDIR)
# ----------------------------------------------------------------------------------------------------------------------


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_bitstream_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_forked(script, argv: list[str], log: Path, *, kill_at: int | None = None, trace: Path | None = None) -> int:
    """Run the script's command line in a forked child; its exit status (KILLED when the injected kill fired)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.pop(KILL_ENV, None)
            os.environ.pop(TRACE_ENV, None)
            if kill_at is not None:
                os.environ[KILL_ENV] = str(kill_at)
            if trace is not None:
                os.environ[TRACE_ENV] = str(trace)
            code = script.cli(argv)
        except BaseException:  # noqa: BLE001 - reported through the exit status and the log
            import traceback

            traceback.print_exc()
            code = 71
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _steps(trace: Path) -> list[tuple[int, str]]:
    if not trace.is_file():
        return []
    rows = [line.split("\t", 1) for line in trace.read_text().splitlines()]
    return [(int(number), text) for number, text in rows]


def _steps_of_save(trace: Path, step: int) -> list[int]:
    """The filesystem steps of the save at ``step``: from its accelerate.save_state to the next save's (excluded)."""
    steps = _steps(trace)
    prefix = f"accelerate.save_state into .checkpoint-{step}."
    start = next(i for i, (_, text) in enumerate(steps) if text.startswith(prefix))
    stop = next((i for i, (_, text) in enumerate(steps[start + 1 :], start + 1)
                 if text.startswith("accelerate.save_state")), len(steps))
    return [number for number, _ in steps[start:stop]]


def _drive(workdir: Path) -> dict:
    """Every run of the matrix; returns what the test checks (exit statuses, step descriptions, folders)."""
    script = _load_script()
    # everything the runs import, imported once here (the children are forked from this process); no computation
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    from accelerate.logging import get_logger  # noqa: F401
    from transformers import get_scheduler  # noqa: F401

    import bitstream_diffusion
    import bitstream_diffusion.training as training
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer, load_wiki_summaries
    from bitstream_diffusion.training import export, reporting  # noqa: F401
    from bitstream_diffusion.training.checkpointing import is_complete_checkpoint

    for name in ("BitstreamDiffusionPipeline", "EntropyRateScheduler", "SDTModel"):
        getattr(bitstream_diffusion, name)
    for name in training.__all__:
        getattr(training, name)
    load_bert_uncased_tokenizer()
    load_wiki_summaries()

    config = workdir / "tiny.yaml"
    common = ["--config", str(config), "--data_cache_dir", str(workdir / "rows")]
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    report: dict = {"cases": []}

    def run(name: str, output_dir: Path, *extra: str, kill_at: int | None = None, trace: Path | None = None) -> int:
        return _run_forked(script, [*common, "--output_dir", str(output_dir), *extra], logs / f"{name}.log",
                           kill_at=kill_at, trace=trace)

    def incomplete(output_dir: Path) -> list[str]:
        return sorted(p.name for p in output_dir.glob("checkpoint-*") if not is_complete_checkpoint(p))

    started = time.time()
    report["reference_status"] = run("reference", workdir / "reference", trace=workdir / "reference.trace")
    report["reference_seconds"] = round(time.time() - started, 2)
    reference_steps = dict(_steps(workdir / "reference.trace"))

    # rotation: a fresh run killed before each step of the save at step 2 (which retires and deletes checkpoint-1)
    for k in _steps_of_save(workdir / "reference.trace", 2):
        case = workdir / f"rotate-{k}"
        entry = {"scenario": "rotation", "kill_before": reference_steps[k], "dir": str(case)}
        entry["killed_status"] = run(f"rotate-{k}-killed", case, kill_at=k)
        entry["incomplete_after_kill"] = incomplete(case)
        entry["leftovers"] = sorted(p.name for p in case.glob(".checkpoint-*"))
        if entry["leftovers"]:  # kill the resumed run at its first start-up recovery step, then resume again
            entry["recovery_killed_status"] = run(f"rotate-{k}-recovery-killed", case, "--resume_from_checkpoint",
                                                  "latest", kill_at=1)
            entry["incomplete_after_recovery_kill"] = incomplete(case)
        entry["resumed_status"] = run(f"rotate-{k}-resumed", case, "--resume_from_checkpoint", "latest")
        report["cases"].append(entry)

    # the same step saved again: resume from checkpoint-1 next to a complete checkpoint-2, killed during its save
    base = workdir / "replace-base"  # an uninterrupted run without rotation, cut back to checkpoints 1 and 2
    report["replace_base_status"] = run("replace-base", base, "--checkpoints_total_limit", "10")
    report["replace_base_checkpoints"] = sorted(p.name for p in base.glob("checkpoint-*"))
    shutil.copytree(base, workdir / "replace-full")
    for leftover in ("checkpoint-3", "pipeline", "train_summary.json"):
        target = base / leftover
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    probe = workdir / "replace-probe"
    shutil.copytree(base, probe)
    report["replace_probe_status"] = run("replace-probe", probe, "--checkpoints_total_limit", "10",
                                         "--resume_from_checkpoint", "checkpoint-1", trace=workdir / "replace.trace")
    replace_steps = dict(_steps(workdir / "replace.trace"))
    for k in _steps_of_save(workdir / "replace.trace", 2):
        case = workdir / f"replace-{k}"
        shutil.copytree(base, case)
        entry = {"scenario": "same step saved again", "kill_before": replace_steps[k], "dir": str(case)}
        entry["killed_status"] = run(f"replace-{k}-killed", case, "--checkpoints_total_limit", "10",
                                     "--resume_from_checkpoint", "checkpoint-1", kill_at=k)
        entry["incomplete_after_kill"] = incomplete(case)
        entry["resumed_status"] = run(f"replace-{k}-resumed", case, "--checkpoints_total_limit", "10",
                                      "--resume_from_checkpoint", "latest")
        report["cases"].append(entry)

    # the script's refusals: a planted pickle (never run), a deleted RNG file (refused, or allowed with a warning)
    planted = workdir / "planted"
    shutil.copytree(base, planted)
    torch.save({"state": _Payload(workdir / "PWNED")}, planted / "checkpoint-2" / "custom_checkpoint_0.pkl")
    report["planted_status"] = run("planted", planted, "--resume_from_checkpoint", "latest")
    report["planted_ran"] = (workdir / "PWNED").exists()
    no_rng = workdir / "no-rng"
    shutil.copytree(base, no_rng)
    (no_rng / "checkpoint-2" / "random_states_0.pkl").unlink()
    report["no_rng_status"] = run("no-rng", no_rng, "--resume_from_checkpoint", "checkpoint-2")
    report["no_rng_allowed_status"] = run("no-rng-allowed", no_rng, "--resume_from_checkpoint", "checkpoint-2",
                                          "--resume_without_rng_state", "true")
    report["seconds"] = round(time.time() - started, 2)
    return report


if __name__ == "__main__":  # the driver
    workdir = Path(sys.argv[1])
    print("KILL-MATRIX " + json.dumps(_drive(workdir)), flush=True)
    sys.exit(0)


# ----------------------------------------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------------------------------------


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)


def _assert_same(one, two, where: str) -> None:
    if isinstance(one, torch.Tensor):
        assert torch.equal(one, two), where
    elif isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            _assert_same(one[key], two[key], f"{where}[{key}]")
    elif isinstance(one, (list, tuple)):
        assert len(one) == len(two), where
        for index, (x, y) in enumerate(zip(one, two, strict=True)):
            _assert_same(x, y, f"{where}[{index}]")
    else:
        assert one == two, where


def _assert_bit_identical(reference: Path, other: Path) -> None:
    for relative in ("checkpoint-3/model.safetensors", "checkpoint-3/ema.safetensors",
                     "checkpoint-3/entropy_estimator.safetensors", "checkpoint-3/optimizer.bin",
                     "pipeline/model/model.safetensors"):
        _assert_same(_tensors(reference / relative), _tensors(other / relative), f"{other.name}/{relative}")
    for relative in ("checkpoint-3/lr_scheduler.json", "checkpoint-3/training_state.json"):
        assert json.loads((reference / relative).read_text()) == json.loads((other / relative).read_text()), relative
    a, b = (json.loads((d / "train_summary.json").read_text()) for d in (reference, other))
    assert a["validation_history"] == b["validation_history"] and a["status"] == b["status"] == "completed"


@pytest.mark.slow
def test_kill_at_every_filesystem_step_of_save_and_rotation_then_resume_is_bit_identical(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG), encoding="utf-8")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", ACCELERATE_MIXED_PRECISION="no", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop(KILL_ENV, None)
    env.pop(TRACE_ENV, None)
    started = time.time()
    result = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=1800, check=False)
    seconds = time.time() - started
    line = next((x for x in result.stdout.splitlines() if x.startswith("KILL-MATRIX ")), None)
    assert result.returncode == 0 and line, (result.stdout + result.stderr)[-6000:]
    report = json.loads(line[len("KILL-MATRIX "):])

    def log(name: str) -> str:
        path = tmp_path / "logs" / f"{name}.log"
        return path.read_text()[-4000:] if path.is_file() else "(no log)"

    assert report["reference_status"] == 0, log("reference")
    reference = tmp_path / "reference"
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-3"]  # rotated down to the limit
    cases = report["cases"]
    print(f"\nkill matrix: {len(cases)} cases, driver {report['seconds']} s (reference run "
          f"{report['reference_seconds']} s), test {seconds:.1f} s")
    for case in cases:
        print(f"  {case['scenario']}: killed before '{case['kill_before']}' -> leftovers {case.get('leftovers', [])}")
    # every kind of step is covered: our files, accelerate's, the state, the manifest, renames, deletions
    rotation = [c["kill_before"] for c in cases if c["scenario"] == "rotation"]
    for expected in ("accelerate.save_state", "write lr_scheduler.json", "write entropy_estimator.safetensors",
                     "write ema.safetensors", "write training_state.json", "write checkpoint_manifest.json",
                     "rename .checkpoint-2.tmp to checkpoint-2", "rename checkpoint-1 to .checkpoint-1.deleting",
                     "delete .checkpoint-1.deleting"):
        assert any(step.startswith(expected) for step in rotation), (expected, rotation)
    replace = [c["kill_before"] for c in cases if c["scenario"] == "same step saved again"]
    assert report["replace_base_status"] == 0 and report["replace_base_checkpoints"] == [
        "checkpoint-1", "checkpoint-2", "checkpoint-3"], log("replace-base")
    _assert_bit_identical(reference, tmp_path / "replace-full")  # the limit changes nothing but the folders kept
    assert report["replace_probe_status"] == 0, log("replace-probe")
    assert any(s.startswith("rename the existing checkpoint-2 to .checkpoint-2.deleting") for s in replace), replace
    assert len(rotation) >= 9 and len(replace) >= 9
    _assert_bit_identical(reference, tmp_path / "replace-probe")

    assert report["planted_status"] == 1 and not report["planted_ran"], log("planted")
    assert "ERROR:" in log("planted") and "custom_checkpoint_0.pkl: pickled Python objects" in log("planted")
    assert report["no_rng_status"] == 1 and "random_states_0.pkl is missing" in log("no-rng")
    assert "--resume_without_rng_state true" in log("no-rng")
    assert report["no_rng_allowed_status"] == 0, log("no-rng-allowed")
    assert "not bit-identical" in log("no-rng-allowed") and "Resuming anyway" in log("no-rng-allowed")

    for case in cases:
        name = Path(case["dir"]).name
        assert case["killed_status"] == KILLED, (case, log(f"{name}-killed"))
        assert case["incomplete_after_kill"] == [], case  # a checkpoint-N is complete or not there
        if "recovery_killed_status" in case:
            assert case["recovery_killed_status"] == KILLED, (case, log(f"{name}-recovery-killed"))
            assert case["incomplete_after_recovery_kill"] == [], case
        assert case["resumed_status"] == 0, (case, log(f"{name}-resumed"))
        output_dir = Path(case["dir"])
        assert not list(output_dir.glob(".checkpoint-*")), case  # recovery and rotation left nothing behind
        _assert_bit_identical(reference, output_dir)
