"""Gathering rows from every process, for the entropy-rate buffer (DESIGN §5.7).

A *gather function* takes this process's ``[n, F]`` tensor and returns the ``[N, F]`` concatenation of every
process's rows in rank order (rank 0 first), the same result on every rank. ``n`` may differ between ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = ["GatherFn", "gather_across_ranks"]

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather rows of a possibly different count on each rank, with ``torch.distributed``.

    Works under ``torchrun`` and ``accelerate launch`` (accelerate initialises ``torch.distributed``). Counts are
    gathered first; rows are padded to the largest count, gathered, and trimmed. With the NCCL backend the tensors
    travel on the current CUDA device. Returns the concatenation on ``tensor``'s device. Without an initialised
    process group (or with one process) the input is returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if tensor.dim() < 1:
        raise ValueError("gather_across_ranks needs a tensor with a leading row dimension")
    comm_device = tensor.device
    if dist.get_backend() == "nccl" and comm_device.type != "cuda":
        comm_device = torch.device("cuda", torch.cuda.current_device())
    world_size = dist.get_world_size()
    local = tensor.to(comm_device).contiguous()

    count = torch.tensor([local.shape[0]], device=comm_device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts_list = [int(c.item()) for c in counts]
    max_count = max(counts_list)

    padded = local.new_zeros((max_count, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    rows = [chunk[:n] for chunk, n in zip(gathered, counts_list, strict=True)]
    return torch.cat(rows, dim=0).to(tensor.device)
