"""The variational bound on the likelihood of held-out bit rows, CoBit's official estimator (``vlb_bpd``).

For a row ``x0`` in {0,1}^S the continuous-time variance-exploding bound (VDM, Kingma et al. 2021, with
``SNR = 1 / sigma^2``) is ``-log p(x0) <= L_recon + L_diff + L_prior`` with, in nats:

* ``L_recon = sum_s BCEWithLogits(logits_s, x0_s)``, the logits of the denoiser at ``z0 = x0 + sigma_min * eps0``:
  the network's own posterior as a Bernoulli decoder;
* ``L_diff = integral_{ln sigma_min}^{ln sigma_max} ||D(z, sigma) - x0||^2 / sigma^2  d ln sigma`` with
  ``z = x0 + sigma * eps`` and ``D = sigmoid(logits)``, estimated with ``K`` importance-sampled draws of
  ``y = ln(sigma)`` per row: ``mean_k ||D - x0||^2 / sigma_k^2 / q(y_k)``;
* ``L_prior = 0.5 * ||x0||^2 / sigma_max^2`` (only with ``include_prior``; the official default leaves it out, and
  it is tiny: about 4e-5 bits per bit at sigma_max = 80).

Both model calls get the self-conditioning input "all zeros" (the model's "every bit predicted 0" estimate, which it
centres internally), as the official estimator does. Results are reported in bits per bit:
``X_bpd = mean over rows of X / (S ln 2)``. The random draws are made by :mod:`.vlb_draws` in the official order,
so a seeded ``torch.Generator`` reproduces the official numbers in float32 (see ``docs/evaluation.md#likelihood``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils import logging

from ._inputs import autocast_context, check_batch_size, check_bit_rows, resolve_autocast_dtype
from .vlb_draws import SigmaSampling, VLBDraws, check_sigma_sampling, draw_vlb_noise

__all__ = ["VLBOutput", "VLBTerms", "compute_vlb", "vlb_terms"]

_LN2 = math.log(2.0)


@dataclass
class VLBTerms:
    """Per-row terms of one batch, in nats (float32, ``[B]`` each; ``diff_per_draw`` is ``[B, K]``)."""

    recon: torch.Tensor
    diff: torch.Tensor
    prior: torch.Tensor
    diff_per_draw: torch.Tensor


@dataclass
class VLBOutput:
    """The bound over all rows, with its uncertainty and the per-row values.

    Attributes:
        vlb_bpd: the bound in bits per bit, ``recon_bpd + diff_bpd + prior_bpd`` (the official ``vlb_bpd``).
        recon_bpd, diff_bpd, prior_bpd: its three terms in bits per bit (``prior_bpd`` is 0 without the prior).
        vlb_bpd_stderr: the standard error of ``vlb_bpd`` as an estimate of the expected bound over rows drawn like
            these: ``std(per-row estimates, ddof=1) / sqrt(N)``. It contains both the spread between rows and the
            Monte-Carlo noise of each row's estimate (``nan`` for a single row). Rows cut from one running text are
            not independent, so read it as a guide, not an exact interval.
        mc_stderr: the Monte-Carlo part alone: the standard error of ``vlb_bpd`` for *these* rows, from the spread of
            the K draws within each row, ``sqrt(sum_i var_k(row i) / K) / N`` in bits per bit (``nan`` when K = 1).
            More draws (K) shrink it as ``1 / sqrt(K)``; more rows shrink both errors.
        num_examples: N, the number of rows.
        num_mc_samples: K, the log-sigma draws per row.
        num_bits: S, the bits per row.
        bits_per_token: the model's ``config.bits_per_token`` (15 for LM1B, 16 for OWT).
        bits_per_token_bound: ``vlb_bpd * bits_per_token``, the bound in bits per *token* of the layout.
        bits_per_token_bound_stderr: ``vlb_bpd_stderr * bits_per_token``.
        ppl_bound: ``2 ** bits_per_token_bound``, an upper bound on the perplexity per token of the layout.
        sigma_min, sigma_max, sigma_sampling, include_prior: the settings used.
        vlb_bpd_per_row, recon_bpd_per_row, diff_bpd_per_row, prior_bpd_per_row: ``[N]`` float64 CPU tensors, each
            row's estimate in bits per bit, in input order (their means are the fields above).
    """

    vlb_bpd: float
    recon_bpd: float
    diff_bpd: float
    prior_bpd: float
    vlb_bpd_stderr: float
    mc_stderr: float
    num_examples: int
    num_mc_samples: int
    num_bits: int
    bits_per_token: int
    bits_per_token_bound: float
    bits_per_token_bound_stderr: float
    ppl_bound: float
    sigma_min: float
    sigma_max: float
    sigma_sampling: str
    include_prior: bool
    vlb_bpd_per_row: torch.Tensor = field(repr=False)
    recon_bpd_per_row: torch.Tensor = field(repr=False)
    diff_bpd_per_row: torch.Tensor = field(repr=False)
    prior_bpd_per_row: torch.Tensor = field(repr=False)

    @property
    def bits_per_row(self) -> torch.Tensor:
        """``[N]`` float64: each row's bound on ``-log2 p(row)`` in bits (``vlb_bpd_per_row * num_bits``)."""
        return self.vlb_bpd_per_row * self.num_bits

    def to_dict(self, per_row: bool = False) -> dict[str, Any]:
        """The scalars (JSON-ready); with ``per_row=True`` also the per-row lists."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if not name.endswith("_per_row")}
        if per_row:
            for name in ("vlb_bpd_per_row", "recon_bpd_per_row", "diff_bpd_per_row", "prior_bpd_per_row"):
                out[name] = getattr(self, name).tolist()
        return out


def _denoiser_logits(model, noisy_bits: torch.Tensor, sigma: torch.Tensor, autocast_dtype: torch.dtype | None):
    """float32 ``[B, S]`` logits with the self-conditioning input all zeros."""
    with autocast_context(noisy_bits.device, autocast_dtype):
        logits = model(noisy_bits, sigma, self_cond=torch.zeros_like(noisy_bits)).logits
    if logits.dim() == 3 and logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    return logits.float()


@torch.no_grad()
def vlb_terms(
    model,
    x0: torch.Tensor,
    draws: VLBDraws,
    *,
    sigma_min: float = 0.08,
    sigma_max: float = 80.0,
    include_prior: bool = False,
    autocast_dtype: torch.dtype | str | None = None,
) -> VLBTerms:
    """The per-row terms of the bound for one batch, given its random inputs.

    This is the arithmetic of :func:`compute_vlb` without the random draws; pass :class:`VLBDraws` made by
    :func:`~bitstream_diffusion.evaluation.vlb_draws.draw_vlb_noise`, or built from recorded noisy inputs.

    Args:
        model: an :class:`~bitstream_diffusion.SDTModel` (any module with the same call signature and a ``.logits``
            output), in eval mode.
        x0: ``[B, S]`` clean bits (float32 on the model's device).
        draws: the noisy inputs, on the model's device: ``recon_noisy_bits [B, S]``, ``sigmas [B, K]``,
            ``noisy_bits [B, K, S]``, ``importance_weights [B, K]``.
        sigma_min: the noise level of the reconstruction call.
        sigma_max: the upper end of the integral (used by the prior term only).
        include_prior: add ``0.5 ||x0||^2 / sigma_max^2``.
        autocast_dtype: run the model under this autocast dtype (the matched filter stays float32).

    Returns:
        :class:`VLBTerms` in nats per row.
    """
    batch, num_bits = x0.shape
    num_draws = draws.sigmas.shape[1]
    autocast_dtype = resolve_autocast_dtype(autocast_dtype)

    if include_prior:
        prior = (0.5 * x0.float().square()).sum(dim=1) / (sigma_max**2)
    else:
        prior = torch.zeros(batch, dtype=torch.float32, device=x0.device)

    sigma0 = torch.full((batch,), sigma_min, dtype=torch.float32, device=x0.device)
    recon_logits = _denoiser_logits(model, draws.recon_noisy_bits, sigma0, autocast_dtype)
    recon = F.binary_cross_entropy_with_logits(recon_logits, x0.float(), reduction="none").sum(dim=1)

    sigmas = draws.sigmas
    logits = _denoiser_logits(
        model, draws.noisy_bits.reshape(batch * num_draws, num_bits), sigmas.reshape(-1), autocast_dtype
    )
    probs = torch.sigmoid(logits).view(batch, num_draws, num_bits)
    squared_error = ((probs - x0.float()[:, None, :]) ** 2).sum(dim=2)  # [B, K]
    diff_per_draw = squared_error / sigmas**2 * draws.importance_weights
    return VLBTerms(recon=recon, diff=diff_per_draw.mean(dim=1), prior=prior, diff_per_draw=diff_per_draw)


def _check_settings(batch_size, num_mc_samples, sigma_sampling, sigma_min, sigma_max, p_std) -> None:
    check_batch_size(batch_size)
    if isinstance(num_mc_samples, bool) or not isinstance(num_mc_samples, int) or num_mc_samples < 1:
        raise ValueError(
            f"`num_mc_samples` (K, the log-sigma draws per row) must be an int >= 1, got {num_mc_samples!r}."
        )
    check_sigma_sampling(sigma_sampling)
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"`sigma_min` must be finite and > 0, got {sigma_min}; the official value is 0.08.")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(
            f"`sigma_max` must be finite and larger than sigma_min={sigma_min}, got {sigma_max}; the official "
            f"value is 80."
        )
    if sigma_sampling == "log-normal" and not (math.isfinite(p_std) and p_std > 0):
        raise ValueError(f"`p_std` must be finite and > 0 for log-normal sampling, got {p_std}.")


def _power_of_two(exponent: float) -> float:
    try:
        return 2.0**exponent
    except OverflowError:  # a bound of more than ~1024 bits per token: an untrained or broken model
        return math.inf


def _standard_error(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else math.nan


@torch.no_grad()
def compute_vlb(
    model,
    bits: torch.Tensor,
    *,
    batch_size: int,
    num_mc_samples: int = 1,
    sigma_sampling: SigmaSampling = "log-uniform",
    sigma_min: float = 0.08,
    sigma_max: float = 80.0,
    include_prior: bool = False,
    generator: torch.Generator | None = None,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    autocast_dtype: torch.dtype | str | None = None,
    show_progress: bool = True,
) -> VLBOutput:
    """Estimate the variational bound on ``-log2 p(bits)`` of held-out rows, in bits per bit (official ``vlb_bpd``).

    Rows are processed in order, ``batch_size`` at a time; each batch makes two model calls, one of ``B`` rows at
    ``sigma_min`` and one of ``B * K`` rows (so lower ``batch_size`` when K is large). The random draws of each batch
    come from ``generator`` in the official order (:mod:`~bitstream_diffusion.evaluation.vlb_draws`): with the same
    seed, ``batch_size`` and settings, the official estimator's numbers are reproduced in float32.

    What a "token" is in ``bits_per_token_bound`` and ``ppl_bound``: one position of the model's rows, i.e.
    ``config.bits_per_token`` bits. For LM1B models that is one bert-base-uncased token (15 bits), so ``ppl_bound``
    is a perplexity bound per BERT token (comparable with MDLM/SEDD LM1B numbers that use the same tokenizer and
    packing). For OWT models it is one code of the second-stage code tokenizer (16 bits), which covers several GPT-2
    tokens: to compare with GPT-2-token perplexities, convert the bits per code to bits per GPT-2 token with the
    code tokenizer's compression (GPT-2 tokens per code) first. Padding positions count like any other token.

    Args:
        model: an :class:`~bitstream_diffusion.SDTModel`; it is put in eval mode for the call (and restored after).
        bits: ``[N, S]`` held-out rows of {0, 1} bits (any integer, bool or float dtype), ``S`` a multiple of
            ``model.config.bits_per_token``; e.g. ``codec.text_to_bits(texts)`` or packed training-format rows.
        batch_size: rows per batch.
        num_mc_samples: K, the log-sigma draws per row (official default 1). The standard error of the diffusion
            term falls as ``1 / sqrt(K)``; see ``benchmarks/bench_vlb.py`` for how to choose it.
        sigma_sampling: ``"log-uniform"`` (official default) or ``"log-normal"`` (the EDM training density of
            ``ln sigma``, mean ``p_mean``, std ``p_std``, truncated to ``[sigma_min, sigma_max]``).
        sigma_min: lower end of the integral and the reconstruction noise level (official: 0.08).
        sigma_max: upper end of the integral (official: 80).
        include_prior: add the prior term (official default: no).
        generator: source of every random draw (and the device they are made on). ``None`` uses torch's global CPU
            generator, like the official code after ``torch.manual_seed``.
        p_mean, p_std: the log-normal's parameters (official: -1.2, 1.2).
        autocast_dtype: e.g. ``torch.bfloat16`` on GPU (the official evaluation's setting); the matched filter and
            all sums stay float32/float64. ``None``: plain float32.
        show_progress: show a progress bar over rows (the transformers tqdm, which
            ``transformers.utils.logging.disable_progress_bar()`` also silences).

    Returns:
        :class:`VLBOutput` with the bound, its terms, standard errors and per-row values.

    Raises:
        ValueError / TypeError: bad ``bits`` (shape, dtype, values other than 0/1, NaN) or settings
            (``sigma_min <= 0``, ``sigma_min >= sigma_max``, ``K < 1``, unknown ``sigma_sampling``).
    """
    config = model.config
    bits_per_token = int(config.bits_per_token)
    check_bit_rows(bits, bits_per_token)
    sigma_min, sigma_max, p_mean, p_std = float(sigma_min), float(sigma_max), float(p_mean), float(p_std)
    _check_settings(batch_size, num_mc_samples, sigma_sampling, sigma_min, sigma_max, p_std)
    resolve_autocast_dtype(autocast_dtype)  # fail before any work

    device = next(model.parameters()).device
    num_rows, num_bits = bits.shape
    recon, diff, prior, mc_variance = [], [], [], []
    was_training = model.training
    model.eval()
    progress = logging.tqdm(total=num_rows, desc="VLB", unit="row", disable=not show_progress)
    try:
        for start in range(0, num_rows, batch_size):
            x0 = bits[start : start + batch_size].to(dtype=torch.float32)
            draws = draw_vlb_noise(
                x0,
                num_mc_samples,
                sigma_sampling=sigma_sampling,
                sigma_min=sigma_min,
                sigma_max=sigma_max,
                p_mean=p_mean,
                p_std=p_std,
                generator=generator,
            )
            terms = vlb_terms(
                model,
                x0.to(device),
                draws.to(device),
                sigma_min=sigma_min,
                sigma_max=sigma_max,
                include_prior=include_prior,
                autocast_dtype=autocast_dtype,
            )
            recon.append(terms.recon.double().cpu())
            diff.append(terms.diff.double().cpu())
            prior.append(terms.prior.double().cpu())
            if num_mc_samples > 1:
                mc_variance.append(terms.diff_per_draw.double().var(dim=1, unbiased=True).cpu() / num_mc_samples)
            progress.update(x0.shape[0])
    finally:
        progress.close()
        model.train(was_training)

    scale = 1.0 / (_LN2 * num_bits)
    per_row = {
        "recon": torch.cat(recon) * scale,
        "diff": torch.cat(diff) * scale,
        "prior": torch.cat(prior) * scale,
    }
    per_row["vlb"] = per_row["recon"] + per_row["diff"] + per_row["prior"]
    means = {name: float(values.mean()) for name, values in per_row.items()}
    vlb_bpd = means["recon"] + means["diff"] + means["prior"]
    stderr = _standard_error(per_row["vlb"])
    mc_stderr = float(torch.cat(mc_variance).sum().sqrt()) * scale / num_rows if mc_variance else math.nan
    return VLBOutput(
        vlb_bpd=vlb_bpd,
        recon_bpd=means["recon"],
        diff_bpd=means["diff"],
        prior_bpd=means["prior"],
        vlb_bpd_stderr=stderr,
        mc_stderr=mc_stderr,
        num_examples=num_rows,
        num_mc_samples=num_mc_samples,
        num_bits=num_bits,
        bits_per_token=bits_per_token,
        bits_per_token_bound=vlb_bpd * bits_per_token,
        bits_per_token_bound_stderr=stderr * bits_per_token,
        ppl_bound=_power_of_two(vlb_bpd * bits_per_token),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigma_sampling=sigma_sampling,
        include_prior=bool(include_prior),
        vlb_bpd_per_row=per_row["vlb"],
        recon_bpd_per_row=per_row["recon"],
        diff_bpd_per_row=per_row["diff"],
        prior_bpd_per_row=per_row["prior"],
    )
