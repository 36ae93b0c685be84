"""Training-side library of CoBit: the objective and its loss, the training sigma distribution, the online
entropy-rate estimator, self-conditioning, the EMA, checkpoints, and the pieces the training script
(``examples/train_bitstream_diffusion``) builds on. The design decisions are explained in ``docs/design.md#training``.

One training step, in the official order (each random draw from one ``generator``)::

    sigma = sampler.draw_sigma(B, step, generator, tables=estimator.tables)      # TrainingSigmaSampler
    x_t = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
    self_cond = self_conditioning_estimate(denoiser, x_t, sigma, generator=generator)
    loss, mse = bitstream_loss(denoiser(x_t, sigma, self_cond), x0, sigma)
    loss.backward(); optimizer.step(); lr_scheduler.step(); ema.update(model)
    estimator.update(sigma, mse)                                                 # every rank, gathered
    step += 1; estimator.maybe_refresh(step)

(:func:`noisy_batch` does the first three lines for a batch of token ids.) The learning-rate schedule is transformers'
``get_scheduler("cosine_with_min_lr", ...)``.

Modules: :mod:`.objective` (one batch's forward pass, seeds, validation loss), :mod:`.checkpointing` (checkpoint
folders and the training state), :mod:`.divergence` (the NaN stop), :mod:`.distributed` (gathering rows from every
process), :mod:`.config_file` (YAML configs for flags), :mod:`.reporting` (logs, the run summary), :mod:`.export`
(the pipeline folder; imported on use, it loads diffusers), and :mod:`.data`: the LM1B, OWT and generic recipes that
turn text into cached token rows (``prepare_token_rows(TextSource(...), DataRecipe(...), tokenizer)``) and
``train_code_tokenizer`` for OWT.

Importing the package is cheap: every name below loads its module on first access, so a command line that only
parses its flags (the training script's ``--help``) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy_exports import lazy_exports

_LAZY_ATTRIBUTES: dict[str, str] = {
    "CheckpointError": ".checkpoint_files",
    "TrainingState": ".checkpointing",
    "load_config_file": ".config_file",
    "parse_args_with_config": ".config_file",
    "str2bool": ".config_file",
    "DataRecipe": ".data",
    "EmptyCorpusError": ".data",
    "EpochShuffleSampler": ".data",
    "TextSource": ".data",
    "TokenRows": ".data",
    "TokenRowsDataset": ".data",
    "build_codec": ".data",
    "prepare_token_rows": ".data",
    "train_code_tokenizer": ".data",
    "GatherFn": ".distributed",
    "accelerate_gather_fn": ".distributed",
    "gather_across_ranks": ".distributed",
    "NonFiniteMonitor": ".divergence",
    "TrainingDivergedError": ".divergence",
    "check_finite": ".divergence",
    "check_finite_logits": ".divergence",
    "nonfinite_logits": ".divergence",
    "EntropyRateEstimator": ".entropy_rate",
    "EntropyTarget": ".entropy_rate",
    "lognormal_fit": ".entropy_rate",
    "TABLE_NAMES": "..schedulers.entropy_tables",
    "check_entropy_tables": "..schedulers.entropy_tables",
    "edges_from_midpoints": "..schedulers.entropy_tables",
    "load_entropy_tables": "..schedulers.entropy_tables",
    "lognormal_prior_tables": "..schedulers.entropy_tables",
    "save_entropy_tables": "..schedulers.entropy_tables",
    "tables_from_config": "..schedulers.entropy_tables",
    "tables_to_config": "..schedulers.entropy_tables",
    "LossType": ".loss",
    "LossWeighting": ".loss",
    "bitstream_loss": ".loss",
    "loss_weight": ".loss",
    "noisy_batch": ".objective",
    "per_example_loss": ".objective",
    "step_seed": ".objective",
    "validation_loss": ".objective",
    "ExponentialMovingAverage": ".optim",
    "Denoiser": ".self_conditioning",
    "self_conditioning_estimate": ".self_conditioning",
    "TrainingSigmaSampler": ".sigma_sampling",
    "entropy_mixing_weight": ".sigma_sampling",
    "sample_lognormal_sigma": ".sigma_sampling",
    "sample_sigma_from_tables": ".sigma_sampling",
}

__all__ = [
    "TABLE_NAMES",
    "DataRecipe",
    "EmptyCorpusError",
    "EpochShuffleSampler",
    "TextSource",
    "TokenRows",
    "TokenRowsDataset",
    "build_codec",
    "prepare_token_rows",
    "train_code_tokenizer",
    "CheckpointError",
    "Denoiser",
    "EntropyRateEstimator",
    "EntropyTarget",
    "ExponentialMovingAverage",
    "GatherFn",
    "LossType",
    "LossWeighting",
    "NonFiniteMonitor",
    "TrainingDivergedError",
    "TrainingSigmaSampler",
    "TrainingState",
    "accelerate_gather_fn",
    "bitstream_loss",
    "check_finite",
    "check_finite_logits",
    "check_entropy_tables",
    "edges_from_midpoints",
    "entropy_mixing_weight",
    "gather_across_ranks",
    "load_entropy_tables",
    "load_config_file",
    "lognormal_fit",
    "lognormal_prior_tables",
    "loss_weight",
    "noisy_batch",
    "nonfinite_logits",
    "parse_args_with_config",
    "per_example_loss",
    "sample_lognormal_sigma",
    "sample_sigma_from_tables",
    "save_entropy_tables",
    "self_conditioning_estimate",
    "step_seed",
    "str2bool",
    "tables_from_config",
    "tables_to_config",
    "validation_loss",
]

if TYPE_CHECKING:
    from ..schedulers.entropy_tables import (
        TABLE_NAMES,
        check_entropy_tables,
        edges_from_midpoints,
        load_entropy_tables,
        lognormal_prior_tables,
        save_entropy_tables,
        tables_from_config,
        tables_to_config,
    )
    from .checkpoint_files import CheckpointError
    from .checkpointing import TrainingState
    from .config_file import load_config_file, parse_args_with_config, str2bool
    from .data import (
        DataRecipe,
        EmptyCorpusError,
        EpochShuffleSampler,
        TextSource,
        TokenRows,
        TokenRowsDataset,
        build_codec,
        prepare_token_rows,
        train_code_tokenizer,
    )
    from .distributed import GatherFn, accelerate_gather_fn, gather_across_ranks
    from .divergence import (
        NonFiniteMonitor,
        TrainingDivergedError,
        check_finite,
        check_finite_logits,
        nonfinite_logits,
    )
    from .entropy_rate import EntropyRateEstimator, EntropyTarget, lognormal_fit
    from .loss import LossType, LossWeighting, bitstream_loss, loss_weight
    from .objective import noisy_batch, per_example_loss, step_seed, validation_loss
    from .optim import ExponentialMovingAverage
    from .self_conditioning import Denoiser, self_conditioning_estimate
    from .sigma_sampling import (
        TrainingSigmaSampler,
        entropy_mixing_weight,
        sample_lognormal_sigma,
        sample_sigma_from_tables,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
