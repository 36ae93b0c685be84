"""Training-side library of CoBit: the loss, the training σ distribution, the online entropy-rate estimator,
self-conditioning, and the paper's LR schedule and EMA (REFERENCE_TRAINING §4–6, DESIGN §5.2, §5.7).

One training step, in the official order (each random draw from one ``generator``)::

    sigma = sampler.draw_sigma(B, step, generator, tables=estimator.tables)      # TrainingSigmaSampler
    x_t = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
    self_cond = self_conditioning_estimate(denoiser, x_t, sigma, generator=generator)
    loss, mse = bitstream_loss(denoiser(x_t, sigma, self_cond), x0, sigma)
    loss.backward(); optimizer.step(); lr_scheduler.step(); ema.update(model)
    estimator.update(sigma, mse)                                                 # every rank, gathered
    step += 1; estimator.maybe_refresh(step)

Data (:mod:`.data`): the LM1B, OWT and generic recipes that turn text into cached token rows
(``prepare_token_rows(TextSource(...), DataRecipe(...), tokenizer)``), and ``train_code_tokenizer`` for OWT.
"""

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
from .distributed import GatherFn, gather_across_ranks
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
from .optim import ExponentialMovingAverage, get_lr_lambda, warmup_cosine_lr
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
    "TrainingSigmaSampler",
    "bitstream_loss",
    "check_entropy_tables",
    "edges_from_midpoints",
    "entropy_mixing_weight",
    "gather_across_ranks",
    "get_lr_lambda",
    "load_entropy_tables",
    "lognormal_fit",
    "lognormal_prior_tables",
    "loss_weight",
    "sample_lognormal_sigma",
    "sample_sigma_from_tables",
    "save_entropy_tables",
    "self_conditioning_estimate",
    "tables_from_config",
    "tables_to_config",
    "warmup_cosine_lr",
]
