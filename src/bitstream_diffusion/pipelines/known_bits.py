"""Known bits: bits the sampler holds fixed at every step, from a text prompt (a row prefix) or an infilling mask.

CoBit conditions by clamping: the known bits overwrite the state before every model call, the model's estimate
after it, and the self-conditioning input, so the unknown bits are denoised around them. The released models were
trained unconditionally, so the continuation of a prompt is best effort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.utils import logging

if TYPE_CHECKING:
    from ..codecs.text_codec import TextBitCodec

__all__ = ["KnownBits"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name


@dataclass(frozen=True)
class KnownBits:
    """
    Bits clamped at every sampler step.

    Args:
        values (`torch.Tensor` of shape `(batch_size, num_bits)`): float32 0/1 values (only read where `mask` is set).
        mask (`torch.BoolTensor` of shape `(batch_size, num_bits)`): True = this bit is known.
    """

    values: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_prompts(cls, codec: TextBitCodec, prompts: list[str], num_tokens: int) -> KnownBits | None:
        """
        The bits of each prompt's ids (the layout's row prefix, e.g. `[EOS] + codes` for OWT) at the start of its row.

        A prompt longer than the row is cut to it, with a warning. Returns `None` when no prompt has any ids.
        """
        num_bits = num_tokens * codec.bits_per_token
        id_rows = codec.prompt_ids(prompts, num_tokens=num_tokens + 1)  # one more, to see a cut
        values = torch.zeros(len(prompts), num_bits)
        mask = torch.zeros(len(prompts), num_bits, dtype=torch.bool)
        for row, ids in enumerate(id_rows):
            if len(ids) > num_tokens:
                logger.warning(
                    f"Prompt {row} is longer than a sample ({num_tokens} tokens); it is cut to the sample length and "
                    "nothing is left to generate in that row."
                )
                ids = ids[:num_tokens]
            if not ids:
                continue
            prefix = codec.ids_to_bits(torch.tensor([ids], dtype=torch.long))[0]
            values[row, : prefix.numel()] = prefix.float()
            mask[row, : prefix.numel()] = True
        return cls(values, mask) if bool(mask.any()) else None

    @classmethod
    def from_infill(
        cls,
        known_bits: torch.Tensor,
        known_mask: torch.Tensor,
        batch_size: int,
        num_tokens: int,
        bits_per_token: int,
    ) -> KnownBits | None:
        """
        Validate `known_bits`/`known_mask` and bring them to `(batch_size, num_tokens * bits_per_token)`.

        Args:
            known_bits (`torch.Tensor` of shape `(num_bits,)` or `(batch_size, num_bits)`): 0/1 values.
            known_mask (`torch.BoolTensor`): the shape of `known_bits`, or per token (`(num_tokens,)` or
                `(batch_size, num_tokens)`; a known token is `bits_per_token` known bits).

        Returns `None` when the mask is empty. Raises `TypeError`/`ValueError` naming the wrong dtype, shape or value.
        """
        num_bits = num_tokens * bits_per_token
        mask = torch.as_tensor(known_mask)
        values = torch.as_tensor(known_bits)
        if mask.dtype != torch.bool:
            raise TypeError(f"`known_mask` must be a bool tensor (True = clamp this bit), got {mask.dtype}.")
        if mask.dim() not in (1, 2) or values.dim() not in (1, 2):
            raise ValueError(
                f"`known_bits`/`known_mask` must be [num_bits] or [batch_size, num_bits], got "
                f"{tuple(values.shape)} and {tuple(mask.shape)}."
            )
        if mask.shape[-1] == num_tokens and num_tokens != num_bits:
            mask = mask.repeat_interleave(bits_per_token, dim=-1)  # a per-token mask
        values, mask = values.cpu().float(), mask.cpu()
        values = values.expand(batch_size, -1) if values.dim() == 1 else values
        mask = mask.expand(batch_size, -1) if mask.dim() == 1 else mask
        expected = (batch_size, num_bits)
        if tuple(values.shape) != expected or tuple(mask.shape) != expected:
            raise ValueError(
                f"`known_bits` must have shape [{num_bits}] or [{batch_size}, {num_bits}] "
                f"(sequence_length={num_tokens} tokens x {bits_per_token} bits) and `known_mask` the same or per "
                f"token [{num_tokens}] / [{batch_size}, {num_tokens}]; got {tuple(values.shape)} and "
                f"{tuple(mask.shape)}."
            )
        known = values[mask]
        if not bool(((known == 0) | (known == 1)).all()):
            raise ValueError(
                "`known_bits` must be 0 or 1 wherever `known_mask` is True (e.g. from `pipe.text_to_bits`)."
            )
        return cls(values.contiguous(), mask.contiguous()) if bool(mask.any()) else None

    def select(self, rows: slice) -> KnownBits:
        """The known bits of the batch rows `rows` (a chunk of the batch)."""
        return KnownBits(self.values[rows], self.mask[rows])

    def to(self, device: torch.device | str) -> KnownBits:
        """The same known bits on `device`."""
        return KnownBits(self.values.to(device), self.mask.to(device))

    def clamp(self, bits: torch.Tensor) -> torch.Tensor:
        """`bits` `(batch_size, num_bits)` with the known positions set to their values."""
        return torch.where(self.mask, self.values, bits)
