"""Self-conditioning in training: the official recipe with a fake denoiser."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion.training import self_conditioning_estimate


class _RecordingDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.calls: list[tuple[torch.Tensor | None, bool]] = []

    def forward(self, noisy_bits, sigma, self_cond):
        self.calls.append((self_cond, torch.is_grad_enabled()))
        return (self.scale * (noisy_bits - 0.5) / sigma[:, None] ** 2).unsqueeze(-1)  # [B, S, 1]


def test_estimate_follows_the_official_recipe():
    denoiser = _RecordingDenoiser()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 12, generator=gen)
    sigma = torch.rand(16, generator=gen) + 0.5

    gen = torch.Generator().manual_seed(7)
    estimate = self_conditioning_estimate(denoiser, x, sigma, generator=gen)
    selected = torch.rand(16, generator=torch.Generator().manual_seed(7)) < 0.5  # one coin per example, first draw
    assert torch.equal(gen.get_state(), _state_after_rand(7, 16))  # and nothing else
    assert 0 < int(selected.sum()) < 16

    assert len(denoiser.calls) == 1 and denoiser.calls[0][0] is None  # bootstrap with the "no estimate" input
    assert denoiser.calls[0][1] is False  # no graph for a detached estimate
    expected = torch.sigmoid(2.0 * (x - 0.5) / sigma[:, None] ** 2)
    assert estimate.shape == x.shape and not estimate.requires_grad
    torch.testing.assert_close(estimate[selected], expected[selected], rtol=0, atol=0)
    assert torch.equal(estimate[~selected], torch.zeros_like(estimate[~selected]))


def _state_after_rand(seed: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    torch.rand(n, generator=gen)
    return gen.get_state()


def test_no_selected_row_gives_none_and_no_bootstrap_pass():
    denoiser = _RecordingDenoiser()
    x, sigma = torch.rand(4, 6), torch.ones(4)
    assert self_conditioning_estimate(denoiser, x, sigma, prob=0.0) is None
    gen = torch.Generator().manual_seed(0)
    assert self_conditioning_estimate(denoiser, x, sigma, prob=1e-9, generator=gen) is None
    assert denoiser.calls == []
    full = self_conditioning_estimate(denoiser, x, sigma, prob=1.0, bootstrap_grad=True)
    assert full is not None and bool((full > 0).all()) and denoiser.calls[-1][1] is True and not full.requires_grad


def test_bad_arguments():
    denoiser = _RecordingDenoiser()
    with pytest.raises(ValueError, match="prob"):
        self_conditioning_estimate(denoiser, torch.rand(2, 3), torch.ones(2), prob=1.5)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        self_conditioning_estimate(denoiser, torch.rand(2, 3, 1), torch.ones(2))
    with pytest.raises(ValueError, match="sigma"):
        self_conditioning_estimate(denoiser, torch.rand(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="denoiser returned"):
        self_conditioning_estimate(lambda x, s, sc: x[:, :2], torch.rand(2, 3), torch.ones(2), prob=1.0)
