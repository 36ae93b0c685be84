"""Held-out training loss: the CoBit denoising objective on rows the model was not trained on.

The loss of one row at noise level ``sigma`` is the trainer's (:func:`bitstream_diffusion.training.loss_weight`,
:func:`~bitstream_diffusion.training.bitstream_loss`): ``lambda(sigma) * mean_bits (sigmoid(logits) - x0)^2`` for
``loss_type="binary_sm"`` ("binary score matching", the paper's loss) with the EDM weight
``lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2``, ``sigma_d = 0.5``; ``"binary_ce"`` uses the per-bit
BCE instead. The noisy input is ``x0 + sigma * eps``, and self-conditioning follows the training recipe: with
probability ``self_conditioning_prob`` a row gets the model's own estimate from a first pass (with the "no estimate"
input), otherwise the "all bits 0" estimate.

Two ways to choose sigma:

* a fixed grid (``sigmas=[...]``): every row is scored at every level; the result has the loss per level and their
  weighted mean. This removes the noise of sampling sigma, so it is the better way to compare checkpoints.
* seeded draws (``sigmas=None``): ``num_draws`` levels per row from the training's base distribution, ``ln sigma ~
  N(p_mean, p_std^2)`` truncated to ``[sigma_min, sigma_max]`` (the warm-up distribution of training).

Every random number of a row comes from its own stream, seeded from one draw of ``generator`` and the row's index,
so the result does not depend on ``batch_size`` (or on how rows are split between processes), and the same seed gives
two checkpoints the same noise (a paired comparison: ``per_row_loss`` of both can be subtracted row by row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging

from ..training.loss import LossType, LossWeighting, loss_weight
from ..training.sigma_sampling import sample_lognormal_sigma
from ._inputs import autocast_context, check_batch_size, check_bit_rows, resolve_autocast_dtype

__all__ = ["HeldoutLossOutput", "compute_heldout_loss"]


@dataclass
class HeldoutLossOutput:
    """The held-out loss, its standard error, and the values it is made of.

    Attributes:
        loss: the mean loss: over rows, and over levels with the level weights (grid) or over draws (draws).
        loss_stderr: ``std(per_row_loss, ddof=1) / sqrt(N)``, the standard error of ``loss`` as an estimate of the
            expected loss on rows like these (``nan`` for one row).
        mse: the unweighted mean bit MSE ``(sigmoid(logits) - x0)^2``, averaged like ``loss``.
        num_examples: N.
        sigmas: the grid ``[L]`` (float32), or ``None`` for draws.
        sigma_weights: the normalised level weights ``[L]`` (float64), or ``None`` for draws.
        loss_per_sigma, mse_per_sigma, loss_stderr_per_sigma: ``[L]`` float64 per grid level (mean over rows and its
            standard error), or ``None`` for draws.
        per_row_loss: ``[N]`` float64, each row's (weighted) mean loss.
        per_example_loss, per_example_mse: ``[N, L]`` float64: row ``i`` at level / draw ``l``.
        per_example_sigma: ``[N, L]`` float32, the noise level of each entry.
        loss_type, weighting, self_conditioning_prob: the settings used.
    """

    loss: float
    loss_stderr: float
    mse: float
    num_examples: int
    loss_type: str
    weighting: str
    self_conditioning_prob: float
    sigmas: torch.Tensor | None = None
    sigma_weights: torch.Tensor | None = None
    loss_per_sigma: torch.Tensor | None = None
    mse_per_sigma: torch.Tensor | None = None
    loss_stderr_per_sigma: torch.Tensor | None = None
    per_row_loss: torch.Tensor = field(default=None, repr=False)
    per_example_loss: torch.Tensor = field(default=None, repr=False)
    per_example_mse: torch.Tensor = field(default=None, repr=False)
    per_example_sigma: torch.Tensor = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The scalars and the per-level lists (JSON-ready); the per-row tensors are left out."""
        out: dict[str, Any] = {
            "loss": self.loss,
            "loss_stderr": self.loss_stderr,
            "mse": self.mse,
            "num_examples": self.num_examples,
            "loss_type": self.loss_type,
            "weighting": self.weighting,
            "self_conditioning_prob": self.self_conditioning_prob,
        }
        for name in ("sigmas", "sigma_weights", "loss_per_sigma", "mse_per_sigma", "loss_stderr_per_sigma"):
            value = getattr(self, name)
            out[name] = None if value is None else value.tolist()
        return out


def _row_seed(base: int, row: int) -> int:
    """A well-mixed 63-bit seed for row ``row`` of a run with base seed ``base``."""
    state = np.random.SeedSequence([base & 0xFFFFFFFF, base >> 32, row]).generate_state(2)
    return int((int(state[0]) << 31 ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF)


def _check_grid(sigmas, sigma_weights) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all() & (grid > 0).all()):
        raise ValueError(f"`sigmas` must be a non-empty list of finite noise levels > 0, got {sigmas!r}.")
    if sigma_weights is None:
        weights = torch.ones(grid.numel(), dtype=torch.float64)
    else:
        weights = torch.as_tensor(sigma_weights, dtype=torch.float64).reshape(-1)
        if weights.numel() != grid.numel():
            raise ValueError(f"`sigma_weights` needs one weight per level ({grid.numel()}), got {weights.numel()}.")
        if not bool(torch.isfinite(weights).all() & (weights >= 0).all()) or float(weights.sum()) <= 0:
            raise ValueError(f"`sigma_weights` must be finite, >= 0 and not all 0, got {sigma_weights!r}.")
    return grid, weights / weights.sum()


