"""The output of [`BitstreamDiffusionPipeline`]."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

__all__ = ["BitstreamDiffusionPipelineOutput"]


@dataclass
class BitstreamDiffusionPipelineOutput(BaseOutput):
    """
    Output of [`BitstreamDiffusionPipeline`].

    Args:
        texts (`list[str]` or `None`):
            Decoded samples with the layout's official rules (with `output_type="text"`).
        token_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token (LM1B, generic) or code (OWT) ids: the MSB-first readings of `bits`, before the decoder's invalid-id
            policy (LM1B wraps ids >= 30522 modulo 30522 only when decoding).
        bits (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)`, `uint8`):
            The final bits, `probs > 0.5`.
        probs (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)` or `None`):
            The final denoiser probabilities `D(x, terminal_sigma)`, float32 (with `output_type="probs"` or
            `return_probs=True`).
        nfe (`int`):
            Denoiser (model) calls actually made.
    """

    texts: list[str] | None
    token_ids: torch.LongTensor
    bits: torch.Tensor
    probs: torch.Tensor | None
    nfe: int
