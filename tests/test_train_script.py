"""examples/train_bitstream_diffusion/train_bitstream_diffusion.py on real text (the Wikipedia summaries), on CPU.

* configs: the paper's protocol in the shipped YAML files, CLI over config, unknown keys and bad values;
* (a) a tiny model trained a few hundred steps: its EMA validation loss falls well below the untrained model's;
* (d) the exported folder loads with ``BitstreamDiffusionPipeline.from_pretrained`` and generates; it carries the EMA
  weights and the learned entropy table; checkpoints rotate; tensorboard gets losses and text samples;
* (b) a run killed with SIGKILL and resumed from ``latest`` ends bit-identical to an uninterrupted run;
* NaN loss: a clear stop, the last good checkpoint kept, nothing exported;
* (c) two processes (gloo on CPU): the entropy estimator holds every rank's samples.

Every training run is a subprocess (an ``Accelerator``'s settings are fixed once per process).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO_ROOT / "examples" / "train_bitstream_diffusion"
SCRIPT = EXAMPLE_DIR / "train_bitstream_diffusion.py"
CONFIGS = EXAMPLE_DIR / "configs"

# EMA validation loss after TINY_STEPS steps must fall below this fraction of the untrained model's (measured: ~0.78)
LOSS_RATIO_THRESHOLD = 0.88
TINY_STEPS = 300

# A small corpus and model for the resume, NaN and multi-process runs: 60 summaries give 360 training rows of 16
# tokens, i.e. 45 batches of 8 per epoch and, with 2 accumulation steps, 23 optimizer steps per epoch (the last one
# from a single batch), so 40 steps cross an epoch boundary; dropout is on, the entropy table is estimated from step 5
# and used from step 10, validation (which also feeds the estimator) runs every 15 steps.
MINI_CONFIG = {
    "data_recipe": "lm1b",
    "dataset_name": "builtin:wiki_summaries",
    "max_train_documents": 60,
    "tokenizer_name_or_path": "packaged:bert-base-uncased",
    "num_tokens": 16,
    "validation_fraction": 0.02,
    "model_preset": "cobit-s-lm1b",
    "hidden_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "dropout": 0.1,
    "entropy_warmup_steps": 10,
    "entropy_transition_steps": 10,
    "entropy_update_every": 5,
    "entropy_min_per_bin": 1,
    "entropy_buffer_size": 500,
    "train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "max_train_steps": 40,
    "learning_rate": 1.0e-3,
    "lr_warmup_steps": 5,
    "ema_decay": 0.9,
    "mixed_precision": "no",
    "seed": 3,
    "report_to": "none",
    "logging_steps": 5,
    "checkpointing_steps": 10,
    "validation_steps": 15,
    "max_validation_batches": 2,
    "num_validation_samples": 1,
    "validation_inference_steps": 8,
}


def load_script():
    spec = importlib.util.spec_from_file_location("train_bitstream_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    return load_script()


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prepared")


@pytest.fixture(scope="module")
def mini_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mini") / "mini.yaml"
    path.write_text(yaml.safe_dump(MINI_CONFIG), encoding="utf-8")
    return path


def _env(threads: int | None = None, **extra: str) -> dict[str, str]:
    # ACCELERATE_MIXED_PRECISION: the machine's accelerate config file must not change the runs' precision
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", ACCELERATE_MIXED_PRECISION="no",
               **extra)
    if threads is not None:  # runs side by side: one thread each, or OpenMP spin-waits stall both
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_script(*args: str, threads: int | None = None, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=_env(threads, **env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _summary(output_dir: Path) -> dict:
    return json.loads((output_dir / "train_summary.json").read_text())


# ----------------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------------


def test_config_files_hold_the_paper_protocol(train_script, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # accelerate's settings would win over the YAML
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    paper = {
        "adam_beta1": 0.9, "adam_beta2": 0.99, "adam_weight_decay": 0.01, "max_grad_norm": 1.0, "lr_min": 1e-6,
        "ema_decay": 0.9999, "use_ema": True, "mixed_precision": "bf16", "lr_scheduler": "warmup_cosine",
        "p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.002, "sigma_max": 80.0, "self_conditioning_prob": 0.5,
        "loss_type": "binary_sm", "loss_weighting": "edm", "entropy_num_bins": 128, "entropy_min_per_bin": 100,
        "entropy_buffer_size": 800_000, "entropy_update_every": 2000, "entropy_warmup_steps": 40_000,
        "entropy_transition_steps": 10_000, "entropy_regularizer_c": 0.1, "entropy_regularizer_n": 3.0,
        "entropy_target": "sqrt-rate", "max_train_steps": 1_000_000,
    }  # fmt: skip
    specific = {
        "cobit-s-lm1b": dict(data_recipe="lm1b", model_preset="cobit-s-lm1b", num_tokens=128, learning_rate=3e-4,
                             lr_warmup_steps=2500, train_batch_size=256, validation_fraction=0.005),
        "cobit-s-owt": dict(data_recipe="owt", model_preset="cobit-s-owt", num_tokens=1024, learning_rate=3e-4,
                            lr_warmup_steps=2500, train_batch_size=128, validation_split="train[-100000:]",
                            dataset_split="train[:-100000]"),
        "cobit-m-owt": dict(data_recipe="owt", model_preset="cobit-m-owt", num_tokens=1024, learning_rate=2e-4,
                            lr_warmup_steps=5000, train_batch_size=64, checkpointing_steps=2000),
    }
    for name, expected in specific.items():
        args = train_script.parse_args(["--config", str(CONFIGS / f"{name}.yaml")])
        for key, value in {**paper, **expected}.items():
            assert getattr(args, key) == value, (name, key)
    tiny = train_script.parse_args(["--config", str(CONFIGS / "tiny-wiki.yaml")])
    assert tiny.dataset_name == "builtin:wiki_summaries" and tiny.tokenizer_name_or_path.startswith("packaged:")
    assert tiny.entropy_warmup_steps + tiny.entropy_transition_steps < tiny.max_train_steps  # the table gets used


def test_cli_flags_override_the_config_file_and_no_arguments_is_the_quickstart(train_script):
    args = train_script.parse_args(["--config", str(CONFIGS / "cobit-s-lm1b.yaml"), "--learning_rate", "1e-4",
                                    "--use_ema", "false", "--train_files", "a.txt", "--dataset_name", "x"][:6])
    assert args.learning_rate == 1e-4 and args.use_ema is False and args.max_train_steps == 1_000_000
    assert isinstance(args.learning_rate, float) and isinstance(args.lr_min, float)  # YAML's "1.0e-6" is a float
    quickstart = train_script.parse_args([])
    assert Path(quickstart.config) == CONFIGS / "tiny-wiki.yaml" and quickstart.dataset_name == "builtin:wiki_summaries"
    assert train_script.parse_args(["--max_train_steps", "5"]).max_train_steps == 5  # still the quickstart config


def test_unknown_config_key_lists_the_valid_keys(train_script, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: builtin:wiki_summaries\nlearning_rte: 0.1\nmax_train_steps: 3\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        train_script.parse_args(["--config", str(bad)])
    message = str(error.value)
    assert "'learning_rte' (did you mean 'learning_rate'?)" in message and "Valid keys are" in message
    assert "checkpoints_total_limit" in message and "entropy_warmup_steps" in message
    bad.write_text("dataset_name: builtin:wiki_summaries\nmixed_precision: fp8\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"mixed_precision='fp8' is not one of \['no', 'fp16', 'bf16'\]"):
        train_script.parse_args(["--config", str(bad)])
    bad.write_text("dataset_name: builtin:wiki_summaries\nmax_train_steps: many\n", encoding="utf-8")
    with pytest.raises(ValueError, match="max_train_steps='many' is not a valid value"):
        train_script.parse_args(["--config", str(bad)])
    with pytest.raises(FileNotFoundError, match="Config file"):
        train_script.parse_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="No training data"):
        train_script.parse_args(["--config", "none", "--max_train_steps", "3"])


def test_mixed_precision_precedence_flag_then_accelerate_then_config(train_script, tmp_path, monkeypatch):
    """The script flag on the command line wins; then what `accelerate launch` passes on (its flag or config file,
    ACCELERATE_MIXED_PRECISION) or accelerate's default config file; then the YAML; and the run says which."""
    lm1b = ["--config", str(CONFIGS / "cobit-s-lm1b.yaml")]  # pins mixed_precision: bf16
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no accelerate config file
    args = train_script.parse_args(lm1b)
    assert args.mixed_precision == "bf16" and "cobit-s-lm1b.yaml" in args.mixed_precision_source

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch --mixed_precision fp16
    args = train_script.parse_args(lm1b)
    assert args.mixed_precision == "fp16" and "ACCELERATE_MIXED_PRECISION=fp16" in args.mixed_precision_source
    args = train_script.parse_args([*lm1b, "--mixed_precision", "no"])
    assert args.mixed_precision == "no" and args.mixed_precision_source == "the command line (--mixed_precision)"

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    accelerate_config = tmp_path / "hf" / "accelerate" / "default_config.yaml"  # what `accelerate config` writes
    accelerate_config.parent.mkdir(parents=True)
    accelerate_config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: fp16\n", encoding="utf-8")
    args = train_script.parse_args(lm1b)
    assert args.mixed_precision == "fp16" and str(accelerate_config) in args.mixed_precision_source
    assert train_script.parse_args([*lm1b, "--mixed_precision", "bf16"]).mixed_precision == "bf16"
    accelerate_config.unlink()
    quickstart = train_script.parse_args(["--config", "none", "--dataset_name", "x", "--max_train_steps", "1"])
    assert quickstart.mixed_precision == "no" and quickstart.mixed_precision_source.startswith("the default")


