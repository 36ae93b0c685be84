#!/usr/bin/env python
# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
# Licensed under the MIT License.
"""Train a CoBit bitstream diffusion language model (arXiv 2605.07013) with accelerate and export it as a
``BitstreamDiffusionPipeline`` folder (EMA weights, a scheduler with the learned entropy table, tokenizer(s), codec).

The paper's recipe (docs/design.md#training): token ids -> MSB-first bits, ``x_t = x0 + sigma * eps``, the SDT with the
matched-filter residual, EDM-weighted MSE on the bit probabilities; sigma from a truncated log-normal, then a linear
hand-over to the online entropy-rate table (estimated from every rank); self-conditioning with p = 0.5; AdamW (0.9,
0.99, wd 0.01), linear warm-up + cosine to 1e-6, clip 1.0, EMA 0.9999. The reusable pieces live in
``bitstream_diffusion.training``; this script parses the flags, sets up, runs the loop and exports.

    # the quickstart: tiny-wiki on CPU, no download (also what running the script without arguments does)
    python examples/train_bitstream_diffusion/train_bitstream_diffusion.py \
        --config examples/train_bitstream_diffusion/configs/tiny-wiki.yaml
    # the paper's CoBit-S LM1B on 2 GPUs, bf16
    accelerate launch --num_processes 2 examples/train_bitstream_diffusion/train_bitstream_diffusion.py \
        --config examples/train_bitstream_diffusion/configs/cobit-s-lm1b.yaml
    # the autoregressive baseline of the quickstart: a Llama of the SDT's size, the same rows, batch and schedule
    python examples/train_bitstream_diffusion/train_bitstream_diffusion.py \
        --config examples/train_bitstream_diffusion/configs/tiny-wiki-ar.yaml

Every flag can live in the YAML config (keys are the flag names); flags on the command line override the file. The
flags are parsed before torch, accelerate and transformers load (they load in the functions that use them), so
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitstream_diffusion.training.config_file import (
    command_line_value,
    parse_args_with_config,
    resolve_mixed_precision,
    str2bool,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from bitstream_diffusion import SDTConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny-wiki.yaml"  # the quickstart
SUMMARY_FILE = "train_summary.json"
MODEL_OVERRIDE_FLAGS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "dropout")
DATA_FLAGS = ("dataset_name", "train_files", "train_dataset_path")  # each names the training data


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
                      help="A datasets hub id, a local dataset folder (or save_to_disk folder), or "
                           "builtin:wiki_summaries (offline).")
    data.add_argument("--dataset_config_name", type=str, default=None,
                      help="The dataset's configuration (subset) name, for hub datasets that have several.")
    data.add_argument("--dataset_revision", type=str, default=None,
                      help="A hub dataset's git revision (branch, tag or commit); pin it to keep the row cache valid.")
    data.add_argument("--dataset_split", type=str, default="train", help='e.g. "train" or "train[:-100000]"')
    data.add_argument("--train_files", type=str, nargs="+", default=None,
                      help="Local .txt/.json/.jsonl/.csv/.parquet files (globs allowed) instead of --dataset_name.")
    data.add_argument("--train_dataset_path", type=str, default=None,
                      help="A folder written by datasets' save_to_disk (a Dataset, or a DatasetDict whose "
                           "--dataset_split is used) instead of --dataset_name; a save_to_disk folder passed as "
                           "--dataset_name is recognised too.")
    data.add_argument("--validation_split", type=str, default=None,
                      help="A separate validation split of the dataset (e.g. \"train[-100000:]\"); by default the "
                           "last --validation_fraction of the training rows (the official LM1B rule).")
    data.add_argument("--validation_files", type=str, nargs="+", default=None,
                      help="Local files for validation (as --train_files); by default the tail of the training rows.")
    data.add_argument("--validation_fraction", type=float, default=0.005,
                      help="Fraction of the training rows (the last ones) held out for validation.")
    data.add_argument("--max_validation_rows", type=int, default=None, help="Cap the validation rows.")
    data.add_argument("--text_column", type=str, default="text",
                      help="The column of the dataset or of the .json/.jsonl/.csv/.parquet files that holds the text.")
    data.add_argument("--sample_by", type=str, default="line", choices=["line", "paragraph", "document"],
                      help="For .txt files: one example per line, paragraph or file.")
    data.add_argument("--max_train_documents", type=int, default=None, help="Use only the first N documents.")
    data.add_argument("--streaming", type=str2bool, default=False,
                      help="Stream the dataset while preparing the rows (for corpora too large to download first).")
    data.add_argument("--data_cache_dir", type=str, default=None,
                      help="Where prepared rows are cached (default: token_rows/ under the datasets cache, "
                           "HF_DATASETS_CACHE or HF_HOME; see bitstream_diffusion.utils.cache).")
    data.add_argument("--preprocessing_batch_size", type=int, default=1000,
                      help="Documents tokenised per call while preparing the rows (does not change the rows).")
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
    data.add_argument("--dataloader_num_workers", type=int, default=0,
                      help="DataLoader worker processes per training process (0: load in the main process).")

    model = parser.add_argument_group("model")
    model.add_argument("--model_type", type=str, default="cobit", choices=["cobit", "ar"],
                       help="cobit: the SDT; ar: the autoregressive baseline, a transformers LlamaForCausalLM with the "
                            "parameter count of the SDT the model flags describe (within 10%%), trained with "
                            "next-token cross-entropy on the same rows, batch, steps and optimizer.")
    model.add_argument("--model_preset", type=str, default="cobit-s-lm1b",
                       help="cobit-s-lm1b, cobit-s-owt or cobit-m-owt (SDTConfig.from_preset).")
    model.add_argument("--model_config_name_or_path", type=str, default=None,
                       help="An SDTConfig folder or JSON instead of the preset.")
    for name in MODEL_OVERRIDE_FLAGS:
        model.add_argument(f"--{name}", type=float if name == "dropout" else int, default=None,
                           help="Overrides the value of the preset or config.")
    model.add_argument("--gradient_checkpointing", type=str2bool, default=False,
                       help="Recompute activations in the backward pass: less memory, about a third more compute.")

    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--p_mean", type=float, default=-1.2,
                           help="Mean of ln(sigma) of the warm-up log-normal training noise (the paper: -1.2).")
    diffusion.add_argument("--p_std", type=float, default=1.2,
                           help="Standard deviation of ln(sigma) of the warm-up log-normal (the paper: 1.2).")
    diffusion.add_argument("--sigma_min", type=float, default=0.002,
                           help="Smallest training and sampling noise level.")
    diffusion.add_argument("--sigma_max", type=float, default=80.0,
                           help="Largest training and sampling noise level.")
    diffusion.add_argument("--self_conditioning_prob", type=float, default=0.5,
                           help="Probability that a row gets the self-conditioning estimate of a first pass (0: off).")
    diffusion.add_argument("--loss_type", type=str, default="binary_sm", choices=["binary_sm", "binary_ce"],
                           help="binary_sm: squared error of the bit probabilities (the paper); binary_ce: "
                                "cross-entropy.")
    diffusion.add_argument("--loss_weighting", type=str, default="edm", choices=["edm", "none"],
                           help="edm: the EDM weight lambda(sigma) of each row (the paper); none: unweighted.")
    diffusion.add_argument("--entropy_num_bins", type=int, default=128,
                           help="Log-sigma bins of the learned entropy-rate table.")
    diffusion.add_argument("--entropy_min_per_bin", type=int, default=100,
                           help="The table is first estimated once the buffer holds num_bins x this many samples.")
    diffusion.add_argument("--entropy_buffer_size", type=int, default=800_000,
                           help="(sigma, error) samples kept in the estimator's FIFO buffer, all processes together.")
    diffusion.add_argument("--entropy_update_every", type=int, default=2000,
                           help="Re-estimate the table every this many optimizer steps.")
    diffusion.add_argument("--entropy_warmup_steps", type=int, default=40_000,
                           help="Steps of pure log-normal training noise before the hand-over to the table starts.")
    diffusion.add_argument("--entropy_transition_steps", type=int, default=10_000,
                           help="Steps of the linear hand-over from the log-normal to the learned table.")
    diffusion.add_argument("--entropy_gamma_max", type=float, default=1.0,
                           help="Share of rows whose sigma comes from the table once the hand-over is done.")
    diffusion.add_argument("--entropy_regularizer_c", type=float, default=0.1,
                           help="c of the low-sigma regulariser g(s) = s^n / (s^n + c^n) of the table.")
    diffusion.add_argument("--entropy_regularizer_n", type=float, default=3.0,
                           help="n of the low-sigma regulariser g(s) = s^n / (s^n + c^n) of the table.")
    diffusion.add_argument("--entropy_target", type=str, default="sqrt-rate", choices=["sqrt-rate", "rate"],
                           help="sqrt-rate: pdf ~ g * sqrt(mean(mse / sigma^2)) (the paper); rate: without the root.")
    diffusion.add_argument("--entropy_include_validation", type=str2bool, default=True,
                           help="Validation samples also enter the estimator's buffer (as in the official code).")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--train_batch_size", type=int, default=32, help="Per device.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="Micro-batches per optimizer step (the global batch is this x batch size x processes).")
    optim.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps (and the cosine horizon).")
    optim.add_argument("--num_train_epochs", type=int, default=None, help="Used when --max_train_steps is unset.")
    optim.add_argument("--learning_rate", type=float, default=3e-4,
                       help="Peak learning rate, reached after the warm-up (the paper: 3e-4 for S, 2e-4 for M).")
    optim.add_argument("--lr_scheduler", type=str, default="warmup_cosine",
                       choices=["warmup_cosine", "constant", "constant_with_warmup", "linear", "cosine"],
                       help="warmup_cosine: the paper's linear warm-up from 0, then cosine to --lr_min (transformers' "
                            "cosine_with_min_lr); the others are transformers' schedules of the same name.")
    optim.add_argument("--lr_warmup_steps", type=int, default=2500,
                       help="Steps of the linear learning-rate warm-up from 0.")
    optim.add_argument("--lr_min", type=float, default=1e-6, help="Floor of the cosine decay.")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    optim.add_argument("--adam_beta2", type=float, default=0.99, help="AdamW beta2.")
    optim.add_argument("--adam_weight_decay", type=float, default=0.01, help="AdamW weight decay.")
    optim.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    optim.add_argument("--max_grad_norm", type=float, default=1.0,
                       help="Clip the gradient norm to this value (0: no clipping).")
    optim.add_argument("--use_ema", type=str2bool, default=True,
                       help="Keep an EMA of the weights; validation and export use it.")
    optim.add_argument("--ema_decay", type=float, default=0.9999,
                       help="Constant EMA decay, from the first step (the paper: 0.9999).")
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                       help="Given here on the command line it wins; otherwise what `accelerate launch` passes on "
                            "(its --mixed_precision or config file) or accelerate's default config file wins over "
                            "the value of --config; else no. The run logs which one set it. The paper: bf16.")
    optim.add_argument("--allow_tf32", type=str2bool, default=False,
                       help="Let CUDA matmuls and convolutions use TF32 (faster on Ampere and later, less exact).")
    optim.add_argument("--flush_denormal", type=str2bool, default=True,
                       help="Flush denormal floats to zero in CPU ops: on CPU the zero-initialised adaLN layers "
                            "otherwise make the first hundreds of steps up to 20x slower.")
    optim.add_argument("--seed", type=int, default=42,
                       help="Seeds the initial weights, the data order and every random draw of training.")

    run = parser.add_argument_group("checkpoints, validation and logging")
    run.add_argument("--output_dir", type=str, default="outputs/cobit",
                     help="Checkpoints, logs, samples, train_summary.json and the exported pipeline/.")
    run.add_argument("--logging_dir", type=str, default="logs", help="Relative to --output_dir.")
    run.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "all", "none"],
                     help="Where metrics and validation texts go.")
    run.add_argument("--tracker_project_name", type=str, default="train_bitstream_diffusion",
                     help="Project name for the trackers (the wandb project).")
    run.add_argument("--logging_steps", type=int, default=10,
                     help="Log the training loss, lr and gradient norm every this many optimizer steps.")
    run.add_argument("--checkpointing_steps", type=int, default=5000,
                     help="Write checkpoint-N every this many optimizer steps (and at the end).")
    run.add_argument("--checkpoints_total_limit", type=int, default=None,
                     help="Keep only the newest this many checkpoints (default: all).")
    run.add_argument("--resume_from_checkpoint", type=str, default=None,
                     help='A checkpoint folder, or "latest" for the newest complete one in --output_dir. The folder '
                          "is checked first (every file intact, no pickled objects, the RNG states readable).")
    run.add_argument("--resume_without_rng_state", type=str2bool, default=False,
                     help="Resume even when the checkpoint's RNG states are missing or unreadable (a loud warning: "
                          "the run is then not bit-identical to an uninterrupted one). By default that is an error.")
    run.add_argument("--validation_steps", type=int, default=5000,
                     help="Validate (EMA loss and generated texts) every this many optimizer steps (and at the end).")
    run.add_argument("--validation_at_start", type=str2bool, default=True,
                     help="Validate the untrained model (step 0) too.")
    run.add_argument("--validation_batch_size", type=int, default=None, help="Default: --train_batch_size.")
    run.add_argument("--max_validation_batches", type=int, default=None,
                     help="Cap the validation batches per process (default: all validation rows).")
    run.add_argument("--validation_vlb_batches", type=int, default=4,
                     help="Validation batches (per process) on which the variational bound (vlb_bpd, bits per "
                          "token, ppl_bound) is computed with the EMA weights; 0 disables it. AR runs report the "
                          "exact perplexity on the --max_validation_batches batches instead.")
    run.add_argument("--validation_vlb_num_mc_samples", type=int, default=1,
                     help="Log-sigma draws per row of the bound (K): each batch costs 1 + K forward passes.")
    run.add_argument("--num_validation_samples", type=int, default=4, help="Texts generated at each validation.")
    run.add_argument("--validation_inference_steps", type=int, default=128,
                     help="Sampling steps of the texts generated at validation and after export.")
    run.add_argument("--validation_gamma", type=float, default=0.0,
                     help="Churn of the sampler for the validation texts.")
    run.add_argument("--export_dir", type=str, default=None, help="Default: <output_dir>/pipeline.")
    run.add_argument("--scheduler_gamma", type=float, default=None,
                     help="Churn stored in the exported scheduler; default: the paper's 0.2 at 256 NFE.")
    run.add_argument("--generate_after_export", type=int, default=0,
                     help="Load the exported folder with from_pretrained and print this many generated texts.")
    run.add_argument("--push_to_hub", type=str2bool, default=False,
                     help="Upload the exported folder to the hub at the end.")
    run.add_argument("--hub_model_id", type=str, default=None,
                     help="The hub repository to push to (default: the name of --output_dir).")
    run.add_argument("--hub_token", type=str, default=None,
                     help="Hub token (default: the one of `hf auth login`); never saved with the run.")
    run.add_argument("--hub_private_repo", type=str2bool, default=False,
                     help="Create the hub repository as private.")
    run.add_argument("--debug_nan_loss_at_step", type=int, default=None,
                     help="Testing aid: make the loss NaN at this optimizer step (0-based) to exercise the stop.")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with ``--config FILE`` as defaults; without a config and without data flags, the quickstart.

    ``args.mixed_precision`` is resolved here (``resolve_mixed_precision``: the flag on the command line, else
    accelerate's setting, else the config file's) and ``args.mixed_precision_source`` says where it came from.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse_args_with_config(parser, argv, default_config=DEFAULT_CONFIG, default_config_unless=DATA_FLAGS)
    given = command_line_value(parser, argv, "mixed_precision")
    args.mixed_precision, args.mixed_precision_source = resolve_mixed_precision(
        given, None if given is not None else args.mixed_precision, config_file=args.config
    )
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in DATA_FLAGS if getattr(args, name)]
    if not given:
        raise ValueError("No training data: pass --dataset_name (e.g. builtin:wiki_summaries), --train_files or "
                         "--train_dataset_path.")
    if len(given) > 1:
        raise ValueError(f"Pass one of --dataset_name, --train_files and --train_dataset_path, not "
                         f"{' and '.join(given)}.")
    if args.max_train_steps is None and args.num_train_epochs is None:
        raise ValueError("Set --max_train_steps (the paper: 1,000,000) or --num_train_epochs.")
    positive = ["train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps",
                "logging_steps", "entropy_num_bins", "entropy_buffer_size"]
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}.")
    if not 0.0 <= args.self_conditioning_prob <= 1.0:
        raise ValueError(f"--self_conditioning_prob must lie in [0, 1], got {args.self_conditioning_prob}.")
    if args.validation_vlb_batches < 0 or args.validation_vlb_num_mc_samples < 1:
        raise ValueError("--validation_vlb_batches must be >= 0 (0 disables the bound) and "
                         f"--validation_vlb_num_mc_samples >= 1, got {args.validation_vlb_batches} and "
                         f"{args.validation_vlb_num_mc_samples}.")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema_decay must lie in [0, 1], got {args.ema_decay}.")
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).name
    if args.num_tokens is None:
        args.num_tokens = 1024 if args.data_recipe == "owt" else 128


def build_data(args, accelerator: Accelerator):
    """Tokenizers, codec and the (cached) train/validation row datasets."""
    from bitstream_diffusion.training import autoregressive_data, reporting
    from bitstream_diffusion.training.data import (
        DataRecipe,
        TextSource,
        TokenRowsDataset,
        build_codec,
        load_code_tokenizer,
        load_text_tokenizer,
        prepare_token_rows,
        split_train_validation,
    )

    tokenizer = load_text_tokenizer(args.tokenizer_name_or_path)
    code_tokenizer = load_code_tokenizer(args.code_tokenizer_name_or_path)
    recipe = DataRecipe(args.data_recipe, num_tokens=args.num_tokens, bits_per_token=args.bits_per_token,
                        boundary=args.boundary_token, base_seq_len=args.owt_base_seq_len)
    prepare = prepare_token_rows
    if args.model_type == "ar" and args.data_recipe == "owt":  # the baseline reads the GPT-2 windows, not codes
        codec = autoregressive_data.GPT2WindowCodec(tokenizer, args.owt_base_seq_len)
        prepare = autoregressive_data.prepare_gpt2_windows
    else:
        codec = build_codec(recipe, tokenizer, code_tokenizer)  # a tokenizer too wide for bits_per_token fails here

    def source(split: str, files: list[str] | None, name: str | None, path: str | None = None) -> TextSource:
        return TextSource(dataset_name=name, dataset_path=path, dataset_config_name=args.dataset_config_name,
                          split=split, data_files=files, text_column=args.text_column, sample_by=args.sample_by,
                          streaming=args.streaming, max_documents=args.max_train_documents,
                          revision=args.dataset_revision)

    train_source = source(args.dataset_split, args.train_files, args.dataset_name, args.train_dataset_path)
    kwargs = dict(cache_dir=args.data_cache_dir, batch_size=args.preprocessing_batch_size,
                  show_progress=accelerator.is_local_main_process and reporting.progress_bars_enabled())
    with accelerator.main_process_first():
        train_rows = prepare(train_source, recipe, tokenizer, code_tokenizer, **kwargs)
        if args.validation_split is not None or args.validation_files:
            own_files = bool(args.validation_files)
            val_source = source(args.validation_split or "train", args.validation_files,
                                None if own_files else args.dataset_name,
                                None if own_files else args.train_dataset_path)
            val_source.max_documents = None
            val_rows = prepare(val_source, recipe, tokenizer, code_tokenizer, **kwargs)
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


def build_model_config(args, bits_per_token: int, num_tokens: int) -> SDTConfig:
    from bitstream_diffusion import SDTConfig

    overrides = {name: getattr(args, name) for name in MODEL_OVERRIDE_FLAGS if getattr(args, name) is not None}
    overrides.update(bits_per_token=int(bits_per_token), max_position_embeddings=int(num_tokens))
    if args.model_config_name_or_path:
        return SDTConfig.from_pretrained(args.model_config_name_or_path, **overrides)
    return SDTConfig.from_preset(args.model_preset, **overrides)


def build_model(args, config: SDTConfig, codec, tokenizer):
    """The SDT of ``config``, or with ``--model_type ar`` the transformers causal LM of its size."""
    from bitstream_diffusion import SDTModel
    from bitstream_diffusion.training import autoregressive

    if args.model_type == "ar":
        return autoregressive.build_causal_lm(autoregressive.ar_config_matching_sdt(
            config, codec.vocab_size, max_position_embeddings=codec.num_tokens,
            **autoregressive.causal_lm_token_ids(tokenizer)))
    if args.self_conditioning_prob > 0 and not config.self_conditioning:
        raise ValueError("--self_conditioning_prob > 0 needs a model with self_conditioning=True.")
    return SDTModel(config)


def main(args: argparse.Namespace) -> dict[str, Any]:
    # the heavy libraries load here, after the flags are parsed (--help never waits for them)
    from datetime import timedelta

    import torch
    import yaml
    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.logging import get_logger
    from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler
    from transformers.utils.logging import tqdm

    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler
    from bitstream_diffusion.training import (
        EntropyRateEstimator,
        ExponentialMovingAverage,
        NonFiniteMonitor,
        TrainingDivergedError,
        TrainingSigmaSampler,
        TrainingState,
        accelerate_gather_fn,
        autoregressive,
        autoregressive_export,
        bitstream_loss,
        checkpointing,
        export,
        likelihood,
        lognormal_fit,
        lognormal_prior_tables,
        noisy_batch,
        reporting,
        step_seed,
        validation_loss,
    )
    from bitstream_diffusion.training.divergence import check_finite, check_finite_weights
    from bitstream_diffusion.training.objective import TRAIN_STREAM
    from bitstream_diffusion.utils.atomic_io import write_json_atomic, write_text_atomic

    started = time.time()
    if args.flush_denormal:  # before any thread pool starts: threads inherit the floating-point mode
        torch.set_flush_denormal(True)
    output_dir = Path(args.output_dir)
    # several processes without an accelerator (`accelerate launch --multi_gpu` with CUDA_VISIBLE_DEVICES=""): gloo
    # on CPU (`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up)
    cpu_multiprocess = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=cpu_multiprocess,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir),
                                            logging_dir=str(output_dir / args.logging_dir)),
        # epoch e visits randperm(n) drawn from seed + e on every process: a resumed run sees the same batches
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=1800))],
    )
    reporting.configure_logging(accelerator)
    logger = get_logger(__name__)
    logger.info(accelerator.state, main_process_only=False)
    logger.info(f"Mixed precision: {accelerator.mixed_precision} (set by "
                f"{getattr(args, 'mixed_precision_source', 'the caller')}).")
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    repo_id = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for note in checkpointing.recover_checkpoints(output_dir):  # after a run killed while saving or rotating
            logger.warning(f"Checkpoints in {output_dir}: {note}.")
        flags = yaml.safe_dump(reporting.plain_args(args), sort_keys=True)
        write_text_atomic(output_dir / "training_config.yaml", flags)
        if args.push_to_hub:
            from huggingface_hub import create_repo

            repo_id = create_repo(repo_id=args.hub_model_id, exist_ok=True, token=args.hub_token,
                                  private=args.hub_private_repo).repo_id
    accelerator.wait_for_everyone()

    # 1. data (prepared once, by the main process first; the others reuse the cache)
    tokenizer, code_tokenizer, codec, train_dataset, val_dataset = build_data(args, accelerator)
    bits_per_token, num_tokens = codec.bits_per_token, codec.num_tokens
    hf_code_tokenizer = code_tokenizer  # a transformers tokenizer, as the pipeline holds it

    # 2. model, EMA, optimiser, schedules, estimator (same seed on every rank: identical initial weights)
    set_seed(args.seed)
    config = build_model_config(args, bits_per_token, num_tokens)
    is_ar = args.model_type == "ar"
    model = build_model(args, config, codec, tokenizer)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    estimator = EntropyRateEstimator(
        num_bins=args.entropy_num_bins, min_per_bin=args.entropy_min_per_bin, c=args.entropy_regularizer_c,
        n=args.entropy_regularizer_n, target=args.entropy_target, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
        buffer_size=args.entropy_buffer_size, update_every=args.entropy_update_every,
        gather_fn=accelerate_gather_fn(accelerator),  # every rank's samples, in rank order
    )
    sigma_sampler = TrainingSigmaSampler(
        p_mean=args.p_mean, p_std=args.p_std, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
        warmup_steps=args.entropy_warmup_steps, transition_steps=args.entropy_transition_steps,
        gamma_max=args.entropy_gamma_max,
    )
    # validation draws sigma from the warm-up log-normal at every evaluation, so the numbers compare over training
    reference_sampler = TrainingSigmaSampler(p_mean=args.p_mean, p_std=args.p_std, sigma_min=args.sigma_min,
                                             sigma_max=args.sigma_max, warmup_steps=0, transition_steps=0,
                                             gamma_max=0.0)

    train_dataloader = DataLoader(
        train_dataset, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
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
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    # stepped by hand once per optimizer step; the EMA shadows the prepared parameters (under FSDP: this rank's shards)
    if args.lr_scheduler == "warmup_cosine":  # the paper: linear warm-up from 0, then cosine to --lr_min
        lr_scheduler = get_scheduler("cosine_with_min_lr", optimizer, scheduler_specific_kwargs={"min_lr": args.lr_min},
                                     num_warmup_steps=min(args.lr_warmup_steps, max_train_steps),
                                     num_training_steps=max_train_steps)
    else:
        lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                     num_training_steps=max_train_steps)
    ema = ExponentialMovingAverage(model, decay=args.ema_decay) if args.use_ema else None
    # saved as JSON and safetensors beside accelerate's files (never pickled)
    checkpointing.register_checkpoint_state(accelerator, lr_scheduler=lr_scheduler, estimator=estimator, ema=ema)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=reporting.tracker_config(args))

    state, last_checkpoint = TrainingState(), None
    resume_path = checkpointing.resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if args.resume_from_checkpoint and resume_path is None:
        logger.info(f"No checkpoint found for '{args.resume_from_checkpoint}' in {output_dir}; starting anew.")
    if resume_path is not None:
        logger.info(f"Resuming from {resume_path}")
        state = checkpointing.load_checkpoint(accelerator, resume_path,
                                              require_rng_state=not args.resume_without_rng_state)
        try:
            state.check_fits_run(max_train_steps=max_train_steps, batches_per_epoch=len(train_dataloader),
                                 checkpoint_step=checkpointing.checkpoint_step(resume_path),
                                 source=str(resume_path / checkpointing.TRAINING_STATE_FILE))
        except ValueError as error:
            raise checkpointing.CheckpointError(str(error)) from error
        last_checkpoint = str(resume_path)

    world = accelerator.num_processes
    unwrapped = accelerator.unwrap_model(model)
    logger.info("***** Running training *****")
    logger.info(f"  Rows: {len(train_dataset)} train, {len(val_dataset)} validation; {num_tokens} tokens x "
                f"{bits_per_token} bits; model: {sum(p.numel() for p in unwrapped.parameters()):,} parameters")
    if is_ar:
        logger.info(f"  Autoregressive baseline {type(unwrapped).__name__} (width {unwrapped.config.hidden_size}, "
                    f"{unwrapped.config.num_hidden_layers} layers) of the SDT's size: "
                    f"{autoregressive.sdt_num_parameters(config):,} parameters")
    logger.info(f"  Batch: {args.train_batch_size} per device x {world} process(es) x "
                f"{args.gradient_accumulation_steps} accumulation; optimizer steps: {max_train_steps} "
                f"({steps_per_epoch} per epoch), starting at {state.global_step}")

    def current_tables():
        return estimator.tables if estimator.tables is not None else lognormal_prior_tables(
            args.entropy_num_bins, args.p_mean, args.p_std, args.sigma_min, args.sigma_max)

    def run_validation(step: int) -> None:
        """EMA weights, eval mode: the loss on the validation rows (every process) and a few texts (main process;
        not possible with sharded FSDP weights). A NaN loss stops the run before a checkpoint is written."""
        texts: list[str] = []
        metrics: dict[str, float] = {}
        with ema.average_parameters(model) if ema is not None else contextlib.nullcontext():
            model.eval()
            try:
                if is_ar:  # the exact held-out perplexity; the loss is nats per predicted token
                    metrics = likelihood.validation_perplexity(accelerator, model, val_dataloader,
                                                               start_token_id=unwrapped.config.bos_token_id,
                                                               max_batches=args.max_validation_batches)
                    loss = metrics.pop("loss")
                else:
                    loss = validation_loss(
                        accelerator, model, val_dataloader, bits_per_token=bits_per_token,
                        reference_sampler=reference_sampler, seed=args.seed,
                        self_conditioning_prob=args.self_conditioning_prob, loss_type=args.loss_type,
                        weighting=args.loss_weighting, max_batches=args.max_validation_batches,
                        estimator=estimator if args.entropy_include_validation else None,
                    )
                    if args.validation_vlb_batches > 0:  # the variational bound on the likelihood, in bits
                        metrics = likelihood.validation_vlb(
                            accelerator, model, val_dataloader, bits_per_token=bits_per_token,
                            num_batches=args.validation_vlb_batches,
                            num_mc_samples=args.validation_vlb_num_mc_samples, seed=args.seed,
                        )
                if not math.isfinite(loss):
                    raise TrainingDivergedError.at("EMA validation loss", loss, state, last_checkpoint, step=step)
                sampling = args.num_validation_samples > 0 and accelerator.distributed_type != DistributedType.FSDP
                if sampling and accelerator.is_main_process and is_ar:
                    texts, _ = autoregressive_export.generate_texts(
                        unwrapped, codec, args.num_validation_samples, seed=args.seed,
                        start_token_id=unwrapped.config.bos_token_id)
                elif sampling and accelerator.is_main_process:
                    pipe = export.build_pipeline(unwrapped, current_tables(), tokenizer, hf_code_tokenizer, codec,
                                                 gamma=args.validation_gamma, sigma_min=args.sigma_min,
                                                 sigma_max=args.sigma_max)
                    texts, _ = export.generate_texts(pipe, args.num_validation_samples, gamma=args.validation_gamma,
                                                     num_inference_steps=args.validation_inference_steps,
                                                     seed=args.seed)
            finally:
                model.train()
        state.validation_history.append({"step": step, "loss": loss, **metrics})
        accelerator.log({"val/loss": loss, **{f"val/{name}": value for name, value in metrics.items()},
                         **({} if is_ar else {"entropy/buffer": len(estimator)})}, step=step)
        if accelerator.is_main_process:
            if texts:
                reporting.log_texts(accelerator, texts, step, output_dir)
            likelihood_text = "".join(f", {name} {metrics[name]:.4g}" for name in ("vlb_bpd", "vlb_bpd_stderr",
                                      "bits_per_token", "ppl_bound", "ppl") if name in metrics)
            logger.info(f"step {step}: EMA validation loss {loss:.4f}{likelihood_text}"
                        + (f" | {texts[0][:120]!r}" if texts else ""))
        accelerator.wait_for_everyone()

    def weights_and_shadows():
        return itertools.chain(model.parameters(), ema.shadow.values() if ema is not None else ())

    # 3. the training loop
    bar = tqdm(total=max_train_steps, initial=state.global_step, desc="Steps",
               disable=not (accelerator.is_local_main_process and reporting.progress_bars_enabled()))
    running_loss, running_count = 0.0, 0
    generator = torch.Generator(device=accelerator.device)
    grad_norm = torch.tensor(float("nan"))
    gather_check: dict[str, Any] = {}
    try:
        if state.global_step == 0 and resume_path is None and args.validation_at_start:
            run_validation(0)
        for ids in checkpointing.resumable_batches(accelerator, train_dataloader, state, max_train_steps):
            step = state.global_step
            generator.manual_seed(step_seed(args.seed, TRAIN_STREAM, accelerator.process_index, state.micro_batches))
            with accelerator.accumulate(model):
                # a NaN or an inf in the model input, the self-conditioning estimate or the loss stops every rank here
                monitor = NonFiniteMonitor()
                if is_ar:  # next-token cross-entropy on the same rows, each read after the start token
                    logits = model(input_ids=autoregressive.causal_lm_inputs(ids, unwrapped.config.bos_token_id)).logits
                else:
                    x0, sigma, logits = noisy_batch(model, ids, bits_per_token=bits_per_token,
                                                    sigma_sampler=sigma_sampler, step=step, tables=estimator.tables,
                                                    generator=generator,
                                                    self_conditioning_prob=args.self_conditioning_prob,
                                                    monitor=monitor)
                if args.debug_nan_loss_at_step is not None and step == args.debug_nan_loss_at_step:
                    logits = logits * float("nan")
                monitor.observe("loss", logits)
                monitor.check(accelerator, state, last_checkpoint)
                if is_ar:
                    loss = autoregressive.next_token_loss(logits, ids)
                else:
                    loss, mse = bitstream_loss(logits, x0, sigma, loss_type=args.loss_type,
                                               weighting=args.loss_weighting)
                check_finite("loss", loss, state, last_checkpoint)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    max_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if accelerator.mixed_precision != "fp16":  # under fp16 the grad scaler skips overflowed steps
                        check_finite("gradient norm", grad_norm, state, last_checkpoint)
                optimizer.step()  # a no-op until the gradients are accumulated (accelerate)
                optimizer.zero_grad(set_to_none=True)

            # every micro-batch: the estimator gets this batch's samples from every rank
            if not is_ar:
                estimator.update(sigma, mse.detach())
                if not gather_check:  # recorded once, for the summary: the buffer holds every rank's rows
                    gather_check = reporting.check_gathered_rows(accelerator, estimator, sigma)
            state.batches_in_epoch += 1
            state.micro_batches += 1
            state.tokens_seen += int(ids.numel()) * world
            running_loss += float(loss.detach())
            running_count += 1
            if not accelerator.sync_gradients:
                continue

            lr_scheduler.step()
            if ema is not None:
                ema.update(model)
            state.global_step += 1
            global_step = state.global_step
            bar.update(1)
            refreshed = estimator.maybe_refresh(global_step)
            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                logs = {"train/loss": running_loss / max(running_count, 1), "train/lr": lr_scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm), "train/epoch": state.epoch,
                        "train/tokens_seen": state.tokens_seen}
                if not is_ar:
                    logs["entropy/gamma"] = sigma_sampler.gamma(global_step - 1)
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
                check_finite_weights(weights_and_shadows(), accelerator, state, last_checkpoint)  # only good ones
                saved = checkpointing.save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
                last_checkpoint = str(saved)
    except TrainingDivergedError as error:
        bar.close()
        summary = reporting.run_summary(state, estimator, status="diverged", started=started, error=str(error),
                                        last_checkpoint=last_checkpoint, gather_check=gather_check)
        if accelerator.is_main_process:
            write_json_atomic(output_dir / SUMMARY_FILE, summary)
        accelerator.end_training()
        raise
    bar.close()

    # 4. export: EMA weights + scheduler with the learned entropy table + tokenizer(s) + codec (AR: a transformers
    #    causal-LM folder with the tokenizer(s) and the codec); both folders carry the training record
    table_source = None if is_ar else "learned"
    if not is_ar and estimator.tables is None and not estimator.refresh(state.global_step):
        table_source = "lognormal-prior"
        logger.warning("The entropy estimator never reached its gate (num_bins * min_per_bin samples); the exported "
                       "scheduler carries the warm-up log-normal instead of a learned table.")
    tables = current_tables()
    summary = reporting.run_summary(state, estimator, status="completed", started=started,
                                    last_checkpoint=last_checkpoint, gather_check=gather_check)
    summary["entropy_table_source"] = table_source
    export_dir = Path(args.export_dir) if args.export_dir else output_dir / ("model" if is_ar else "pipeline")
    dataset = args.dataset_name or "local files"
    record = autoregressive_export.folder_summary(
        model_type=args.model_type, state=state, num_parameters=sum(p.numel() for p in unwrapped.parameters()),
        sdt_num_parameters=autoregressive.sdt_num_parameters(config), data_recipe=args.data_recipe, dataset=dataset,
        num_tokens=num_tokens)
    if is_ar:
        card = autoregressive_export.model_card(
            output_dir.name, recipe=args.data_recipe, dataset=dataset, global_step=state.global_step,
            train_tokens=record["train_tokens"], num_parameters=record["num_parameters"],
            sdt_num_parameters=record["sdt_num_parameters"], validation=record["final_validation"])
        exported = autoregressive_export.export_causal_lm(
            accelerator, model, ema, export_dir, tokenizer=tokenizer, num_tokens=num_tokens, model_card=card,
            training_config=reporting.plain_args(args), folder_summary=record)
    else:
        card = export.model_card(output_dir.name, recipe=args.data_recipe, dataset=dataset,
                                 global_step=state.global_step, validation_loss=summary["final_validation_loss"])
        gamma = args.scheduler_gamma
        gamma = EntropyRateScheduler.gamma_from_paper(0.2, 256) if gamma is None else gamma
        exported = export.export_pipeline(
            accelerator, model, ema, export_dir, tables=tables, tokenizer=tokenizer,
            code_tokenizer=hf_code_tokenizer, codec=codec, gamma=gamma, sigma_min=args.sigma_min,
            sigma_max=args.sigma_max, model_card=card, training_config=reporting.plain_args(args),
        )
        if exported is not None:
            write_json_atomic(exported / autoregressive_export.FOLDER_SUMMARY_FILE, record)
    samples_by_rank = accelerator.gather(torch.tensor([state.micro_batches * args.train_batch_size],
                                                      device=accelerator.device)).cpu().tolist()
    summary["estimator"]["local_train_samples_by_rank"] = samples_by_rank
    if accelerator.is_main_process:
        summary["export_dir"] = str(exported)
        if args.generate_after_export > 0 and is_ar:  # the folder as a user loads it
            folder = autoregressive_export.load_causal_lm_folder(exported)
            texts, nfe = autoregressive_export.generate_texts(folder.model, folder.codec, args.generate_after_export,
                                                              start_token_id=folder.start_token_id, seed=args.seed)
            summary["generated_after_export"] = texts
            print(f"\nGenerated by AutoModelForCausalLM.from_pretrained({str(exported)!r}) (nfe={nfe}):")
            print("\n".join(f"[{i}] {text}" for i, text in enumerate(texts)))
        elif args.generate_after_export > 0:  # the folder as a user loads it
            texts, nfe = export.generate_texts(BitstreamDiffusionPipeline.from_pretrained(str(exported)),
                                               args.generate_after_export, seed=args.seed,
                                               num_inference_steps=args.validation_inference_steps)
            summary["generated_after_export"] = texts
            print(f"\nGenerated by BitstreamDiffusionPipeline.from_pretrained({str(exported)!r}) "
                  f"({args.validation_inference_steps} steps, nfe={nfe}):")
            print("\n".join(f"[{i}] {text}" for i, text in enumerate(texts)))
        summary["wall_seconds"] = round(time.time() - started, 2)
        write_json_atomic(output_dir / SUMMARY_FILE, summary)
        if args.push_to_hub:
            from huggingface_hub import upload_folder

            upload_folder(repo_id=repo_id, folder_path=str(exported), commit_message="End of training",
                          ignore_patterns=["checkpoint-*", ".checkpoint-*", "logs/*"], token=args.hub_token)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary



def cli(argv: list[str] | None = None) -> int:
    """The command line: parse the flags (``--help`` exits here, before torch loads), train, and turn the errors a
    user can act on (divergence, an unusable checkpoint, a full disk, no text) into a message and exit code 1."""
    args = parse_args(argv)
    from bitstream_diffusion.training import CheckpointError, EmptyCorpusError, TrainingDivergedError

    try:
        main(args)
    except (TrainingDivergedError, CheckpointError, EmptyCorpusError) as error:
        print(f"\nERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
