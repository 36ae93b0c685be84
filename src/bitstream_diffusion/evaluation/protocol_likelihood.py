"""The protocol's likelihood metrics: properties of the model, measured on the held-out reference rows.

* ``--vlb`` on a CoBit pipeline: the official variational bound (:func:`~bitstream_diffusion.evaluation.compute_vlb`)
  of the reference rows' bits, ``K = --vlb-num-mc-samples`` draws per row, ``--vlb-batch-size`` rows per batch,
  every draw from one CPU generator seeded with ``--likelihood-seed``. The numbers are those of one
  ``compute_vlb(model, bits, batch_size=B, num_mc_samples=K, generator=torch.Generator().manual_seed(seed))`` call.
* ``--vlb`` on a causal LM: the exact NLL of the same rows (:func:`~.causal_lm_sampling.causal_lm_row_nll`), in
  the same columns, with ``likelihood = "exact"`` instead of ``"bound"`` and no ``vlb_bpd`` (a causal LM has no bits).
* ``--heldout-loss`` (CoBit only): the training loss on the reference rows at the fixed noise levels
  ``--heldout-loss-sigmas`` (:func:`~bitstream_diffusion.evaluation.compute_heldout_loss`, seeded the same way).

Several processes: the batches of rows are split between the processes in contiguous shares and the per-row values
gathered. A process whose share starts at batch ``k`` first replays the random draws of batches ``0 .. k - 1``
(:func:`~bitstream_diffusion.evaluation.draw_vlb_noise`, cheap next to the model calls), so every batch sees the
same draws as in one process and the numbers do not depend on the number of processes. The held-out loss draws each
row's noise from a stream indexed by the row's position in the rows it is given, so it runs whole on the main
process.

:data:`LIKELIHOOD_COLUMNS` (all ``None`` when not measured):

* ``likelihood``: ``"bound"`` (CoBit: an upper bound on the NLL) or ``"exact"`` (a causal LM);
* ``likelihood_rows``: rows measured; ``vlb_num_mc_samples``: K (CoBit);
* ``vlb_bpd``, ``vlb_bpd_stderr``: the bound in bits per bit, with its standard error (CoBit);
* ``nll_per_token`` (nats), ``bits_per_token`` and ``bits_per_token_stderr``: per token of the model's rows (the
  bound's ``bits_per_token_bound`` for CoBit: ``vlb_bpd`` times the bits per token);
* ``ppl_bound``: ``2 ** bits_per_token``: a perplexity bound for CoBit, the exact perplexity for a causal LM;
* ``heldout_loss``, ``heldout_loss_stderr``: the held-out training loss (CoBit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_HELDOUT_SIGMAS",
    "LIKELIHOOD_COLUMNS",
    "LikelihoodSettings",
    "exact_nll_of_batches",
    "model_likelihood",
    "vlb_of_batches",
]

DEFAULT_HELDOUT_SIGMAS: tuple[float, ...] = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0)
"""The fixed noise levels of ``--heldout-loss`` (equal weights)."""

LIKELIHOOD_COLUMNS: tuple[str, ...] = (
    "likelihood",
    "likelihood_rows",
    "vlb_num_mc_samples",
    "vlb_bpd",
    "vlb_bpd_stderr",
    "nll_per_token",
    "bits_per_token",
    "bits_per_token_stderr",
    "ppl_bound",
    "heldout_loss",
    "heldout_loss_stderr",
)

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class LikelihoodSettings:
    """What ``--vlb`` and ``--heldout-loss`` measure and how.

    Attributes:
        vlb: measure the bound (CoBit) or the exact NLL (causal LM).
        heldout_loss: measure the held-out training loss (CoBit).
        batch_size: rows per batch (the bound's draws depend on it: keep it to compare runs).
        num_mc_samples: K, log-sigma draws per row of the bound.
        seed: seeds the bound's generator and the held-out loss.
        heldout_sigmas: the held-out loss's noise levels.
        autocast_dtype: a torch dtype for the model's autocast, or ``None`` (float32).
        show_progress: progress bars.
    """

    vlb: bool = False
    heldout_loss: bool = False
    batch_size: int = 16
    num_mc_samples: int = 1
    seed: int = 0
    heldout_sigmas: tuple[float, ...] = DEFAULT_HELDOUT_SIGMAS
    autocast_dtype: Any = None
    show_progress: bool = False

    @property
    def any(self) -> bool:
        return self.vlb or self.heldout_loss


def _rows_of(batches: range, batch_size: int, num_rows: int) -> slice:
    return slice(min(batches.start * batch_size, num_rows), min(batches.stop * batch_size, num_rows))


def vlb_of_batches(model, bits, batches: range, settings: LikelihoodSettings) -> dict[str, Any]:
    """Per-row terms (bits per bit) of the bound for the rows of ``batches`` (batch ``k`` = rows ``[kB, (k+1)B)``).

    The generator is seeded with ``settings.seed`` and advanced past the draws of the batches before
    ``batches.start``, so the values are those of one :func:`~bitstream_diffusion.evaluation.compute_vlb` call on all
    of ``bits``.

    Returns:
        ``{"vlb", "recon", "diff", "prior"}``: ``[n]`` float64 tensors; ``bits_per_token`` (the model's).
    """
    import torch

    from .vlb import compute_vlb
    from .vlb_draws import draw_vlb_noise

    size, num_bits = bits.shape
    mine = bits[_rows_of(batches, settings.batch_size, size)]
    bits_per_token = int(model.config.bits_per_token)
    if mine.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return {"vlb": empty, "recon": empty, "diff": empty, "prior": empty, "bits_per_token": bits_per_token}
    generator = torch.Generator().manual_seed(int(settings.seed))
    for k in range(batches.start):  # replay: the draws depend on the batch shape only
        rows = _rows_of(range(k, k + 1), settings.batch_size, size)
        placeholder = torch.zeros((rows.stop - rows.start, num_bits), dtype=torch.float32)
        draw_vlb_noise(placeholder, settings.num_mc_samples, generator=generator)
    out = compute_vlb(
        model,
        mine,
        batch_size=settings.batch_size,
        num_mc_samples=settings.num_mc_samples,
        generator=generator,
        autocast_dtype=settings.autocast_dtype,
        show_progress=settings.show_progress,
    )
    return {
        "vlb": out.vlb_bpd_per_row,
        "recon": out.recon_bpd_per_row,
        "diff": out.diff_bpd_per_row,
        "prior": out.prior_bpd_per_row,
        "bits_per_token": bits_per_token,
    }


def exact_nll_of_batches(
    model, token_rows, batches: range, settings: LikelihoodSettings, *, start_token_id: int
) -> dict[str, Any]:
    """``{"nll": [n] float64}``: the exact NLL in nats of each row of ``batches`` under a causal LM."""
    import torch

    from .causal_lm_sampling import causal_lm_row_nll

    mine = token_rows[_rows_of(batches, settings.batch_size, token_rows.shape[0])]
    if mine.shape[0] == 0:
        return {"nll": torch.zeros(0, dtype=torch.float64)}
    nll = causal_lm_row_nll(
        model,
        mine,
        start_token_id=start_token_id,
        batch_size=settings.batch_size,
        autocast_dtype=settings.autocast_dtype,
    )
    return {"nll": nll}


def _stderr(values) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else math.nan


def _power_of_two(exponent: float) -> float:
    try:
        return 2.0**exponent
    except OverflowError:
        return math.inf


def _bound_columns(parts: dict[str, Any], num_mc_samples: int) -> dict[str, Any]:
    """The columns from the per-row terms, computed as :func:`~bitstream_diffusion.evaluation.compute_vlb` does."""
    vlb_bpd = float(parts["recon"].mean()) + float(parts["diff"].mean()) + float(parts["prior"].mean())
    stderr, bits_per_token = _stderr(parts["vlb"]), parts["bits_per_token"]
    return {
        "likelihood": "bound",
        "likelihood_rows": int(parts["vlb"].numel()),
        "vlb_num_mc_samples": int(num_mc_samples),
        "vlb_bpd": vlb_bpd,
        "vlb_bpd_stderr": stderr,
        "nll_per_token": vlb_bpd * bits_per_token * _LN2,
        "bits_per_token": vlb_bpd * bits_per_token,
        "bits_per_token_stderr": stderr * bits_per_token,
        "ppl_bound": _power_of_two(vlb_bpd * bits_per_token),
    }


def _exact_columns(parts: dict[str, Any], num_tokens: int) -> dict[str, Any]:
    nll = parts["nll"]
    nll_per_token = float(nll.sum()) / (nll.numel() * num_tokens)
    return {
        "likelihood": "exact",
        "likelihood_rows": int(nll.numel()),
        "nll_per_token": nll_per_token,
        "bits_per_token": nll_per_token / _LN2,
        "bits_per_token_stderr": _stderr(nll / (num_tokens * _LN2)),
        "ppl_bound": _power_of_two(nll_per_token / _LN2),
    }


def _concatenate(shares: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    import torch

    shares = sorted(shares, key=lambda share: share[0])
    merged: dict[str, Any] = {}
    for name, value in shares[0][1].items():
        if isinstance(value, torch.Tensor):
            merged[name] = torch.cat([part[name] for _, part in shares])
        else:
            merged[name] = value
    return merged


def model_likelihood(state, model, token_rows, settings: LikelihoodSettings) -> dict[str, Any]:
    """The :data:`LIKELIHOOD_COLUMNS` of ``model`` on ``token_rows``; call it on every process (same result on all).

    Args:
        state: accelerate's ``PartialState``.
        model: a :class:`~.protocol_models.CoBitProtocolModel` or :class:`~.protocol_models.CausalLMProtocolModel`.
        token_rows: ``[N, T]`` reference rows in the model's tokens.
        settings: what to measure.
    """
    from accelerate.utils import gather_object

    columns: dict[str, Any] = dict.fromkeys(LIKELIHOOD_COLUMNS)
    if settings.vlb:
        num_batches = -(-token_rows.shape[0] // settings.batch_size)
        with state.split_between_processes(list(range(num_batches))) as share:
            mine = range(share[0], share[-1] + 1) if share else range(num_batches, num_batches)
        parts = model.likelihood_per_row(token_rows, mine, settings)
        merged = _concatenate(gather_object([(mine.start, parts)]))
        if model.likelihood == "bound":
            columns.update(_bound_columns(merged, settings.num_mc_samples))
        else:
            columns.update(_exact_columns(merged, model.num_tokens))
    if settings.heldout_loss and model.supports_heldout_loss:
        loss = None
        if state.is_main_process:
            out = model.heldout_loss(token_rows, settings)
            loss = (out.loss, out.loss_stderr)
        loss = next(value for value in gather_object([loss]) if value is not None)
        columns["heldout_loss"], columns["heldout_loss_stderr"] = loss
        columns["likelihood_rows"] = int(token_rows.shape[0])
    return columns