def test_help_answers_without_loading_torch_and_every_flag_is_explained(train_script):
    started = time.time()
    result = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), "--help"], env=_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    seconds = time.time() - started
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    heavy = imported & {"torch", "transformers", "accelerate", "diffusers", "datasets", "numpy", "safetensors"}
    assert not heavy, f"--help imported {sorted(heavy)}"
    assert result.returncode == 0 and "--resume_without_rng_state" in result.stdout
    print(f"--help answered in {seconds:.2f} s")
    parser = train_script.build_parser()
    missing = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert missing == [], f"flags without help text: {missing}"


def _fake_accelerator():
    return SimpleNamespace(main_process_first=nullcontext, is_local_main_process=False, num_processes=1)


def test_data_errors_surface_before_training(train_script, data_cache, tmp_path):
    base = ["--config", str(CONFIGS / "tiny-wiki.yaml"), "--data_cache_dir", str(data_cache)]
    args = train_script.parse_args([*base, "--bits_per_token", "12"])
    with pytest.raises(ValueError, match=r"too wide for --bits_per_token 12.*needs ceil\(log2\(30522\)\) = 15 bits"):
        train_script.build_data(args, _fake_accelerator())
    args = train_script.parse_args(["--config", "none", "--train_files", str(tmp_path / "missing.txt"),
                                    "--max_train_steps", "3", "--tokenizer_name_or_path", "packaged:bert-base-uncased"])
    with pytest.raises(FileNotFoundError, match="No data file matches"):
        train_script.build_data(args, _fake_accelerator())
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    args.train_files = [str(tmp_path / "empty.txt")]
    args.data_cache_dir = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="holds no text"):
        train_script.build_data(args, _fake_accelerator())
    args = train_script.parse_args([*base, "--max_train_documents", "3", "--train_batch_size", "4096"])
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_script.build_data(args, _fake_accelerator())


