"""Splitting a large sampling batch into chunks that run one after another, so that it fits in memory.

A chunk is a `slice` of the batch's rows. `max_batch_size="auto"` sizes the chunks from the free memory of a CUDA
device and a rough estimate of one sample's peak memory during a denoiser call ([`estimate_sample_bytes`]).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from ..modeling.configuration_sdt import SDTConfig

__all__ = [
    "AUTO_MEMORY_FRACTION",
    "MaxBatchSize",
    "auto_max_batch_size",
    "batch_chunks",
    "check_max_batch_size",
    "estimate_sample_bytes",
]

MaxBatchSize = int | Literal["auto"] | None

#: The share of the free device memory that `max_batch_size="auto"` plans to fill (the estimate is rough).
AUTO_MEMORY_FRACTION = 0.7
#: Float32 `[num_bits]` rows the sampler keeps per sample besides the model's activations: the state, the churned
#: state, the churn noise, the estimate, the self-conditioning input, the known bits and mask, the final outputs.
_SAMPLER_ROWS = 12


def check_max_batch_size(max_batch_size: MaxBatchSize) -> None:
    """Raise `ValueError` unless `max_batch_size` is `None`, `"auto"` or a positive integer."""
    if max_batch_size is None or max_batch_size == "auto":
        return
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(
            f"`max_batch_size` (the most samples run at once) must be a positive integer, 'auto' (from the free "
            f"CUDA memory) or None (the whole batch at once), got {max_batch_size!r}."
        )


def batch_chunks(batch_size: int, max_batch_size: int | None) -> list[slice]:
    """The rows of each chunk: `[slice(0, m), slice(m, 2m), ...]` covering `range(batch_size)`, `m = max_batch_size`."""
    step = batch_size if max_batch_size is None else min(max_batch_size, batch_size)
    return [slice(start, min(start + step, batch_size)) for start in range(0, batch_size, step)]


def estimate_sample_bytes(config: SDTConfig, num_tokens: int, materialized_attention: bool = True) -> int:
    """
    A rough upper bound of one sample's memory during a denoiser call, in bytes, counting float32 everywhere.

    Bit level (`num_tokens * bits_per_token` bits): the per-bit features and about eight head-width activations per
    bit, plus the sampler's rows. Token level: about eight hidden-width and three MLP-width activations per token,
    plus one `num_tokens x num_tokens` score matrix per head when the attention materializes it (eager attention,
    or SDPA's math fallback).
    """
    num_bits = num_tokens * config.bits_per_token
    bit_level = num_bits * (config.bit_feature_dim + 8 * config.head_hidden_size + _SAMPLER_ROWS)
    token_level = num_tokens * (8 * config.hidden_size + 3 * config.intermediate_size)
    attention = 3 * config.num_attention_heads * num_tokens**2 if materialized_attention else 0
    return 4 * (bit_level + token_level + attention)


def auto_max_batch_size(
    config: SDTConfig,
    num_tokens: int,
    device: torch.device,
    free_bytes: int | None = None,
    memory_fraction: float = AUTO_MEMORY_FRACTION,
) -> int | None:
    """
    The chunk size of `max_batch_size="auto"`: how many samples fit in `memory_fraction` of the free memory.

    `free_bytes` defaults to `torch.cuda.mem_get_info(device)` on a CUDA device. On other devices without
    `free_bytes` it returns `None` (the whole batch at once: host memory is not measured). Only eager attention is
    counted with its score matrices: SDPA and flash-attention kernels do not materialize them. At least 1.
    """
    if free_bytes is None:
        if device.type != "cuda":
            return None
        free_bytes, _ = torch.cuda.mem_get_info(device)
    attention = getattr(config, "_attn_implementation", None) or "eager"
    materialized = not (attention == "sdpa" or attention.startswith("flash"))
    per_sample = estimate_sample_bytes(config, num_tokens, materialized_attention=materialized)
    return max(1, int(free_bytes * memory_fraction) // per_sample)
