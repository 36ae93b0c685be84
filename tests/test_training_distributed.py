"""Gathering the entropy estimator's rows from every process with accelerate's collectives (two CPU processes)."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion.training import EntropyRateEstimator, accelerate_gather_fn


def _rows(rank: int, step: int) -> torch.Tensor:
    """``[n, 2]`` rows whose count differs between ranks and steps (rank 1 sends none at step 0)."""
    n = 0 if (rank, step) == (1, 0) else 2 + rank + step
    return torch.stack([torch.full((n,), 10.0 * rank + step), torch.arange(n, dtype=torch.float32)], dim=1)


def _worker(out_dir: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    gather = accelerate_gather_fn(accelerator)
    rank = accelerator.process_index
    gathered = [gather(_rows(rank, step)) for step in range(3)]
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=64, gather_fn=gather)
    for step in range(3):
        rows = _rows(rank, step)
        estimator.update(0.1 + rows[:, 0], rows[:, 1] / 10)
    torch.save({"gathered": gathered, "estimator": estimator.state_dict()}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_accelerate_gather_collects_uneven_rows_from_every_rank_in_order(tmp_path):
    from accelerate import debug_launcher

    debug_launcher(_worker, args=(str(tmp_path),), num_processes=2)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for step in range(3):
        expected = torch.cat([_rows(0, step), _rows(1, step)])
        for result in results:
            assert torch.equal(result["gathered"][step], expected), step
    expected_sigma = torch.cat([0.1 + _rows(rank, step)[:, 0] for step in range(3) for rank in range(2)])
    for result in results:
        assert torch.equal(result["estimator"]["sigma"], expected_sigma)  # both ranks hold every rank's rows


def test_a_single_process_needs_no_gather():
    from types import SimpleNamespace

    assert accelerate_gather_fn(SimpleNamespace(num_processes=1)) is None