def _check_settings(num_draws, sigma_min, sigma_max, p_std, self_conditioning_prob, loss_type, weighting) -> None:
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
        raise ValueError(f"`num_draws` (noise levels per row) must be an int >= 1, got {num_draws!r}.")
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"Need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    if not (math.isfinite(p_std) and p_std > 0):
        raise ValueError(f"`p_std` must be finite and > 0, got {p_std}.")
    if not 0.0 <= self_conditioning_prob <= 1.0:
        raise ValueError(f"`self_conditioning_prob` must lie in [0, 1], got {self_conditioning_prob}.")
    if loss_type not in ("binary_sm", "binary_ce"):
        raise ValueError(f"`loss_type` must be 'binary_sm' (the paper's) or 'binary_ce', got {loss_type!r}.")
    if weighting not in ("edm", "none"):
        raise ValueError(f"`weighting` must be 'edm' (the paper's) or 'none', got {weighting!r}.")


def _row_draws(seed: int, num_levels: int, num_bits: int, grid: torch.Tensor | None, lognormal: dict[str, float]):
    """One row's ``(sigma [L], noise [L, S], coin [L])``, in that order from the row's own CPU stream."""
    generator = torch.Generator().manual_seed(seed)
    if grid is None:
        sigma = sample_lognormal_sigma(num_levels, generator=generator, **lognormal)
    else:
        sigma = grid
    noise = torch.randn((num_levels, num_bits), generator=generator)
    coin = torch.rand(num_levels, generator=generator)
    return sigma, noise, coin


@torch.no_grad()
def _batch_losses(model, x0, sigma, noise, coin, *, prob, loss_type, weighting, sigma_data, autocast_dtype):
    """``(loss, mse)`` of ``[B, L]`` entries: ``x0 [B, S]``, ``sigma [B, L]``, ``noise [B, L, S]``, ``coin [B, L]``."""
    batch, levels, num_bits = noise.shape
    target = x0[:, None, :].expand(batch, levels, num_bits).reshape(-1, num_bits)
    sigma = sigma.reshape(-1)
    noisy = target + sigma[:, None] * noise.reshape(-1, num_bits)
    uses_self_conditioning = bool(getattr(model.config, "self_conditioning", False)) and prob > 0
    with autocast_context(noisy.device, autocast_dtype):
        self_cond = None
        if uses_self_conditioning:
            selected = coin.reshape(-1) < prob
            self_cond = torch.zeros_like(noisy)
            if bool(selected.any()):
                estimate = torch.sigmoid(model(noisy, sigma, self_cond=None).logits.float())
                self_cond = torch.where(selected[:, None], estimate.to(noisy.dtype), self_cond)
        logits = model(noisy, sigma, self_cond=self_cond).logits
    logits = logits.reshape(-1, num_bits).float()
    squared_error = (torch.sigmoid(logits) - target) ** 2
    if loss_type == "binary_sm":
        per_bit = squared_error
    else:
        per_bit = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = loss_weight(sigma, sigma_data=sigma_data, weighting=weighting)
    loss = weight * per_bit.mean(dim=1)
    return loss.view(batch, levels), squared_error.mean(dim=1).view(batch, levels)


