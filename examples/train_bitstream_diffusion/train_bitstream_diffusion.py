#!/usr/bin/env python
# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
# Licensed under the MIT License.
"""Train a CoBit bitstream diffusion language model (arXiv 2605.07013) with accelerate.

The paper's recipe (REFERENCE_TRAINING §4–6): token ids -> MSB-first bits; ``x_t = x0 + sigma * eps``; the SDT
denoiser with the matched-filter residual; EDM-weighted MSE on the bit probabilities; training sigma from a truncated
log-normal during warm-up, then a linear hand-over to the online entropy-rate table (estimated from every rank);
self-conditioning with p = 0.5; AdamW (0.9, 0.99, wd 0.01), linear warm-up + cosine to 1e-6, clip 1.0, EMA 0.9999.
At the end the EMA weights, the scheduler carrying the learned entropy table, the tokenizer(s) and the codec settings
are exported as a ``BitstreamDiffusionPipeline`` folder.

    # the quickstart: tiny-wiki on CPU, no download (also what running the script without arguments does)
    python examples/train_bitstream_diffusion/train_bitstream_diffusion.py \
        --config examples/train_bitstream_diffusion/configs/tiny-wiki.yaml

    # the paper's CoBit-S LM1B on 2 GPUs, bf16
    accelerate launch --num_processes 2 examples/train_bitstream_diffusion/train_bitstream_diffusion.py \
        --config examples/train_bitstream_diffusion/configs/cobit-s-lm1b.yaml

Every flag can live in the YAML config (keys are the flag names); flags on the command line override the file.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import math
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTConfig, SDTModel
from bitstream_diffusion.codecs import ids_to_bits
from bitstream_diffusion.training import (
    EntropyRateEstimator,
    ExponentialMovingAverage,
    TrainingSigmaSampler,
    bitstream_loss,
    gather_across_ranks,
    get_lr_lambda,
    lognormal_fit,
    lognormal_prior_tables,
    loss_weight,
    save_entropy_tables,
    self_conditioning_estimate,
    tables_to_config,
)
from bitstream_diffusion.training.data import (
    DataRecipe,
    EpochShuffleSampler,
    TextSource,
    TokenRowsDataset,
    build_codec,
    load_code_tokenizer,
    load_text_tokenizer,
    prepare_token_rows,
    split_train_validation,
)
from bitstream_diffusion.utils.atomic_io import replace_directory

logger = get_logger(__name__, log_level="INFO")

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = SCRIPT_DIR / "configs" / "tiny-wiki.yaml"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_FILE = "training_state.json"
SUMMARY_FILE = "train_summary.json"
MODEL_OVERRIDE_FLAGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "dropout")
# the per-step noise of validation uses its own stream, never the training one
_VALIDATION_STREAM = 0x5EED_0FF5


class TrainingDivergedError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; training stopped before the weights took it."""


