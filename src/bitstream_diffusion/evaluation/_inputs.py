"""Input checks and the autocast switch shared by the likelihood-style evaluations (bound, held-out loss)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["autocast_context", "check_batch_size", "check_bit_rows", "resolve_autocast_dtype"]

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def check_bit_rows(bits: torch.Tensor, bits_per_token: int) -> None:
    """Raise a clear error unless ``bits`` is a non-empty ``[N, S]`` tensor of 0/1 with whole tokens per row."""
    if not isinstance(bits, torch.Tensor):
        raise TypeError(
            f"`bits` must be a torch.Tensor of shape [N, S], got {type(bits).__name__}; encode texts with a "
            f"TextBitCodec (`codec.text_to_bits(texts)`) first."
        )
    if bits.dim() != 2:
        hint = " (one row: use bits.unsqueeze(0))" if bits.dim() == 1 else ""
        raise ValueError(f"`bits` must be [N, S] rows of bits, got shape {tuple(bits.shape)}{hint}.")
    if bits.shape[0] == 0 or bits.shape[1] == 0:
        raise ValueError(f"`bits` is empty (shape {tuple(bits.shape)}); pass at least one row of bits.")
    if bits.is_complex():
        raise TypeError(f"`bits` must hold 0/1 as an integer, bool or float dtype, got {bits.dtype}.")
    if bits.shape[1] % bits_per_token != 0:
        raise ValueError(
            f"`bits` has {bits.shape[1]} bits per row, not a multiple of the model's bits_per_token="
            f"{bits_per_token}; pass whole tokens (rows of T * {bits_per_token} bits)."
        )
    if bits.is_floating_point() and bool(torch.isnan(bits).any()):
        raise ValueError("`bits` contains NaN; pass clean {0,1} bits (e.g. from `codec.text_to_bits`).")
    valid = (bits == 0) | (bits == 1)
    if not bool(valid.all()):
        bad = bits[~valid].flatten()[0].item()
        raise ValueError(
            f"`bits` must hold only 0 and 1, found {bad!r}; pass clean bits, not probabilities or noisy values "
            f"(threshold probabilities with `> 0.5` if that is what you mean)."
        )


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")


def resolve_autocast_dtype(autocast_dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None``/float32 -> ``None`` (no autocast); bfloat16/float16 (dtype or name) -> that dtype."""
    if autocast_dtype is None or autocast_dtype in (torch.float32, "float32", "fp32"):
        return None
    if isinstance(autocast_dtype, torch.dtype) and autocast_dtype in (torch.bfloat16, torch.float16):
        return autocast_dtype
    if isinstance(autocast_dtype, str) and autocast_dtype.lower() in _AUTOCAST_DTYPES:
        return _AUTOCAST_DTYPES[autocast_dtype.lower()]
    raise ValueError(
        f"Unknown autocast_dtype {autocast_dtype!r}; use None (float32), torch.bfloat16 (recommended on GPU) or "
        f"torch.float16."
    )


def autocast_context(device: torch.device, autocast_dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``autocast_dtype``, or a no-op for ``None``."""
    if autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=autocast_dtype)
