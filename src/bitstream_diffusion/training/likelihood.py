"""Held-out likelihood during training, next to the EMA validation loss: CoBit's variational bound
(:func:`validation_vlb`) and the autoregressive baseline's exact perplexity (:func:`validation_perplexity`).

The validation loss of the training objective says whether the denoiser improves, but not how well the model
describes text. The bound of :func:`~bitstream_diffusion.evaluation.compute_vlb` does (bits per bit, per token, a
perplexity bound). :func:`validation_vlb` computes it on the first validation batches at every validation with the
same random draws every time (seeded from the run's seed, the process rank and the batch index, on a stream of
their own), so two validations differ only by the weights. Its cost per batch of ``B`` rows is two forward passes,
of ``B`` and ``B * K`` rows (``K`` = ``num_mc_samples``).

Both report ``bits_per_token`` per position of the rows (a bert-base-uncased token for LM1B; for OWT a code for
CoBit, a GPT-2 token for the baseline): an upper bound for CoBit, the exact value for the autoregressive model, over
all ``L`` tokens of each row.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..codecs import ids_to_bits
from .autoregressive import causal_lm_inputs, next_token_nll
from .objective import first_batches, step_seed

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

__all__ = ["VLB_STREAM", "validation_perplexity", "validation_vlb"]

VLB_STREAM = 0x0B0D_5EED  # the bound's draws: a stream of their own, apart from training and validation-loss draws

_LN2 = math.log(2.0)
_AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}


def _power_of_two(exponent: float) -> float:
    return 2.0**exponent if exponent < 1024 else math.inf


@torch.no_grad()
def validation_vlb(
    accelerator: Accelerator,
    model: torch.nn.Module,
    dataloader: DataLoader,
    *,
    bits_per_token: int,
    num_batches: int,
    num_mc_samples: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """The official bound (``sigma`` log-uniform on [0.08, 80], no prior term) on the first ``num_batches``
    validation batches of every process, gathered; call on every process with the EMA weights in place.

    Args:
        model: the prepared SDT (unwrapped here; its training/eval mode is restored).
        dataloader: the prepared validation loader of ``[B, L]`` token ids.
        bits_per_token: bits per token of the rows (``S = L * bits_per_token`` bits per row).
        num_batches: batches per process (all of them when the loader is shorter).
        num_mc_samples: ``K``, log-sigma draws per row.
        seed: the run's seed.

    Returns:
        ``{"vlb_bpd", "vlb_bpd_stderr", "recon_bpd", "diff_bpd", "bits_per_token", "ppl_bound", "vlb_rows"}``:
        the bound in bits per bit, its standard error over rows (``std / sqrt(N)``: row spread and Monte-Carlo noise
        together), its terms, the bound in bits per token and ``2 ** bits_per_token`` (a perplexity bound per token
        of the rows), and the number of rows N.
    """
    from ..evaluation.vlb import compute_vlb

    if num_batches < 1:
        raise ValueError(f"`num_batches` must be >= 1, got {num_batches}; skip the call to disable the bound.")
    network = accelerator.unwrap_model(model)
    autocast = _AUTOCAST.get(str(accelerator.mixed_precision))
    generator = torch.Generator(device=accelerator.device)
    rows = []
    for index, ids in first_batches(dataloader, num_batches):
        generator.manual_seed(step_seed(seed, VLB_STREAM, accelerator.process_index, index))
        bits = ids_to_bits(ids, bits_per_token, dtype=torch.float32)
        out = compute_vlb(network, bits, batch_size=bits.shape[0], num_mc_samples=num_mc_samples,
                          generator=generator, autocast_dtype=autocast, show_progress=False)
        per_row = torch.stack([out.vlb_bpd_per_row, out.recon_bpd_per_row, out.diff_bpd_per_row], dim=1)
        rows.append(accelerator.gather_for_metrics(per_row.to(accelerator.device)).double().cpu())
    values = torch.cat(rows)
    vlb, recon, diff = values.mean(dim=0).tolist()
    count = values.shape[0]
    stderr = float(values[:, 0].std(unbiased=True)) / math.sqrt(count) if count > 1 else math.nan
    return {"vlb_bpd": vlb, "vlb_bpd_stderr": stderr, "recon_bpd": recon, "diff_bpd": diff,
            "bits_per_token": vlb * bits_per_token, "ppl_bound": _power_of_two(vlb * bits_per_token),
            "vlb_rows": count}


@torch.no_grad()
def validation_perplexity(
    accelerator: Accelerator,
    model: torch.nn.Module,
    dataloader: DataLoader,
    *,
    start_token_id: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """The exact held-out likelihood of a causal LM on the validation rows (every process's share, gathered).

    Args:
        model: the prepared causal LM, in eval mode; it reads ``[start] + row[:-1]`` and predicts the row
            (:func:`~bitstream_diffusion.training.autoregressive.causal_lm_inputs`).
        dataloader: the prepared validation loader of ``[B, L]`` token ids.
        start_token_id: the token the rows are read after.
        max_batches: batches per process (all without it).

    Returns:
        ``{"loss": nats per token, "bits_per_token": loss / ln 2, "ppl": exp(loss), "num_scored_tokens": N * L}``.
    """
    total, count = 0.0, 0
    for _, ids in first_batches(dataloader, max_batches):
        logits = model(input_ids=causal_lm_inputs(ids, start_token_id)).logits
        nll = accelerator.gather_for_metrics(next_token_nll(logits, ids))
        total += float(nll.double().sum())
        count += nll.numel() * ids.shape[1]
    loss = total / max(count, 1)
    return {"loss": loss, "bits_per_token": loss / _LN2, "ppl": math.exp(min(loss, 700.0)),
            "num_scored_tokens": count}
