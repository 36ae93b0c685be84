"""The training objective of one batch: clean bits, the noise level and noise, self-conditioning, the denoiser's
logits, and the loss; plus the same objective with fixed draws for validation (see ``docs/design.md#training``).

Randomness: every draw of a micro-batch comes from one generator seeded with :func:`step_seed` ``(seed, stream,
rank, index)``, a pure function of the run's seed, the stream (training or validation), the process rank and the
micro-batch index. A resumed run therefore makes exactly the draws the uninterrupted run would have made, and the
validation draws never disturb the training ones. Inside a micro-batch the order is: sigma (log-normal, coin, table
draws), the noise ``[B, S]``, the self-conditioning coin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..codecs import ids_to_bits
from .divergence import NonFiniteMonitor
from .loss import LossType, LossWeighting, loss_weight
from .self_conditioning import self_conditioning_estimate

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from .entropy_rate import EntropyRateEstimator
    from .sigma_sampling import TrainingSigmaSampler

__all__ = [
    "TRAIN_STREAM",
    "VALIDATION_STREAM",
    "first_batches",
    "noisy_batch",
    "per_example_loss",
    "step_seed",
    "validation_loss",
]

TRAIN_STREAM = 0
VALIDATION_STREAM = 0x5EED_0FF5  # the validation draws use their own stream, never the training one


def step_seed(seed: int, stream: int, rank: int, index: int) -> int:
    """A well-mixed 63-bit seed for the draws of one micro-batch: a pure function of ``(seed, stream, rank, index)``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(rank), int(index)]).generate_state(2)
    return int((int(state[0]) << 31 ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF)


def noisy_batch(
    model: torch.nn.Module,
    ids: torch.Tensor,
    *,
    bits_per_token: int,
    sigma_sampler: TrainingSigmaSampler,
    step: int,
    tables: dict[str, torch.Tensor] | None,
    generator: torch.Generator,
    self_conditioning_prob: float,
    monitor: NonFiniteMonitor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass of the training objective.

    Args:
        model: the SDT (``model(x, sigma, self_cond=...).logits``), possibly wrapped by accelerate.
        ids: ``[B, L]`` token ids.
        bits_per_token: bits per token ``m``; the model sees ``S = L * m`` bits.
        sigma_sampler: draws the training noise levels for optimizer step ``step``.
        tables: the current entropy table (``None`` before the first estimate).
        generator: the source of every draw, in the order of the module docstring.
        self_conditioning_prob: probability that a row gets the bootstrap estimate (0 disables it).
        monitor: records a NaN or an inf in the model input, the self-conditioning estimate and the logits (reported
            as the loss they make); a non-finite input or estimate is replaced by zeros before the model sees it, so
            the caller's :meth:`~.divergence.NonFiniteMonitor.check` (every process, once per micro-batch) stops the
            run with the documented message instead of the model's input error. Without one, such values reach
            the model.

    Returns:
        ``(x0 [B, S] float32 bits, sigma [B], logits [B, S])``. The bootstrap pass runs without gradient.
    """
    x0 = ids_to_bits(ids, bits_per_token, dtype=torch.float32)  # [B, S] on the batch's device
    sigma = sigma_sampler.draw_sigma(x0.shape[0], step, generator, tables=tables).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    noisy = x0 + sigma[:, None] * noise
    if monitor is not None:
        noisy = monitor.screen("model input", noisy)
        sigma = monitor.screen("model input", sigma, fill=1.0)

    def denoiser(x, s, sc):
        return model(x, s, self_cond=sc).logits

    self_cond = self_conditioning_estimate(denoiser, noisy, sigma, prob=self_conditioning_prob, generator=generator)
    if monitor is not None and self_cond is not None:
        self_cond = monitor.screen("self-conditioning estimate", self_cond)
    logits = model(noisy, sigma, self_cond=self_cond).logits
    if monitor is not None:
        monitor.observe("loss", logits)
    return x0, sigma, logits


def per_example_loss(
    logits: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, *, loss_type: LossType, weighting: LossWeighting
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [B], mse [B])``: each row's weighted loss (their mean is ``bitstream_loss``) and its bit MSE."""
    batch = logits.shape[0]
    weight = loss_weight(sigma, weighting=weighting)
    probs = torch.sigmoid(logits.reshape(batch, -1).float())
    target = x0.reshape(batch, -1).float()
    mse = ((probs - target) ** 2).mean(dim=1)
    if loss_type == "binary_sm":
        return weight * mse, mse
    bce = F.binary_cross_entropy_with_logits(logits.reshape(batch, -1).float(), target, reduction="none").mean(dim=1)
    return weight * bce, mse


def first_batches(dataloader: DataLoader, max_batches: int | None) -> Iterator[tuple[int, Any]]:
    """``(index, batch)`` for the first ``max_batches`` batches. Stopping early, it tells an accelerate loader that
    its iteration ended: a loader left mid-way stays accelerate's "active" loader, whose end-of-data flag then
    decides the gradient synchronisation of the training loop (and ``gather_for_metrics``'s de-duplication)."""
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            end = getattr(dataloader, "end", None)
            if end is not None:
                end()
            return
        yield index, batch


@torch.no_grad()
def validation_loss(
    accelerator: Accelerator,
    model: torch.nn.Module,
    dataloader: DataLoader,
    *,
    bits_per_token: int,
    reference_sampler: TrainingSigmaSampler,
    seed: int,
    self_conditioning_prob: float,
    loss_type: LossType,
    weighting: LossWeighting,
    max_batches: int | None = None,
    estimator: EntropyRateEstimator | None = None,
) -> float:
    """Mean per-row loss over the validation rows of every process, with fixed draws.

    Sigma comes from ``reference_sampler`` (the warm-up log-normal: the same distribution at every evaluation, so
    the numbers compare across training), the noise from the validation stream of :func:`step_seed`. With
    ``estimator`` the rows' ``(sigma, mse)`` also enter the entropy-rate buffer. A batch whose input, estimate or
    loss holds a NaN or an inf counts as NaN: the result is then NaN on every process (and the caller stops the run).
    """
    generator = torch.Generator(device=accelerator.device)
    total, count = 0.0, 0
    for index, ids in first_batches(dataloader, max_batches):
        generator.manual_seed(step_seed(seed, VALIDATION_STREAM, accelerator.process_index, index))
        monitor = NonFiniteMonitor()
        x0, sigma, logits = noisy_batch(model, ids, bits_per_token=bits_per_token, sigma_sampler=reference_sampler,
                                        step=0, tables=None, generator=generator,
                                        self_conditioning_prob=self_conditioning_prob, monitor=monitor)
        losses, mse = per_example_loss(logits, x0, sigma, loss_type=loss_type, weighting=weighting)
        monitor.observe("loss", losses)
        if monitor.first() is not None:
            losses = torch.full_like(losses, float("nan"))
        if estimator is not None:  # every process, every batch: the update gathers across processes
            estimator.update(sigma, mse)
        losses = accelerator.gather_for_metrics(losses)
        total += float(losses.double().sum())
        count += losses.numel()
    return total / max(count, 1)