# ----------------------------------------------------------------------------------------------------------------------
# Arguments: flags, YAML config files, validation
# ----------------------------------------------------------------------------------------------------------------------


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a CoBit bitstream diffusion language model (SDT) with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--config", type=str, default=None,
        help="YAML file whose keys are flag names (command-line flags override it). Without --config and without "
             "any data flag the script runs the tiny-wiki quickstart config.")

    data = parser.add_argument_group("data")
    data.add_argument("--data_recipe", type=str, default="lm1b", choices=["lm1b", "owt", "generic"],
                      help="lm1b: bert ids [SEP]-joined into rows; owt: GPT-2 windows re-coded by the code tokenizer; "
                           "generic: any tokenizer, documents joined by a boundary token.")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="A datasets hub id, a local dataset folder, or builtin:wiki_summaries (offline).")
    data.add_argument("--dataset_config_name", type=str, default=None)
    data.add_argument("--dataset_revision", type=str, default=None)
    data.add_argument("--dataset_split", type=str, default="train", help='e.g. "train" or "train[:-100000]"')
    data.add_argument("--train_files", type=str, nargs="+", default=None,
                      help="Local .txt/.json/.jsonl/.csv/.parquet files (globs allowed) instead of --dataset_name.")
    data.add_argument("--validation_split", type=str, default=None,
                      help="A separate validation split of the dataset (e.g. \"train[-100000:]\"); by default the "
                           "last --validation_fraction of the training rows (the official LM1B rule).")
    data.add_argument("--validation_files", type=str, nargs="+", default=None)
    data.add_argument("--validation_fraction", type=float, default=0.005)
    data.add_argument("--max_validation_rows", type=int, default=None, help="Cap the validation rows.")
    data.add_argument("--text_column", type=str, default="text")
    data.add_argument("--sample_by", type=str, default="line", choices=["line", "paragraph", "document"],
                      help="For .txt files: one example per line, paragraph or file.")
    data.add_argument("--max_train_documents", type=int, default=None, help="Use only the first N documents.")
    data.add_argument("--streaming", type=str2bool, default=False,
                      help="Stream the dataset while preparing the rows (for corpora too large to download first).")
    data.add_argument("--data_cache_dir", type=str, default=None,
                      help="Where prepared rows are cached (default ~/.cache/bitstream_diffusion/prepared).")
    data.add_argument("--preprocessing_batch_size", type=int, default=1000)
    data.add_argument("--tokenizer_name_or_path", type=str, default="bert-base-uncased",
                      help="Folder, hub id, or packaged:bert-base-uncased / packaged:gpt2 (offline copies).")
    data.add_argument("--code_tokenizer_name_or_path", type=str, default=None,
                      help="The OWT code tokenizer: a save_pretrained folder or the official *.json (+ .meta.json).")
    data.add_argument("--num_tokens", type=int, default=None,
                      help="Tokens (OWT: codes) per row; default 128 (lm1b, generic) or 1024 (owt).")
    data.add_argument("--owt_base_seq_len", type=int, default=1024, help="GPT-2 window length of the owt recipe.")
    data.add_argument("--bits_per_token", type=int, default=None, help="Default: ceil(log2(vocabulary size)).")
    data.add_argument("--boundary_token", type=str, default="auto", choices=["auto", "eos", "sep", "none"],
                      help="generic recipe: EOS after documents, SEP between them, or nothing.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    model = parser.add_argument_group("model")
    model.add_argument("--model_preset", type=str, default="cobit-s-lm1b",
                       help="cobit-s-lm1b, cobit-s-owt or cobit-m-owt (SDTConfig.from_preset).")
    model.add_argument("--model_config_name_or_path", type=str, default=None,
                       help="An SDTConfig folder or JSON instead of the preset.")
    model.add_argument("--hidden_size", type=int, default=None)
    model.add_argument("--num_hidden_layers", type=int, default=None)
    model.add_argument("--num_attention_heads", type=int, default=None)
    model.add_argument("--intermediate_size", type=int, default=None)
    model.add_argument("--dropout", type=float, default=None)
    model.add_argument("--gradient_checkpointing", type=str2bool, default=False)

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--p_mean", type=float, default=-1.2)
    diffusion.add_argument("--p_std", type=float, default=1.2)
    diffusion.add_argument("--sigma_min", type=float, default=0.002)
    diffusion.add_argument("--sigma_max", type=float, default=80.0)
    diffusion.add_argument("--self_conditioning_prob", type=float, default=0.5)
    diffusion.add_argument("--loss_type", type=str, default="binary_sm", choices=["binary_sm", "binary_ce"])
    diffusion.add_argument("--loss_weighting", type=str, default="edm", choices=["edm", "none"])
    diffusion.add_argument("--entropy_num_bins", type=int, default=128)
    diffusion.add_argument("--entropy_min_per_bin", type=int, default=100)
    diffusion.add_argument("--entropy_buffer_size", type=int, default=800_000)
    diffusion.add_argument("--entropy_update_every", type=int, default=2000)
    diffusion.add_argument("--entropy_warmup_steps", type=int, default=40_000)
    diffusion.add_argument("--entropy_transition_steps", type=int, default=10_000)
    diffusion.add_argument("--entropy_gamma_max", type=float, default=1.0)
    diffusion.add_argument("--entropy_regularizer_c", type=float, default=0.1)
    diffusion.add_argument("--entropy_regularizer_n", type=float, default=3.0)
    diffusion.add_argument("--entropy_target", type=str, default="sqrt-rate", choices=["sqrt-rate", "rate"])
    diffusion.add_argument("--entropy_include_validation", type=str2bool, default=True,
                           help="Validation samples also enter the estimator's buffer (as in the official code).")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=32, help="Per device.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps (and the cosine horizon).")
    optim.add_argument("--num_train_epochs", type=int, default=None, help="Used when --max_train_steps is unset.")
    optim.add_argument("--learning_rate", type=float, default=3e-4)
    optim.add_argument("--lr_scheduler", type=str, default="warmup_cosine",
                       choices=["warmup_cosine", "constant", "constant_with_warmup", "linear", "cosine"])
    optim.add_argument("--lr_warmup_steps", type=int, default=2500)
    optim.add_argument("--lr_min", type=float, default=1e-6, help="Floor of the cosine decay.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.99)
    optim.add_argument("--adam_weight_decay", type=float, default=0.01)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--use_ema", type=str2bool, default=True)
    optim.add_argument("--ema_decay", type=float, default=0.9999)
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                       help="Default: the accelerate config. The paper trained with bf16.")
    optim.add_argument("--allow_tf32", type=str2bool, default=False)
    optim.add_argument("--flush_denormal", type=str2bool, default=True,
                       help="Flush denormal floats to zero in CPU ops: on CPU the zero-initialised adaLN layers "
                            "otherwise make the first hundreds of steps up to 20x slower.")
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("checkpoints, validation and logging")
    run.add_argument("--output_dir", type=str, default="outputs/cobit")
    run.add_argument("--logging_dir", type=str, default="logs", help="Relative to --output_dir.")
    run.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "all", "none"])
    run.add_argument("--tracker_project_name", type=str, default="train_bitstream_diffusion")
    run.add_argument("--logging_steps", type=int, default=10)
    run.add_argument("--checkpointing_steps", type=int, default=5000)
    run.add_argument("--checkpoints_total_limit", type=int, default=None)
    run.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help='A checkpoint folder, or "latest" for the newest complete one in --output_dir.')
    run.add_argument("--validation_steps", type=int, default=5000)
    run.add_argument("--validation_at_start", type=str2bool, default=True,
                     help="Validate the untrained model (step 0) too.")
    run.add_argument("--validation_batch_size", type=int, default=None, help="Default: --train_batch_size.")
    run.add_argument("--max_validation_batches", type=int, default=None)
    run.add_argument("--num_validation_samples", type=int, default=4, help="Texts generated at each validation.")
    run.add_argument("--validation_inference_steps", type=int, default=128)
    run.add_argument("--validation_gamma", type=float, default=0.0)
    run.add_argument("--export_dir", type=str, default=None, help="Default: <output_dir>/pipeline.")
    run.add_argument("--scheduler_gamma", type=float, default=None,
                     help="Churn stored in the exported scheduler; default: the paper's 0.2 at 256 NFE.")
    run.add_argument("--generate_after_export", type=int, default=0,
                     help="Load the exported folder with from_pretrained and print this many generated texts.")
    run.add_argument("--push_to_hub", type=str2bool, default=False)
    run.add_argument("--hub_model_id", type=str, default=None)
    run.add_argument("--hub_token", type=str, default=None)
    run.add_argument("--hub_private_repo", type=str2bool, default=False)
    run.add_argument("--debug_nan_loss_at_step", type=int, default=None,
                     help="Testing aid: make the loss NaN at this optimizer step (0-based) to exercise the stop.")
    return parser


