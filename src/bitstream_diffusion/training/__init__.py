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
"""

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
from .divergence import TrainingDivergedError, check_finite, check_finite_logits, nonfinite_logits
from .entropy_rate import EntropyRateEstimator, EntropyTarget, lognormal_fit
from .entropy_tables import (
    TABLE_NAMES,
    check_entropy_tables,
    edges_from_midpoints,
    load_entropy_tables,
    lognormal_prior_tables,
    save_entropy_tables,
    tables_from_config,
    tables_to_config,
)
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
    "Denoiser",
    "EntropyRateEstimator",
    "EntropyTarget",
    "ExponentialMovingAverage",
    "GatherFn",
    "LossType",
    "LossWeighting",
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
