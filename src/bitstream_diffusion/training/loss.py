"""The CoBit training loss: EDM-weighted MSE between the denoiser's bit probabilities and the clean bits.

With ``p = sigmoid(logits)`` (the logits already include the matched filter, so ``p`` is the denoiser ``D(x, σ)``):

* ``loss_type="binary_sm"`` (the paper's "binary score matching"): per bit ``(p - x0)²``;
* ``loss_type="binary_ce"`` (an ablation only): per bit ``BCEWithLogits(logits, x0)``;
* ``weighting="edm"``: ``λ(σ) = (σ² + σ_d²) / (σ² σ_d²)`` (EDM's ``1 / c_out²``); ``weighting="none"``: ``λ = 1``.

The loss is ``mean(λ(σ_b) · per_bit)`` over every bit of the batch, or, with a mask,
``Σ λ · per_bit · mask / max(Σ mask, 1)``. The second output is the entropy metric that feeds
:class:`~bitstream_diffusion.training.EntropyRateEstimator`: the *unweighted* per-example bit MSE
``mean_bits (p - x0)²`` (masked: ``Σ (p - x0)² · mask / max(Σ mask, 1)`` per row), for either loss type.
Everything is computed in float32, whatever the dtype of the logits (e.g. bf16 under autocast).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["LossType", "LossWeighting", "bitstream_loss", "loss_weight"]

LossType = Literal["binary_sm", "binary_ce"]
LossWeighting = Literal["edm", "none"]

_LOSS_TYPES = ("binary_sm", "binary_ce")
_WEIGHTINGS = ("edm", "none")


def loss_weight(sigma: torch.Tensor, *, sigma_data: float = 0.5, weighting: LossWeighting = "edm") -> torch.Tensor:
    """Per-example loss weight ``λ(σ)``.

    Args:
        sigma: noise levels, shape ``[B]`` (or ``[B, 1]``), in {0,1}-bit units, all > 0.
        sigma_data: the data standard deviation σ_d of the EDM weighting (0.5 for CoBit: a fair bit has standard
            deviation 0.5; see ``docs/design.md#input-and-noise-scaling-sigma_data--05``).
        weighting: ``"edm"`` for ``(σ² + σ_d²) / (σ² σ_d²)``, ``"none"`` for 1.

    Returns:
        float32 tensor of shape ``[B]``.
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    sigma2 = sigma.reshape(-1).to(torch.float32) ** 2
    if weighting == "none":
        return torch.ones_like(sigma2)
    sigma_data = float(sigma_data)
    return (sigma2 + sigma_data**2) / (sigma2 * (sigma_data**2))


def _check_inputs(logits: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | None) -> None:
    if logits.dim() == 3 and logits.shape[-1] != 1:
        raise ValueError(f"3-d logits must have a last dimension of 1 ([B, S, 1]), got {tuple(logits.shape)}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"logits must be [B, S] or [B, S, 1], got {tuple(logits.shape)}")
    batch, seq = logits.shape[0], logits.shape[1]
    if x0.numel() != batch * seq or x0.shape[0] != batch:
        raise ValueError(
            f"x0 {tuple(x0.shape)} does not match logits {tuple(logits.shape)}: expected [B, S] = [{batch}, {seq}]"
        )
    if sigma.numel() != batch:
        raise ValueError(f"sigma must hold one noise level per example ([B] = [{batch}]), got {tuple(sigma.shape)}")
    if mask is not None and (mask.dim() not in (2, 3) or mask.numel() != batch * seq or mask.shape[0] != batch):
        raise ValueError(
            f"mask must be [B, S] or [B, S, 1] like the logits {tuple(logits.shape)}, got {tuple(mask.shape)}"
        )
    if torch.compiler.is_compiling():
        return
    bad_sigma = ~torch.isfinite(sigma) | (sigma <= 0)
    bad = torch.stack([bad_sigma.any(), torch.isnan(logits).any()])
    if bool(bad.any()):  # one device sync for both checks
        if bool(bad[0]):
            raise ValueError(f"sigma must be finite and > 0; got min {sigma.min().item()}, max {sigma.max().item()}")
        raise ValueError("logits contain NaN (check the forward pass, e.g. for an fp16 overflow)")


def bitstream_loss(
    logits: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    *,
    sigma_data: float = 0.5,
    loss_type: LossType = "binary_sm",
    weighting: LossWeighting = "edm",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CoBit denoising loss and the per-example entropy metric.

    Args:
        logits: ``[B, S]`` or ``[B, S, 1]``, the denoiser's logits *including* the matched filter; any float dtype.
        x0: ``[B, S]`` (or ``[B, S, 1]``) clean bits in {0, 1}; any numeric dtype.
        sigma: ``[B]`` noise levels (> 0, finite) in {0,1}-bit units.
        sigma_data: σ_d of the EDM weighting; 0.5 for CoBit. It is never read from anywhere else.
        loss_type: ``"binary_sm"`` (paper) or ``"binary_ce"`` (ablation).
        weighting: ``"edm"`` (paper) or ``"none"``.
        mask: optional ``[B, S]`` or ``[B, S, 1]`` float/bool mask; 1 marks positions that count.

    Returns:
        ``(loss, per_example_mse)``: a 0-d float32 loss with gradient, and the ``[B]`` float32 unweighted
        per-example bit MSE ``mean_bits (sigmoid(logits) - x0)²`` (the entropy-rate metric; it carries the graph too,
        detach it before storing).
    """
    if loss_type not in _LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {_LOSS_TYPES}, got {loss_type!r}")
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    _check_inputs(logits, x0, sigma, mask)

    batch = logits.shape[0]
    logits_f32 = logits.reshape(batch, -1).to(torch.float32)  # [B, S]
    target = x0.reshape(batch, -1).to(torch.float32)
    weight = loss_weight(sigma, sigma_data=sigma_data, weighting=weighting).view(batch, 1)  # [B, 1]

    probs = torch.sigmoid(logits_f32)
    sq_err = (probs - target) ** 2
    if loss_type == "binary_sm":
        per_bit = sq_err
    else:
        per_bit = F.binary_cross_entropy_with_logits(logits_f32, target, reduction="none")

    if mask is None:
        loss = (weight * per_bit).mean()
        per_example_mse = sq_err.mean(dim=1)
    else:
        mask_f32 = mask.reshape(batch, -1).to(torch.float32)
        loss = (weight * per_bit * mask_f32).sum() / mask_f32.sum().clamp_min(1.0)
        per_example_mse = (sq_err * mask_f32).sum(dim=1) / mask_f32.sum(dim=1).clamp_min(1.0)
    return loss, per_example_mse