def _config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}


def _coerce(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """A YAML value as the flag's type would have parsed it (YAML reads 3e-4 as a string)."""
    if value is None:
        return None
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        return [_coerce_one(action, key, v, source) for v in values]
    return _coerce_one(action, key, value, source)


def _coerce_one(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    try:
        if action.type is int and isinstance(value, (str, float)) and not isinstance(value, bool):
            number = float(value)  # YAML reads 1e6 as a string
            if not number.is_integer():
                raise ValueError("not an integer")
            value = int(number)
        elif action.type is not None and isinstance(value, (str, int, float, bool)):
            value = action.type(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{source}: {key}={value!r} is not a valid value ({error}).") from error
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{source}: {key}={value!r} is not one of {list(action.choices)}.")
    return value


def load_config_file(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config whose keys are flag names; unknown keys are an error that lists the valid ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} not found.")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping of flag names to values, got {type(loaded).__name__}.")
    actions = _config_keys(parser)
    unknown = sorted(set(loaded) - set(actions))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), actions, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"Unknown key(s) in {path}: {', '.join(hints)}. Valid keys are the flag names: {', '.join(sorted(actions))}."
        )
    return {key: _coerce(actions[key], key, value, str(path)) for key, value in loaded.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config", default=None)
    probe.add_argument("--dataset_name", default=None)
    probe.add_argument("--train_files", nargs="+", default=None)
    known, _ = probe.parse_known_args(argv)
    config_path = known.config
    if config_path is None and known.dataset_name is None and known.train_files is None:
        config_path = str(DEFAULT_CONFIG)  # the embedded quickstart
    if config_path is not None and str(config_path).lower() != "none":
        parser.set_defaults(**load_config_file(config_path, parser))
    args = parser.parse_args(argv)
    args.config = config_path
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    if args.dataset_name is None and not args.train_files:
        raise ValueError("No training data: pass --dataset_name (e.g. builtin:wiki_summaries) or --train_files.")
    if args.dataset_name is not None and args.train_files:
        raise ValueError("Pass either --dataset_name or --train_files, not both.")
    if args.max_train_steps is None and args.num_train_epochs is None:
        raise ValueError("Set --max_train_steps (the paper: 1,000,000) or --num_train_epochs.")
    positive = ["train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps",
                "logging_steps", "entropy_num_bins", "entropy_buffer_size"]
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    if not 0.0 <= args.self_conditioning_prob <= 1.0:
        raise ValueError(f"--self_conditioning_prob must lie in [0, 1], got {args.self_conditioning_prob}.")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema_decay must lie in [0, 1], got {args.ema_decay}.")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name
    if args.num_tokens is None:
        args.num_tokens = 1024 if args.data_recipe == "owt" else 128


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def build_data(args, accelerator: Accelerator):
    """Tokenizers, codec and the (cached) train/validation row datasets."""
    tokenizer = load_text_tokenizer(args.tokenizer_name_or_path)
    code_tokenizer = load_code_tokenizer(args.code_tokenizer_name_or_path)
    recipe = DataRecipe(args.data_recipe, num_tokens=args.num_tokens, bits_per_token=args.bits_per_token,
                        boundary=args.boundary_token, base_seq_len=args.owt_base_seq_len)
    codec = build_codec(recipe, tokenizer, code_tokenizer)  # a tokenizer too wide for bits_per_token fails here

    def source(split: str, files: list[str] | None, name: str | None) -> TextSource:
        return TextSource(dataset_name=name, dataset_config_name=args.dataset_config_name, split=split,
                          data_files=files, text_column=args.text_column, sample_by=args.sample_by,
                          streaming=args.streaming, max_documents=args.max_train_documents,
                          revision=args.dataset_revision)

    train_source = source(args.dataset_split, args.train_files, args.dataset_name)
    kwargs = dict(cache_dir=args.data_cache_dir, batch_size=args.preprocessing_batch_size,
                  show_progress=accelerator.is_local_main_process)
    with accelerator.main_process_first():
        train_rows = prepare_token_rows(train_source, recipe, tokenizer, code_tokenizer, **kwargs)
        if args.validation_split is not None or args.validation_files:
            val_source = source(args.validation_split or "train", args.validation_files,
                                None if args.validation_files else args.dataset_name)
            val_source.max_documents = None
            val_rows = prepare_token_rows(val_source, recipe, tokenizer, code_tokenizer, **kwargs)
            train_range, val_range = (0, len(train_rows)), (0, len(val_rows))
            if args.max_validation_rows is not None:
                val_range = (0, min(len(val_rows), args.max_validation_rows))
        else:
            val_rows = train_rows
            train_range, val_range = split_train_validation(
                len(train_rows), validation_fraction=args.validation_fraction,
                max_validation_rows=args.max_validation_rows,
            )
    train_dataset = TokenRowsDataset(train_rows, *train_range)
    val_dataset = TokenRowsDataset(val_rows, *val_range)
    per_step = args.train_batch_size * accelerator.num_processes
    if len(train_dataset) < per_step:
        raise ValueError(
            f"Only {len(train_dataset)} training rows of {args.num_tokens} tokens: fewer than one batch of "
            f"{args.train_batch_size} x {accelerator.num_processes} process(es). Add text, lower --num_tokens or "
            "--train_batch_size."
        )
    return tokenizer, code_tokenizer, codec, train_dataset, val_dataset


# ----------------------------------------------------------------------------------------------------------------------
# Model, optimiser, schedules
# ----------------------------------------------------------------------------------------------------------------------


def build_model_config(args, bits_per_token: int, num_tokens: int) -> SDTConfig:
    overrides = {name: getattr(args, name) for name in MODEL_OVERRIDE_FLAGS if getattr(args, name) is not None}
    overrides.update(bits_per_token=int(bits_per_token), max_position_embeddings=int(num_tokens))
    if args.model_config_name_or_path:
        return SDTConfig.from_pretrained(args.model_config_name_or_path, **overrides)
    return SDTConfig.from_preset(args.model_preset, **overrides)


def build_lr_scheduler(args, optimizer: torch.optim.Optimizer, total_steps: int):
    if args.lr_scheduler == "warmup_cosine":  # the paper: linear warm-up, cosine to lr_min (REFERENCE §6.3)
        lr_lambda = get_lr_lambda(base_lr=args.learning_rate, warmup_steps=min(args.lr_warmup_steps, total_steps),
                                  total_steps=total_steps, min_lr=args.lr_min)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=total_steps)


