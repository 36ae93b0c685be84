"""The paper's LR schedule (warm-up + cosine to 1e-6) and the constant-decay EMA."""

from __future__ import annotations

import math

import pytest
import torch

from bitstream_diffusion.training import (
    ExponentialMovingAverage,
    get_lr_lambda,
    warmup_cosine_lr,
)


def _official_lr(calls: int, base: float, warm: int, total: int, min_lr: float = 1e-6) -> float:
    """REFERENCE_TRAINING §6.3: the lr after ``calls`` calls of the official WarmUpCosineDecayScheduler."""
    if calls < warm:
        return base * calls / max(1, warm)
    prog = min(max((calls - warm) / max(1, total - warm), 0.0), 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * prog))


def test_lambda_lr_matches_the_official_schedule_after_the_first_step():
    base, warm, total = 3e-4, 25, 200
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=base)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, get_lr_lambda(base_lr=base, warmup_steps=warm, total_steps=total)
    )
    used = []
    for _ in range(total + 10):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used[0] == 0.0  # official: base lr at the very first step (the quirk), documented
    for i in range(1, len(used)):
        assert used[i] == pytest.approx(_official_lr(i, base, warm, total), rel=1e-12, abs=1e-15)
    assert used[-1] == pytest.approx(1e-6)


def test_first_step_quirk_on_request_and_paper_values():
    quirk = get_lr_lambda(base_lr=3e-4, warmup_steps=2500, total_steps=1_000_000, first_step_full_lr=True)
    assert quirk(0) == 1.0 and quirk(1) == pytest.approx(1 / 2500)
    assert warmup_cosine_lr(750_000, base_lr=3e-4, warmup_steps=2500, total_steps=1_000_000) == pytest.approx(
        4.5e-5, rel=0.02
    )
    with pytest.raises(ValueError):
        get_lr_lambda(base_lr=0.0, warmup_steps=1, total_steps=2)


def test_ema_constant_decay_over_trainable_parameters(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    ema = ExponentialMovingAverage(model, decay=0.9)
    assert sorted(ema.shadow) == ["0.bias", "0.weight", "1.bias"]  # frozen params and buffers excluded
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, param in model.named_parameters():
        if name in start:
            torch.testing.assert_close(ema.shadow[name], 0.9 * start[name] + 0.1 * param.detach())

    ema.store(model)
    ema.copy_to(model)
    assert torch.equal(model[0].weight, ema.shadow["0.weight"])
    ema.restore(model)
    torch.testing.assert_close(model[0].weight, start["0.weight"] + 1.0)

    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = ExponentialMovingAverage(model, decay=0.5)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert other.decay == 0.9 and all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)


def test_ema_reads_ddp_and_compiled_names():
    inner = torch.nn.Linear(2, 2)
    wrapper = torch.nn.Module()
    wrapper.module = inner  # what DDP looks like
    ema = ExponentialMovingAverage(wrapper)
    assert sorted(ema.shadow) == ["bias", "weight"]
    ema.update(inner)
