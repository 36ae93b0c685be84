"""Gathering rows from every process, for the entropy-rate buffer (see ``docs/design.md#training``).

A *gather function* takes this process's ``[n, F]`` tensor and returns the ``[N, F]`` concatenation of every
process's rows in rank order (rank 0 first), the same result on every rank. ``n`` may differ between ranks.

* :func:`accelerate_gather_fn` builds one from accelerate's own collectives (``pad_across_processes`` +
  ``gather``); the training script uses it.
* :func:`gather_across_ranks` does the same with plain ``torch.distributed``, for code that creates its process group
  itself (``torch.distributed.init_process_group`` under ``torch.multiprocessing.spawn`` or a custom launcher).
  accelerate's collectives cannot serve there: they read accelerate's process state, which does not see such a
  group. Measured with two gloo processes started by ``mp.spawn``: ``accelerate.utils.gather`` returned each rank's
  own 2 and 3 rows instead of all 5, silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["GatherFn", "accelerate_gather_fn", "gather_across_ranks"]

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def _concat_trimmed(gathered: torch.Tensor, counts: list[int], padded_rows: int) -> torch.Tensor:
    """``gathered`` holds ``len(counts)`` blocks of ``padded_rows`` rows; keep the first ``counts[r]`` of block r."""
    if padded_rows == 0:  # no rank had a row
        return gathered
    blocks = gathered.split(padded_rows, dim=0)
    return torch.cat([block[:count] for block, count in zip(blocks, counts, strict=True)], dim=0)


def accelerate_gather_fn(accelerator: Accelerator) -> GatherFn | None:
    """A gather function on accelerate's collectives, or ``None`` for a single process (nothing to gather).

    The rows travel on ``accelerator.device`` and come back on the input's device.
    """
    if accelerator.num_processes == 1:
        return None

    def gather(rows: torch.Tensor) -> torch.Tensor:
        if rows.dim() < 1:
            raise ValueError("the gather function needs a tensor with a leading row dimension")
        local = rows.to(accelerator.device).contiguous()
        counts = accelerator.gather(torch.tensor([local.shape[0]], device=accelerator.device)).tolist()
        padded = accelerator.pad_across_processes(local, dim=0)  # [max(counts), F] on every rank
        gathered = accelerator.gather(padded)  # [world * max(counts), F], rank order
        return _concat_trimmed(gathered, counts, padded.shape[0]).to(rows.device)

    return gather


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather rows of a possibly different count on each rank, with plain ``torch.distributed``.

    Counts are gathered first; rows are padded to the largest count, gathered, and trimmed. With the NCCL backend the
    tensors travel on the current CUDA device. Returns the concatenation on ``tensor``'s device. Without an
    initialised process group (or with one process) the input is returned unchanged.
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
    return _concat_trimmed(torch.cat(gathered, dim=0), counts_list, max_count).to(tensor.device)
