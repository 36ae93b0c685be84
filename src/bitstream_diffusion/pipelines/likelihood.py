"""How well a pipeline's model explains given texts: the variational bound on their log-likelihood, in bits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput

__all__ = ["LikelihoodMixin", "LogLikelihoodOutput"]


@dataclass
class LogLikelihoodOutput(BaseOutput):
    """
    Output of [`LikelihoodMixin.log_likelihood`]: an upper bound on `-log2 p(row)` for each text's encoded row.

    Args:
        bits (`torch.Tensor` of shape `(num_texts,)`):
            The bound on the negative log-likelihood of each text's row, in bits (lower is better).
        bits_per_token (`torch.Tensor` of shape `(num_texts,)`):
            `bits / sequence_length`: the bound per token of the row (LM1B: a BERT token; OWT: a code of the code
            tokenizer).
        ppl_bound (`torch.Tensor` of shape `(num_texts,)`):
            `2 ** bits_per_token`: a bound on each text's perplexity per token.
        estimate (`VLBOutput`):
            The whole estimate over all texts: `vlb_bpd` (bits per bit) and its standard error, the reconstruction,
            diffusion and prior terms, `bits_per_token_bound`, `ppl_bound` and the settings.
    """

    bits: torch.Tensor
    bits_per_token: torch.Tensor
    ppl_bound: torch.Tensor
    estimate: Any


class LikelihoodMixin:
    """Gives a [`BitstreamDiffusionPipeline`] `log_likelihood(texts)`, the official variational bound on its texts."""

    @torch.no_grad()
    def log_likelihood(
        self,
        texts: str | Sequence[str],
        *,
        sequence_length: int | None = None,
        num_mc_samples: int = 1,
        batch_size: int = 8,
        generator: torch.Generator | None = None,
        sigma_sampling: str = "log-uniform",
        autocast_dtype: torch.dtype | None = None,
        show_progress: bool = False,
    ) -> LogLikelihoodOutput:
        r"""
        Bound the negative log-likelihood of `texts` under the model, with the official variational bound
        (`bitstream_diffusion.evaluation.compute_vlb`; see `docs/evaluation.md#likelihood`).

        Each text is encoded with the pipeline's codec into the model's row layout (`pipe.text_to_bits`: LM1B pads
        the row with `[PAD]`, OWT appends `[EOSEQ]` and `[PAD]`), and the bound is taken on the whole row, padding
        included, as the paper's evaluation does for held-out rows. The estimate is random (one Monte-Carlo draw of
        the noise level per row and `num_mc_samples`): pass a seeded `generator` to reproduce it, and raise
        `num_mc_samples` for a smaller standard error (`output.estimate.vlb_bpd_stderr`).

        Args:
            texts (`str` or `list[str]`): the texts.
            sequence_length (`int`, *optional*): tokens per row (default: the codec's row length).
            num_mc_samples (`int`, defaults to 1): noise-level draws per row (K).
            batch_size (`int`, defaults to 8): rows per model call (the diffusion term runs `batch_size * K` rows).
            generator (`torch.Generator`, *optional*): the source of every random draw.
            sigma_sampling (`str`, defaults to `"log-uniform"`): or `"log-normal"`, the training density.
            autocast_dtype (`torch.dtype`, *optional*): e.g. `torch.bfloat16` on GPU; the matched filter stays float32.
            show_progress (`bool`, defaults to `False`): a progress bar over rows.

        Returns:
            [`LogLikelihoodOutput`]: per text `bits`, `bits_per_token` and `ppl_bound`, and the whole `estimate`.
        """
        from ..evaluation.vlb import compute_vlb

        bits = self.text_to_bits(texts, sequence_length)
        estimate = compute_vlb(
            self.model,
            bits,
            batch_size=batch_size,
            num_mc_samples=num_mc_samples,
            sigma_sampling=sigma_sampling,
            generator=generator,
            autocast_dtype=autocast_dtype,
            show_progress=show_progress,
        )
        bits_per_row = estimate.vlb_bpd_per_row.double() * bits.shape[-1]
        bits_per_token = bits_per_row / (bits.shape[-1] // self.bits_per_token)
        return LogLikelihoodOutput(
            bits=bits_per_row, bits_per_token=bits_per_token, ppl_bound=torch.exp2(bits_per_token), estimate=estimate
        )