def _stderr(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    count = values.shape[dim]
    if count < 2:
        return torch.full_like(values.select(dim, 0), math.nan)
    return values.std(dim=dim, unbiased=True) / math.sqrt(count)


@torch.no_grad()
def compute_heldout_loss(
    model,
    bits: torch.Tensor,
    *,
    batch_size: int,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    sigma_weights: Sequence[float] | torch.Tensor | None = None,
    num_draws: int = 1,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sigma_data: float = 0.5,
    loss_type: LossType = "binary_sm",
    weighting: LossWeighting = "edm",
    self_conditioning_prob: float = 0.5,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | str | None = None,
    show_progress: bool = True,
) -> HeldoutLossOutput:
    """The training loss of ``model`` on held-out bit rows, on a fixed sigma grid or at seeded sigma draws.

    How it relates to the training script's validation loss (``val/loss`` in
    ``examples/train_bitstream_diffusion``): that number is this estimator with ``sigmas=None``, ``num_draws=1``,
    the run's ``p_mean``/``p_std``/``sigma_min``/``sigma_max``, ``loss_type``, ``weighting`` and
    ``self_conditioning_prob``: the same sigma distribution (the warm-up log-normal, never the entropy table), the
    same loss function and the same self-conditioning recipe, computed with the EMA weights. Its random numbers are
    drawn per batch from a generator reseeded from the run seed and the batch index, while here each row has its own
    stream; so the two agree within their standard errors, not to the digit. Two further differences are
    deliberate: a row that gets no self-conditioning estimate always receives the "all bits 0" input (training gives
    the "no estimate" input to a whole batch in which no row was selected, a batch-size-dependent rule), and the
    loss here is kept per row.

    Args:
        model: an :class:`~bitstream_diffusion.SDTModel`; put in eval mode for the call (restored after).
        bits: ``[N, S]`` held-out rows of {0, 1} (any integer, bool or float dtype), whole tokens per row.
        batch_size: rows per model call (each call holds ``batch_size * L`` noisy rows, L = levels or draws).
        sigmas: a fixed grid of noise levels, e.g. ``[0.01, 0.1, 0.5, 1, 2, 5, 20]``; ``None`` for seeded draws.
        sigma_weights: weights of the grid levels in ``loss`` (normalised; default equal).
        num_draws: with ``sigmas=None``, noise levels drawn per row.
        p_mean, p_std, sigma_min, sigma_max: the training's base sigma distribution (defaults: the paper's).
        sigma_data: sigma_d of the EDM weight (0.5 for CoBit).
        loss_type, weighting: as in training (``"binary_sm"``, ``"edm"``: the paper's).
        self_conditioning_prob: the probability that a row's main pass gets the model's own first-pass estimate
            (training default 0.5; 0 gives every row the "no estimate" input, as training does). Ignored for a
            model without self-conditioning.
        generator: the source of the run's base seed (one draw); ``None`` uses torch's global generator.
        autocast_dtype: e.g. ``torch.bfloat16`` on GPU; ``None`` for float32.
        show_progress: a progress bar over rows (transformers' tqdm).

    Returns:
        :class:`HeldoutLossOutput`.
    """
    config = model.config
    check_bit_rows(bits, int(config.bits_per_token))
    check_batch_size(batch_size)
    sigma_min, sigma_max, p_mean, p_std = float(sigma_min), float(sigma_max), float(p_mean), float(p_std)
    _check_settings(num_draws, sigma_min, sigma_max, p_std, float(self_conditioning_prob), loss_type, weighting)
    autocast_dtype = resolve_autocast_dtype(autocast_dtype)
    grid, level_weights = _check_grid(sigmas, sigma_weights) if sigmas is not None else (None, None)
    num_levels = grid.numel() if grid is not None else num_draws
    lognormal = {"p_mean": p_mean, "p_std": p_std, "sigma_min": sigma_min, "sigma_max": sigma_max}

    seed_device = generator.device if generator is not None else torch.device("cpu")
    base_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=seed_device))
    device = next(model.parameters()).device
    num_rows, num_bits = bits.shape
    losses, mses, used_sigmas = [], [], []
    was_training = model.training
    model.eval()
    progress = logging.tqdm(total=num_rows, desc="held-out loss", unit="row", disable=not show_progress)
    try:
        for start in range(0, num_rows, batch_size):
            rows = range(start, min(start + batch_size, num_rows))
            draws = [_row_draws(_row_seed(base_seed, row), num_levels, num_bits, grid, lognormal) for row in rows]
            sigma, noise, coin = (torch.stack(parts).to(device) for parts in zip(*draws))
            x0 = bits[start : start + len(rows)].to(device=device, dtype=torch.float32)
            loss, mse = _batch_losses(
                model, x0, sigma, noise, coin, prob=float(self_conditioning_prob), loss_type=loss_type,
                weighting=weighting, sigma_data=float(sigma_data), autocast_dtype=autocast_dtype,
            )
            losses.append(loss.double().cpu())
            mses.append(mse.double().cpu())
            used_sigmas.append(sigma.float().cpu())
            progress.update(len(rows))
    finally:
        progress.close()
        model.train(was_training)

    per_example_loss, per_example_mse = torch.cat(losses), torch.cat(mses)  # [N, L]
    column_weights = level_weights if level_weights is not None else torch.full((num_levels,), 1.0 / num_levels)
    per_row_loss = per_example_loss @ column_weights.double()
    per_row_mse = per_example_mse @ column_weights.double()
    output = HeldoutLossOutput(
        loss=float(per_row_loss.mean()),
        loss_stderr=float(_stderr(per_row_loss)),
        mse=float(per_row_mse.mean()),
        num_examples=num_rows,
        loss_type=loss_type,
        weighting=weighting,
        self_conditioning_prob=float(self_conditioning_prob),
        per_row_loss=per_row_loss,
        per_example_loss=per_example_loss,
        per_example_mse=per_example_mse,
        per_example_sigma=torch.cat(used_sigmas),
    )
    if grid is not None:
        output.sigmas = grid
        output.sigma_weights = level_weights
        output.loss_per_sigma = per_example_loss.mean(dim=0)
        output.mse_per_sigma = per_example_mse.mean(dim=0)
        output.loss_stderr_per_sigma = _stderr(per_example_loss)
    return output
