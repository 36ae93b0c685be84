"""The output of [`BitstreamDiffusionPipeline`]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.utils import BaseOutput

__all__ = ["OUTPUT_TYPES", "BitstreamDiffusionPipelineOutput", "OutputType"]

OutputType = Literal["text", "token_ids", "bits", "probs", "latent"]
#: The `output_type`s of the pipeline, each naming the field that is the primary output (element 0).
OUTPUT_TYPES: dict[str, str] = {
    "text": "texts",
    "token_ids": "token_ids",
    "bits": "bits",
    "probs": "probs",
    "latent": "latents",
}


@dataclass
class BitstreamDiffusionPipelineOutput(BaseOutput):
    """
    Output of [`BitstreamDiffusionPipeline`].

    As a tuple (`output[i]`, `output.to_tuple()`, or the pipeline's `return_dict=False`) it is always the five
    elements `(primary, token_ids, bits, probs, nfe)`, where `primary` is the output `output_type` asked for:
    `texts` ("text"), `token_ids`, `bits`, `probs` or `latents` ("latent"). So `output[0]` is the primary output for
    every `output_type`, like `images` in diffusers, and element 3 is `None` without probabilities. (Unlike diffusers'
    `BaseOutput`, the tuple keeps `None` entries, so that positions do not move.)

    Args:
        texts (`list[str]` or `None`):
            Decoded samples with the layout's official rules (with `output_type="text"`).
        token_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token (LM1B, generic) or code (OWT) ids: the MSB-first readings of `bits`, before the decoder's invalid-id
            policy (LM1B wraps ids >= 30522 modulo 30522 only when decoding).
        bits (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)`, `uint8`):
            The final bits, `probs > 0.5`.
        probs (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)` or `None`):
            The final denoiser probabilities `D(x, terminal_sigma)`, float32 on the CPU (with `output_type="probs"`
            or `return_probs=True`).
        nfe (`int`):
            Denoiser (model) calls per sample. A batch split into chunks (`max_batch_size`) makes these calls once per
            chunk.
        latents (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)` or `None`):
            With `output_type="latent"`: the sampler's final state (what diffusers pipelines return as latents),
            float32 on the model's device. After the final denoise it is `D(x, terminal_sigma)`, as a callback left it.
        output_type (`str`, defaults to `"text"`):
            The `output_type` of the call: which field is the primary output.
    """

    texts: list[str] | None
    token_ids: torch.LongTensor
    bits: torch.Tensor
    probs: torch.Tensor | None
    nfe: int
    latents: torch.Tensor | None = None
    output_type: OutputType = "text"

    def __post_init__(self) -> None:
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {self.output_type!r}.")
        super().__post_init__()

    @property
    def primary(self) -> Any:
        """The output `output_type` asked for (element 0 of the tuple)."""
        return getattr(self, OUTPUT_TYPES[self.output_type])

    def to_tuple(self) -> tuple[Any, ...]:
        """`(primary, token_ids, bits, probs, nfe)`: the primary output first, `None` entries kept."""
        return (self.primary, self.token_ids, self.bits, self.probs, self.nfe)