def step_seed(seed: int, stream: int, rank: int, index: int) -> int:
    """A well-mixed 63-bit seed for the draws of one micro-batch: a pure function of (seed, stream, rank, index)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(rank), int(index)]).generate_state(2)
    return int((int(state[0]) << 31 ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF)


def noisy_batch(
    model, ids: torch.Tensor, *, bits_per_token: int, sigma_sampler: TrainingSigmaSampler, step: int,
    tables: dict[str, torch.Tensor] | None, generator: torch.Generator, self_conditioning_prob: float,
):
    """One forward pass of the training objective: ``(x0, sigma, logits)``.

    Draws, in the official order and all from ``generator``: sigma (log-normal, coin, table draws), the noise
    ``[B, S]``, the self-conditioning coin. The bootstrap self-conditioning pass runs without gradient.
    """
    x0 = ids_to_bits(ids, bits_per_token, dtype=torch.float32)  # [B, S] on the batch's device
    sigma = sigma_sampler.draw_sigma(x0.shape[0], step, generator, tables=tables).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    noisy = x0 + sigma[:, None] * noise

    def denoiser(x, s, sc):
        return model(x, s, self_cond=sc).logits

    self_cond = self_conditioning_estimate(denoiser, noisy, sigma, prob=self_conditioning_prob, generator=generator)
    logits = model(noisy, sigma, self_cond=self_cond).logits
    return x0, sigma, logits


def per_example_loss(logits, x0, sigma, *, loss_type: str, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [B], mse [B])``: each row's weighted loss (their mean is ``bitstream_loss``) and its bit MSE."""
    batch = logits.shape[0]
    weight = loss_weight(sigma, weighting=weighting)
    probs = torch.sigmoid(logits.reshape(batch, -1).float())
    target = x0.reshape(batch, -1).float()
    mse = ((probs - target) ** 2).mean(dim=1)
    if loss_type == "binary_sm":
        return weight * mse, mse
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(batch, -1).float(), target,
                                                               reduction="none").mean(dim=1)
    return weight * bce, mse


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (``checkpoint-N`` with a training state file), oldest first."""
    found = []
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            name = path.name
            if path.is_dir() and name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
                if (path / TRAINING_STATE_FILE).is_file():
                    found.append((int(name[len(CHECKPOINT_PREFIX):]), path))
    return sorted(found)


def resolve_resume_checkpoint(value: str | None, output_dir: Path) -> Path | None:
    if not value:
        return None
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(value)
    if not path.exists() and (output_dir / value).exists():
        path = output_dir / value
    if not (path / TRAINING_STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {TRAINING_STATE_FILE}).")
    return path


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, progress: dict[str, Any], total_limit: int | None):
    """``accelerator.save_state`` into a temporary folder, then an atomic rename to ``checkpoint-N`` and rotation.

    A run killed while saving leaves only the hidden temporary folder, which ``latest`` ignores.
    """
    step = progress["global_step"]
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    staging = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_atomic(staging / TRAINING_STATE_FILE, progress)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()
    return final


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


# ----------------------------------------------------------------------------------------------------------------------
# Validation and export
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validation_loss(args, accelerator, model, val_dataloader, estimator, bits_per_token: int) -> float:
    """Mean loss over the validation rows with fixed draws: the sigma of the warm-up log-normal (the same reference
    distribution at every evaluation, so the numbers compare across training) and fixed noise."""
    reference = TrainingSigmaSampler(p_mean=args.p_mean, p_std=args.p_std, sigma_min=args.sigma_min,
                                     sigma_max=args.sigma_max, warmup_steps=0, transition_steps=0, gamma_max=0.0)
    generator = torch.Generator(device=accelerator.device)
    total, count = 0.0, 0
    for index, ids in enumerate(val_dataloader):
        if args.max_validation_batches is not None and index >= args.max_validation_batches:
            break
        generator.manual_seed(step_seed(args.seed, _VALIDATION_STREAM, accelerator.process_index, index))
        x0, sigma, logits = noisy_batch(model, ids, bits_per_token=bits_per_token, sigma_sampler=reference, step=0,
                                        tables=None, generator=generator,
                                        self_conditioning_prob=args.self_conditioning_prob)
        losses, mse = per_example_loss(logits, x0, sigma, loss_type=args.loss_type, weighting=args.loss_weighting)
        if estimator is not None and args.entropy_include_validation:
            estimator.update(sigma, mse)
        losses = accelerator.gather_for_metrics(losses)
        total += float(losses.double().sum())
        count += losses.numel()
    return total / max(count, 1)


def build_pipeline(model, tables, tokenizer, code_tokenizer, codec, *, gamma: float, args) -> BitstreamDiffusionPipeline:
    scheduler = EntropyRateScheduler(
        **tables_to_config(tables), gamma=float(gamma), s_noise=1.003, terminal_sigma=0.08,
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, churn_window=(0.0, 1.0),
        self_conditioning="carry" if model.config.self_conditioning else "none", solver="euler",
    )
    return BitstreamDiffusionPipeline(
        model=model, scheduler=scheduler, tokenizer=tokenizer,
        code_tokenizer=code_tokenizer,
        codec_layout=codec.layout, codec_num_tokens=codec.num_tokens,
        codec_clean_up_tokenization_spaces=codec.clean_up_tokenization_spaces,
    )


@torch.no_grad()
def validation_samples(args, model, tables, tokenizer, code_tokenizer, codec) -> list[str]:
    """A few texts from the (EMA-weighted, eval-mode) model with the current table; main process only."""
    pipe = build_pipeline(model, tables, tokenizer, code_tokenizer, codec, gamma=args.validation_gamma, args=args)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=args.num_validation_samples, num_inference_steps=args.validation_inference_steps,
               gamma=args.validation_gamma, sequence_length=codec.num_tokens,
               generator=torch.Generator().manual_seed(args.seed), output_type="text")
    return list(out.texts)


def log_texts(accelerator: Accelerator, texts: list[str], step: int, output_dir: Path) -> None:
    samples_dir = output_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    (samples_dir / f"step-{step:08d}.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            body = "\n\n".join(f"{i}. {t}" for i, t in enumerate(texts))
            tracker.writer.add_text("validation/samples", body, step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation/samples": wandb.Table(columns=["text"], data=[[t] for t in texts])}, step=step)


def _model_card(args, summary: dict[str, Any]) -> str:
    history = summary.get("validation_history") or []
    final = f"{history[-1]['loss']:.4f}" if history else "n/a"
    return (
        "---\nlibrary_name: diffusers\ntags:\n- bitstream-diffusion\n- cobit\n- text-generation\n---\n\n"
        f"# {Path(args.output_dir).name}\n\n"
        "A CoBit bitstream diffusion language model trained with "
        "`examples/train_bitstream_diffusion/train_bitstream_diffusion.py` "
        f"({args.data_recipe} recipe on {args.dataset_name or 'local files'}, {summary['global_step']} optimizer "
        f"steps, EMA weights). EMA validation loss: {final}.\n\n"
        "```python\nimport torch\nfrom bitstream_diffusion import BitstreamDiffusionPipeline\n\n"
        'pipe = BitstreamDiffusionPipeline.from_pretrained("path/to/this/folder")\n'
        "print(pipe(batch_size=2, num_inference_steps=128, generator=torch.Generator().manual_seed(0)).texts)\n```\n"
    )


def export_pipeline(args, accelerator, model, ema, config, tables, tokenizer, code_tokenizer, codec,
                    export_dir: Path, summary: dict[str, Any]) -> Path | None:
    """Write the EMA weights, the scheduler with the learned table, the tokenizer(s) and the codec, atomically."""
    if ema is not None:
        ema.store(model)
        ema.copy_to(model)
    # full weights on the main process (DDP, FSDP, ...); cloned, since without sharding these are the live parameters
    # that `restore` is about to overwrite
    full = accelerator.get_state_dict(model)
    state_dict = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in full.items()}
    if ema is not None:
        ema.restore(model)
    if not accelerator.is_main_process:
        return None
    export_model = SDTModel(config)
    export_model.load_state_dict(state_dict, strict=True)
    export_model.eval()
    gamma = args.scheduler_gamma
    if gamma is None:
        gamma = EntropyRateScheduler.gamma_from_paper(0.2, 256)
    pipe = build_pipeline(export_model, tables, tokenizer, code_tokenizer, codec, gamma=gamma, args=args)
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = export_dir.with_name(f".{export_dir.name}.exporting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        save_entropy_tables(tables, staging / "entropy_tables")
        (staging / "README.md").write_text(_model_card(args, summary), encoding="utf-8")
        (staging / "training_config.yaml").write_text(yaml.safe_dump(_plain_args(args), sort_keys=True))
        replace_directory(staging, export_dir)  # the old folder goes only once the new one is in place
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return export_dir


def _plain_args(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"hub_token"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key, value in _plain_args(args).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    if args.flush_denormal:  # before any thread pool starts: threads inherit the floating-point mode
        torch.set_flush_denormal(True)
    output_dir = Path(args.output_dir)
    log_with = None if args.report_to == "none" else args.report_to
    # Several processes on a machine without an accelerator (e.g. `accelerate launch --multi_gpu --num_processes 2`
    # with CUDA_VISIBLE_DEVICES=""): gloo on CPU. (`accelerate launch --cpu --num_processes 2` starts one process in
    # accelerate 1.15 unless MPI is set up.)
    cpu_multiprocess = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=cpu_multiprocess,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=1800))],
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    for noisy in ("accelerate.checkpointing", "accelerate.accelerator"):  # one line per saved file otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logger.info(accelerator.state, main_process_only=False)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    repo_id = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(_plain_args(args), sort_keys=True))
        if args.push_to_hub:
            from huggingface_hub import create_repo

            repo_id = create_repo(repo_id=args.hub_model_id, exist_ok=True, token=args.hub_token,
                                  private=args.hub_private_repo).repo_id

    # 1. data (prepared once, by the main process first; the others reuse the cache)
    tokenizer, code_tokenizer, codec, train_dataset, val_dataset = build_data(args, accelerator)
    bits_per_token, num_tokens = codec.bits_per_token, codec.num_tokens

    # 2. model, EMA, optimiser, schedules, estimator (same seed on every rank: identical initial weights)
    set_seed(args.seed)
    config = build_model_config(args, bits_per_token, num_tokens)
    if args.self_conditioning_prob > 0 and not config.self_conditioning:
        raise ValueError("--self_conditioning_prob > 0 needs a model with self_conditioning=True.")
    model = SDTModel(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    estimator = EntropyRateEstimator(
        num_bins=args.entropy_num_bins, min_per_bin=args.entropy_min_per_bin, c=args.entropy_regularizer_c,
        n=args.entropy_regularizer_n, target=args.entropy_target, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
        buffer_size=args.entropy_buffer_size, update_every=args.entropy_update_every,
        gather_fn=gather_across_ranks if accelerator.num_processes > 1 else None,
    )
    sigma_sampler = TrainingSigmaSampler(
        p_mean=args.p_mean, p_std=args.p_std, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
        warmup_steps=args.entropy_warmup_steps, transition_steps=args.entropy_transition_steps,
        gamma_max=args.entropy_gamma_max,
    )

    train_sampler = EpochShuffleSampler(len(train_dataset), seed=args.seed)
    train_dataloader = DataLoader(
        train_dataset, batch_size=args.train_batch_size, sampler=train_sampler, drop_last=True,
        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed),
        pin_memory=torch.cuda.is_available(),
    )
    val_dataloader = DataLoader(
        val_dataset, batch_size=args.validation_batch_size or args.train_batch_size, shuffle=False, drop_last=False,
        num_workers=args.dataloader_num_workers, generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, train_dataloader, val_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, val_dataloader
    )
    batches_per_epoch = len(train_dataloader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = build_lr_scheduler(args, optimizer, max_train_steps)
    # stepped by hand once per optimizer step; checkpointed with the EMA and the estimator (buffer included)
    # the EMA shadows the prepared parameters (under FSDP: this rank's shards)
    ema = ExponentialMovingAverage(model, decay=args.ema_decay) if args.use_ema else None
    checkpointed = [lr_scheduler, estimator]
    if ema is not None and accelerator.distributed_type == DistributedType.FSDP:
        register_sharded_ema(accelerator, ema)  # every rank keeps its own shards
    elif ema is not None:
        checkpointed.append(ema)
    accelerator.register_for_checkpointing(*checkpointed)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=_tracker_config(args))

    progress: dict[str, Any] = {
        "global_step": 0, "epoch": 0, "batches_in_epoch": 0, "micro_batches": 0, "tokens_seen": 0,
        "validation_history": [], "last_checkpoint": None,
    }
    resume_path = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if args.resume_from_checkpoint and resume_path is None:
        accelerator.print(f"No checkpoint found for '{args.resume_from_checkpoint}' in {output_dir}; starting anew.")
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        progress.update(json.loads((resume_path / TRAINING_STATE_FILE).read_text()))
        progress["last_checkpoint"] = str(resume_path)

    world = accelerator.num_processes
    total_batch = args.train_batch_size * world * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Rows: {len(train_dataset)} train, {len(val_dataset)} validation; {num_tokens} tokens x "
                f"{bits_per_token} bits = {num_tokens * bits_per_token} bits per row")
    logger.info(f"  Model: {sum(p.numel() for p in accelerator.unwrap_model(model).parameters()):,} parameters")
    logger.info(f"  Batch: {args.train_batch_size} per device x {world} process(es) x "
                f"{args.gradient_accumulation_steps} accumulation = {total_batch}")
    logger.info(f"  Optimizer steps: {max_train_steps} ({steps_per_epoch} per epoch); starting at "
                f"{progress['global_step']}")

    unwrapped = accelerator.unwrap_model(model)
    gather_check: dict[str, Any] = {}

    def current_tables():
        return estimator.tables if estimator.tables is not None else lognormal_prior_tables(
            args.entropy_num_bins, args.p_mean, args.p_std, args.sigma_min, args.sigma_max)

    def run_validation(step: int) -> None:
        if ema is not None:
            ema.store(model)
            ema.copy_to(model)
        model.eval()
        loss = validation_loss(args, accelerator, model, val_dataloader, estimator, bits_per_token)
        texts: list[str] = []
        # the samples run on the main process alone: not possible with sharded (FSDP) weights
        sampling = args.num_validation_samples > 0 and accelerator.distributed_type != DistributedType.FSDP
        if sampling and accelerator.is_main_process:
            texts = validation_samples(args, unwrapped, current_tables(), tokenizer, code_tokenizer, codec)
        model.train()
        if ema is not None:
            ema.restore(model)
        progress["validation_history"].append({"step": step, "loss": loss})
        logs = {"val/loss": loss, "entropy/buffer": len(estimator)}
        accelerator.log(logs, step=step)
        if accelerator.is_main_process:
            if texts:
                log_texts(accelerator, texts, step, output_dir)
            shown = f" | {texts[0][:120]!r}" if texts else ""
            tqdm.write(f"step {step}: EMA validation loss {loss:.4f}{shown}")
        accelerator.wait_for_everyone()

    def diverged(kind: str, value: float) -> TrainingDivergedError:
        last = progress["last_checkpoint"] or "none (no checkpoint was written yet)"
        return TrainingDivergedError(
            f"Training stopped: the {kind} is {value} at optimizer step {progress['global_step'] + 1} "
            f"(epoch {progress['epoch']}, batch {progress['batches_in_epoch']}). The weights were not updated with "
            f"it. The last good checkpoint is {last}; resume with --resume_from_checkpoint latest, a lower "
            "--learning_rate or --max_grad_norm, or another --mixed_precision."
        )

    if progress["global_step"] == 0 and resume_path is None and args.validation_at_start:
        run_validation(0)

    bar = tqdm(total=max_train_steps, initial=progress["global_step"], disable=not accelerator.is_local_main_process,
               desc="Steps")
    running_loss, running_count = 0.0, 0
    generator = torch.Generator(device=accelerator.device)
    grad_norm = torch.tensor(float("nan"))
    try:
        while progress["global_step"] < max_train_steps:
            if progress["batches_in_epoch"] >= batches_per_epoch:
                progress["epoch"] += 1
                progress["batches_in_epoch"] = 0
            epoch, skip = progress["epoch"], progress["batches_in_epoch"]
            train_sampler.set_epoch(epoch)
            train_dataloader.set_epoch(epoch)
            loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
            loader.set_epoch(epoch)
            train_sampler.set_epoch(epoch)
            for ids in loader:
                step = progress["global_step"]
                generator.manual_seed(step_seed(args.seed, 0, accelerator.process_index, progress["micro_batches"]))
                with accelerator.accumulate(model):
                    x0, sigma, logits = noisy_batch(
                        model, ids, bits_per_token=bits_per_token, sigma_sampler=sigma_sampler, step=step,
                        tables=estimator.tables, generator=generator,
                        self_conditioning_prob=args.self_conditioning_prob,
                    )
                    if args.debug_nan_loss_at_step is not None and step == args.debug_nan_loss_at_step:
                        logits = logits * float("nan")
                    # 2 = NaN, 1 = inf in this rank's output; the max over ranks, so that every rank stops together
                    bad = 2.0 * torch.isnan(logits).any().float()
                    bad = torch.maximum(bad, torch.isinf(logits).any().float())
                    if world > 1:
                        bad = accelerator.reduce(bad, reduction="max")
                    if bool(bad > 0):
                        raise diverged("loss", float("nan") if float(bad) == 2.0 else float("inf"))
                    loss, mse = bitstream_loss(logits, x0, sigma, loss_type=args.loss_type,
                                               weighting=args.loss_weighting)
                    if not bool(torch.isfinite(loss)):
                        raise diverged("loss", float(loss))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                        if accelerator.mixed_precision != "fp16" and not bool(torch.isfinite(grad_norm)):
                            raise diverged("gradient norm", float(grad_norm))
                    optimizer.step()  # a no-op until the gradients are accumulated (accelerate)
                    optimizer.zero_grad(set_to_none=True)

                # every micro-batch: the estimator gets this batch's samples from every rank
                estimator.update(sigma, mse.detach())
                if not gather_check:
                    gathered = accelerator.gather(sigma.detach().float()).cpu()
                    buffered = estimator.buffer()[0][-gathered.numel():]
                    gather_check = {"world_size": world, "local_batch": int(sigma.numel()),
                                    "rows_added": int(gathered.numel()),
                                    "buffer_matches_all_ranks": bool(torch.equal(buffered, gathered))}
                progress["batches_in_epoch"] += 1
                progress["micro_batches"] += 1
                progress["tokens_seen"] += int(ids.numel()) * world
                running_loss += float(loss.detach())
                running_count += 1

                if not accelerator.sync_gradients:
                    continue
                lr_scheduler.step()
                if ema is not None:
                    ema.update(model)
                progress["global_step"] += 1
                global_step = progress["global_step"]
                bar.update(1)
                refreshed = estimator.maybe_refresh(global_step)

                if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                    logs = {"train/loss": running_loss / max(running_count, 1), "train/lr": lr_scheduler.get_last_lr()[0],
                            "train/grad_norm": float(grad_norm), "train/epoch": progress["epoch"],
                            "entropy/gamma": sigma_sampler.gamma(global_step - 1),
                            "train/tokens_seen": progress["tokens_seen"]}
                    bar.set_postfix(loss=f"{logs['train/loss']:.4f}", lr=f"{logs['train/lr']:.2e}")
                    accelerator.log(logs, step=global_step)
                    running_loss, running_count = 0.0, 0
                if refreshed:
                    mu, std = lognormal_fit(estimator.tables["pdf"], estimator.tables["sigmas"])
                    accelerator.log({"entropy/lognormal_mu": mu, "entropy/lognormal_std": std,
                                     "entropy/refreshes": estimator.num_refreshes}, step=global_step)
                if global_step % args.validation_steps == 0 or global_step == max_train_steps:
                    run_validation(global_step)
                if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
                    progress["last_checkpoint"] = str(
                        save_checkpoint(accelerator, output_dir, _progress_for_file(progress),
                                        args.checkpoints_total_limit))
                if global_step >= max_train_steps:
                    break
        bar.close()
    except TrainingDivergedError as error:
        bar.close()
        summary = _summary(args, progress, estimator, gather_check, started, status="diverged", error=str(error))
        if accelerator.is_main_process:
            _write_json_atomic(output_dir / SUMMARY_FILE, summary)
        accelerator.end_training()
        raise

    # 3. export: EMA weights + scheduler with the learned entropy table + tokenizer(s) + codec
    tables = estimator.tables
    table_source = "learned"
    if tables is None and estimator.refresh(progress["global_step"]):
        tables = estimator.tables
    if tables is None:
        table_source = "lognormal-prior"
        logger.warning("The entropy estimator never reached its gate (num_bins * min_per_bin samples); the exported "
                       "scheduler carries the warm-up log-normal instead of a learned table.")
        tables = current_tables()
    summary = _summary(args, progress, estimator, gather_check, started, status="completed")
    summary["entropy_table_source"] = table_source
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / "pipeline"
    exported = export_pipeline(args, accelerator, model, ema, accelerator.unwrap_model(model).config, tables,
                               tokenizer, code_tokenizer, codec, export_dir, summary)
    samples_by_rank = accelerator.gather(torch.tensor([progress["micro_batches"] * args.train_batch_size],
                                                      device=accelerator.device)).cpu().tolist()
    summary["estimator"]["local_train_samples_by_rank"] = samples_by_rank
    if accelerator.is_main_process:
        summary["export_dir"] = str(exported)
        if args.generate_after_export > 0:
            pipe = BitstreamDiffusionPipeline.from_pretrained(str(exported))
            pipe.set_progress_bar_config(disable=True)
            out = pipe(batch_size=args.generate_after_export, num_inference_steps=args.validation_inference_steps,
                       sequence_length=codec.num_tokens, generator=torch.Generator().manual_seed(args.seed),
                       output_type="text")
            summary["generated_after_export"] = list(out.texts)
            print(f"\nGenerated by BitstreamDiffusionPipeline.from_pretrained({str(exported)!r}) "
                  f"({args.validation_inference_steps} steps, nfe={out.nfe}):")
            for i, text in enumerate(out.texts):
                print(f"[{i}] {text}")
        summary["wall_seconds"] = round(time.time() - started, 2)
        _write_json_atomic(output_dir / SUMMARY_FILE, summary)
        if args.push_to_hub:
            from huggingface_hub import upload_folder

            upload_folder(repo_id=repo_id, folder_path=str(exported), commit_message="End of training",
                          ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*"], token=args.hub_token)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _progress_for_file(progress: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in progress.items() if k != "last_checkpoint"}


def _summary(args, progress, estimator, gather_check, started, *, status: str, error: str | None = None):
    history = progress["validation_history"]
    return {
        "status": status,
        "error": error,
        "global_step": progress["global_step"],
        "epoch": progress["epoch"],
        "micro_batches": progress["micro_batches"],
        "tokens_seen": progress["tokens_seen"],
        "validation_history": history,
        "initial_validation_loss": history[0]["loss"] if history and history[0]["step"] == 0 else None,
        "final_validation_loss": history[-1]["loss"] if history else None,
        "last_checkpoint": progress["last_checkpoint"],
        "estimator": {
            "num_seen": estimator.num_seen,
            "buffer_length": len(estimator),
            "num_refreshes": estimator.num_refreshes,
            "last_refresh_step": estimator.last_refresh_step,
            "gather_check": gather_check,
        },
        "wall_seconds": round(time.time() - started, 2),
    }


if __name__ == "__main__":
    try:
        main(parse_args())
    except TrainingDivergedError as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        sys.exit(1)