# ----------------------------------------------------------------------------------------------------------------------
# (a), (d): one shared tiny training run on the Wikipedia summaries
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_cache):
    """tiny-wiki.yaml (2 x 128 SDT, 32-token LM1B rows) for TINY_STEPS steps on 3,000 summaries, with the entropy
    hand-over scaled so the learned table drives training from step 100 and is exported."""
    output_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = run_script(
        "--config", CONFIGS / "tiny-wiki.yaml", "--output_dir", output_dir, "--data_cache_dir", data_cache,
        "--max_train_documents", 3000, "--max_train_steps", TINY_STEPS, "--validation_steps", 100,
        "--checkpointing_steps", 100, "--checkpoints_total_limit", 2, "--entropy_warmup_steps", 100,
        "--entropy_transition_steps", 100, "--entropy_update_every", 50, "--entropy_min_per_bin", 10,
        "--max_validation_batches", 4, "--validation_inference_steps", 16, "--generate_after_export", 2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
    return output_dir, _summary(output_dir), result


def test_tiny_model_ema_validation_loss_falls(tiny_run):
    _, summary, _ = tiny_run
    history = summary["validation_history"]
    assert [h["step"] for h in history] == [0, 100, 200, 300]
    initial, final = summary["initial_validation_loss"], summary["final_validation_loss"]
    print(f"EMA validation loss: untrained {initial:.4f} -> {final:.4f} after {TINY_STEPS} steps "
          f"(ratio {final / initial:.3f}, threshold {LOSS_RATIO_THRESHOLD})")
    assert 0.45 < initial < 0.65  # the matched-filter-only denoiser on the reference log-normal sigmas
    assert final < LOSS_RATIO_THRESHOLD * initial
    assert history[1]["loss"] < initial and history[-1]["loss"] <= history[1]["loss"]


def test_exported_folder_generates_with_ema_weights_and_learned_table(tiny_run):
    from bitstream_diffusion import BitstreamDiffusionPipeline
    from bitstream_diffusion.training import EntropyRateEstimator
    from bitstream_diffusion.training.checkpoint_files import load_estimator

    output_dir, summary, result = tiny_run
    export = output_dir / "pipeline"
    assert summary["export_dir"] == str(export) and summary["entropy_table_source"] == "learned"
    assert "Generated by BitstreamDiffusionPipeline.from_pretrained" in result.stdout
    assert len(summary["generated_after_export"]) == 2

    pipe = BitstreamDiffusionPipeline.from_pretrained(export)
    out = pipe(batch_size=2, num_inference_steps=8, gamma=0.0, sequence_length=32,
               generator=torch.Generator().manual_seed(0), output_type="text")
    assert len(out.texts) == 2 and all(isinstance(t, str) and t for t in out.texts) and out.nfe == 8
    assert pipe.model.config.hidden_size == 128 and pipe.model.config.bits_per_token == 15
    assert pipe.config.codec_layout == "lm1b" and pipe.codec.num_tokens == 32

    # the exported weights are the EMA shadow of the final checkpoint, not the raw weights
    final = output_dir / f"checkpoint-{TINY_STEPS}"
    ema = load_file(final / "ema.safetensors")  # the checkpoint keeps our objects as safetensors, never pickled
    raw = load_file(final / "model.safetensors")
    exported = pipe.model.state_dict()
    assert all(torch.equal(exported[name], shadow) for name, shadow in ema.items())
    assert any(not torch.equal(raw[name], shadow) for name, shadow in ema.items())
    assert not list(final.glob("custom_checkpoint_*"))

    # the scheduler carries the estimator's learned table (refreshed every 50 steps, last at step 300)
    estimator = EntropyRateEstimator()
    load_estimator(estimator, final / "entropy_estimator.safetensors")
    assert estimator.num_refreshes >= 4 and estimator.last_refresh_step == TINY_STEPS
    for name in ("pdf", "sigmas", "edges"):
        stored = torch.tensor(pipe.scheduler.config[f"entropy_{name}"], dtype=torch.float32)
        assert torch.equal(stored, estimator.tables[name]), name
    prior = torch.distributions.Normal(-1.2, 1.2)  # the learned table is not the warm-up log-normal
    assert float(estimator.tables["pdf"].max()) != pytest.approx(float(prior.log_prob(torch.tensor(-1.2)).exp()))


def test_checkpoints_rotate_and_tensorboard_gets_losses_and_texts(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _, _ = tiny_run
    checkpoints = sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-200", "checkpoint-300"]  # limit 2 of 100/200/300
    assert not list(output_dir.glob(".checkpoint-*"))
    state = json.loads((output_dir / "checkpoint-300" / "training_state.json").read_text())
    assert state["global_step"] == 300 and state["micro_batches"] == 300
    assert sorted(p.name for p in (output_dir / "samples").iterdir()) == [
        f"step-{s:08d}.txt" for s in (0, 100, 200, 300)
    ]
    events = sorted((output_dir / "logs").rglob("events.out.tfevents.*"))
    tags, texts = set(), []
    for event_file in events:
        accumulator = EventAccumulator(str(event_file), size_guidance={"tensors": 0, "scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
        if "validation/samples/text_summary" in accumulator.Tags()["tensors"]:
            texts += accumulator.Tensors("validation/samples/text_summary")
    assert {"train/loss", "train/lr", "val/loss", "entropy/gamma", "entropy/lognormal_mu"} <= tags
    assert len(texts) == 4 and texts[-1].step == 300
    assert yaml.safe_load((output_dir / "training_config.yaml").read_text())["max_train_steps"] == TINY_STEPS


# ----------------------------------------------------------------------------------------------------------------------
# (b) SIGKILL + resume == uninterrupted
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(mini_config, data_cache, tmp_path):
    common = ["--config", mini_config, "--data_cache_dir", data_cache]
    # the cache first, so that the two concurrent runs below do not both prepare it
    warm = run_script(*common, "--output_dir", tmp_path / "warm", "--max_train_steps", 1, "--validation_at_start",
                      "false", "--num_validation_samples", 0)
    assert warm.returncode == 0, warm.stderr[-4000:]

    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    env = _env(threads=1)
    reference = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, common), "--output_dir", reference_dir],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([sys.executable, str(SCRIPT), *map(str, common), "--output_dir", killed_dir],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoint-20" / "training_state.json").is_file():
        assert victim.poll() is None and time.time() < deadline, "the run ended before writing checkpoint-20"
        time.sleep(0.05)
    assert victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed_dir / "pipeline").exists() and not (killed_dir / "checkpoint-40").exists()
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err[-4000:]

    # the same thread count as the reference: CPU kernels reduce in a thread-count-dependent order
    resumed = run_script(*common, "--output_dir", killed_dir, "--resume_from_checkpoint", "latest", threads=1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr

    a, b = _summary(reference_dir), _summary(killed_dir)
    assert a["global_step"] == b["global_step"] == 40 and a["epoch"] == b["epoch"] == 1
    assert a["validation_history"] == b["validation_history"]  # bit-identical floats, including before the kill
    for relative in ("checkpoint-40/model.safetensors", "pipeline/model/model.safetensors"):
        one, two = load_file(reference_dir / relative), load_file(killed_dir / relative)
        assert one.keys() == two.keys()
        assert all(torch.equal(one[k], two[k]) for k in one), relative
    for name in ("entropy_estimator.safetensors", "ema.safetensors"):  # buffer and tables; the EMA shadows
        _assert_same(load_file(reference_dir / "checkpoint-40" / name), load_file(killed_dir / "checkpoint-40" / name))
    for name in ("lr_scheduler.json", "training_state.json"):
        one, two = (json.loads((d / "checkpoint-40" / name).read_text()) for d in (reference_dir, killed_dir))
        assert one == two, name
    optimizer_a = torch.load(reference_dir / "checkpoint-40" / "optimizer.bin", weights_only=True)
    optimizer_b = torch.load(killed_dir / "checkpoint-40" / "optimizer.bin", weights_only=True)
    _assert_same(optimizer_a["state"], optimizer_b["state"])


def _assert_same(one, two) -> None:
    if isinstance(one, torch.Tensor):
        assert torch.equal(one, two)
    elif isinstance(one, dict):
        assert one.keys() == two.keys()
        for key in one:
            _assert_same(one[key], two[key])
    elif isinstance(one, (list, tuple)):
        assert len(one) == len(two)
        for x, y in zip(one, two, strict=True):
            _assert_same(x, y)
    else:
        assert one == two


# ----------------------------------------------------------------------------------------------------------------------
# NaN loss
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_clearly_and_keeps_the_last_good_checkpoint(mini_config, data_cache, tmp_path):
    output_dir = tmp_path / "nan"
    result = run_script("--config", mini_config, "--data_cache_dir", data_cache, "--output_dir", output_dir,
                        "--max_train_steps", 30, "--debug_nan_loss_at_step", 24)
    assert result.returncode == 1
    assert "Training stopped: the loss is nan at optimizer step 25" in result.stderr
    assert f"The last good checkpoint is {output_dir / 'checkpoint-20'}" in result.stderr
    assert (output_dir / "checkpoint-20" / "training_state.json").is_file()
    assert not (output_dir / "checkpoint-30").exists() and not (output_dir / "pipeline").exists()
    summary = _summary(output_dir)
    assert summary["status"] == "diverged" and summary["global_step"] == 24
    weights = load_file(output_dir / "checkpoint-20" / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


@pytest.mark.slow
def test_a_diverging_learning_rate_stops_with_the_documented_message(mini_config, data_cache, tmp_path):
    """lr 1e6: the weights blow up after the first steps and the next step's self-conditioning pass gives NaN. The
    run stops there (not with the model's "`self_cond` contains NaN"), keeps the last good checkpoint and says how to
    resume."""
    output_dir = tmp_path / "lr1e6"
    result = run_script("--config", mini_config, "--data_cache_dir", data_cache, "--output_dir", output_dir,
                        "--max_train_steps", 10, "--checkpointing_steps", 2, "--learning_rate", 1e6,
                        "--lr_warmup_steps", 0, "--validation_at_start", "false", "--num_validation_samples", 0)
    assert result.returncode == 1, result.stderr[-4000:]
    assert "contains NaN" not in result.stderr, result.stderr[-4000:]
    match = re.search(r"ERROR: Training stopped: the (self-conditioning estimate|model input|loss|gradient norm|"
                      r"weights?) (is|are) (nan|inf) at optimizer step (\d+)", result.stderr)
    assert match, result.stderr[-4000:]
    last = sorted((p for p in output_dir.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert f"The last good checkpoint is {last}" in result.stderr
    assert "--resume_from_checkpoint latest and a lower --learning_rate" in result.stderr
    assert int(match.group(4)) > int(last.name.split("-")[1])
    assert all(bool(torch.isfinite(t).all()) for t in load_file(last / "model.safetensors").values())
    assert _summary(output_dir)["status"] == "diverged" and not (output_dir / "pipeline").exists()
    assert "Mixed precision: no (set by accelerate (ACCELERATE_MIXED_PRECISION=no" in result.stderr


@pytest.mark.slow
def test_a_save_to_disk_folder_trains_quietly_when_the_libraries_are_silenced(data_cache, tmp_path, wiki_summaries):
    """--train_dataset_path takes a save_to_disk folder; HF_HUB_DISABLE_PROGRESS_BARS silences every bar (data
    preparation, steps, the libraries') and TRANSFORMERS_VERBOSITY=error the run's INFO lines."""
    import datasets

    datasets.Dataset.from_dict({"text": list(wiki_summaries[:60])}).save_to_disk(tmp_path / "saved")
    config = {**MINI_CONFIG, "max_train_steps": 2, "checkpointing_steps": 2, "validation_steps": 2,
              "validation_at_start": False, "num_validation_samples": 0}
    del config["dataset_name"], config["max_train_documents"]
    (tmp_path / "saved.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    output_dir = tmp_path / "run"
    result = run_script("--config", tmp_path / "saved.yaml", "--train_dataset_path", tmp_path / "saved",
                        "--data_cache_dir", tmp_path / "rows", "--output_dir", output_dir,
                        HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = _summary(output_dir)
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert "it/s" not in result.stderr and "Steps" not in result.stderr and "Preparing" not in result.stderr
    assert " - INFO - " not in result.stderr, result.stderr[-3000:]
    assert (output_dir / "pipeline" / "model_index.json").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# (c) two processes
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_feed_the_estimator_from_both_ranks(mini_config, data_cache, tmp_path, two_cpu_processes_launch):
    """``accelerate launch`` with 2 CPU processes (gloo); see the ``two_cpu_processes_launch`` fixture."""
    output_dir = tmp_path / "ddp"
    command = two_cpu_processes_launch(
        SCRIPT, "--config", mini_config, "--data_cache_dir", data_cache, "--output_dir", output_dir,
        "--max_train_steps", 6, "--checkpointing_steps", 3, "--validation_steps", 3,
    )  # fmt: skip
    result = subprocess.run(command, env=_env(threads=1), capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-6000:]
    summary = _summary(output_dir)
    estimator = summary["estimator"]
    check = estimator["gather_check"]
    assert check == {"world_size": 2, "local_batch": 8, "rows_added": 16, "buffer_matches_all_ranks": True}
    by_rank = estimator["local_train_samples_by_rank"]
    assert by_rank == [6 * 2 * 8, 6 * 2 * 8]  # 6 steps x 2 accumulated batches x 8 rows, on each rank
    assert estimator["num_seen"] >= sum(by_rank) and estimator["num_refreshes"] >= 1
    assert summary["global_step"] == 6 and summary["entropy_table_source"] == "learned"
    assert (output_dir / "pipeline" / "model_index.json").is_file()
    assert (output_dir / "checkpoint-6" / "random_states_1.pkl").is_file()  # each rank's RNG state is kept


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_training_prints_json(data_cache):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_training.py"), "--config",
         str(CONFIGS / "tiny-wiki.yaml"), "--steps", "2", "--warmup_steps", "1", "--train_batch_size", "4",
         "--max_train_documents", "200", "--data_cache_dir", str(data_cache)],
        env=_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["batch_size"] == 4 and report["tokens_per_step"] == 4 * 32
    for key in ("with_self_conditioning", "without_self_conditioning"):
        assert report[key]["optimizer_steps_per_s"] > 0 and report[key]["tokens_per_s"] > 0
