"""Self-conditioning in training, the official recipe (see ``docs/design.md#self-conditioning-none-versus-zeros``).

Per example, with probability ``prob`` (paper: 0.5), the main forward pass receives an estimate of the clean bits
from a first "bootstrap" pass of the same model on the same noisy input:

1. coin ``rand(B) < prob`` (one draw from ``generator``);
2. if some row is selected: one bootstrap pass on the *whole* batch with ``self_cond=None`` (the model's
   "no estimate" input: the self-conditioning channel fed an exact 0 before its projection);
3. the estimate is ``sigmoid(bootstrap logits)``, detached (the logits include the matched filter, so this is the
   denoiser D); selected rows take it, the other rows get zeros (the model's "all bits 0" estimate, which the model
   centres to ``-0.5 · c_in``);
4. if no row is selected the main pass gets ``None`` (as in the official trainer).

The order of the official training step, for a caller that wants its draws: σ (``TrainingSigmaSampler.draw_sigma``),
then the noise ``randn(B, S)`` for ``x_t = x0 + σ·ε``, then this coin. Dropout inside the bootstrap pass draws from
the device's global generator, as in the official code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["Denoiser", "self_conditioning_estimate"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def self_conditioning_estimate(
    denoiser: Denoiser,
    noisy_bits: torch.Tensor,
    sigma: torch.Tensor,
    *,
    prob: float = 0.5,
    generator: torch.Generator | None = None,
    bootstrap_grad: bool = False,
) -> torch.Tensor | None:
    """The ``self_cond`` input of the main training pass.

    Args:
        denoiser: ``denoiser(noisy_bits [B, S], sigma [B], self_cond [B, S] | None) -> logits [B, S] or [B, S, 1]``,
            the full logits (network + matched filter), e.g. ``lambda x, s, sc: model(x, s, self_cond=sc).logits``.
        noisy_bits: ``[B, S]`` noisy input ``x0 + σ·ε``.
        sigma: ``[B]`` noise levels.
        prob: probability that an example gets the estimate (paper: 0.5); 0 disables self-conditioning.
        generator: source of the coin ``rand(B)``, drawn on the generator's device (CPU without one).
        bootstrap_grad: run the bootstrap pass with autograd on, as the official trainer did (its output is detached
            either way, so the values are the same; ``False`` saves the activation memory).

    Returns:
        ``[B, S]`` estimates in ``noisy_bits.dtype`` (zeros in rows without self-conditioning), or ``None`` when no row
        was selected (then the main pass uses the "no estimate" input for every row, as the official trainer does).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if noisy_bits.dim() != 2:
        raise ValueError(f"noisy_bits must be [B, S], got {tuple(noisy_bits.shape)}")
    batch = noisy_bits.shape[0]
    if sigma.numel() != batch:
        raise ValueError(f"sigma must be [B] = [{batch}], got {tuple(sigma.shape)}")
    if prob == 0.0:
        return None

    coin_device = generator.device if generator is not None else torch.device("cpu")
    selected = (torch.rand(batch, device=coin_device, generator=generator) < prob).to(noisy_bits.device)
    if not bool(selected.any()):
        return None

    with torch.set_grad_enabled(bootstrap_grad and torch.is_grad_enabled()):
        logits = denoiser(noisy_bits, sigma, None)
    if logits.dim() == 3 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    if logits.shape != noisy_bits.shape:
        raise ValueError(f"denoiser returned logits {tuple(logits.shape)} for input {tuple(noisy_bits.shape)}")
    estimate = torch.sigmoid(logits.detach().float()).to(noisy_bits.dtype)
    return torch.where(selected.view(batch, 1), estimate, torch.zeros_like(estimate))
