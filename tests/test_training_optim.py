"""The paper's LR schedule (transformers' cosine_with_min_lr: warm-up from 0, cosine to 1e-6) and the constant-decay
EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import get_scheduler

from bitstream_diffusion.training import ExponentialMovingAverage


def _paper_lr(calls: int, base: float, warm: int, total: int, min_lr: float = 1e-6) -> float:
    """The paper's schedule written out: the lr after ``calls`` scheduler steps (linear warm-up from 0, then cosine
    from ``base`` to ``min_lr`` at ``total``)."""
    if calls < warm:
        return base * calls / max(1, warm)
    prog = min(max((calls - warm) / max(1, total - warm), 0.0), 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * prog))


def _lrs_used(base: float, warm: int, total: int) -> list[float]:
    """The lr of every optimizer step of a run, the way the training script builds and steps the schedule."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=base)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warm, num_training_steps=total,
                              scheduler_specific_kwargs={"min_lr": 1e-6})
    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    used.append(optimizer.param_groups[0]["lr"])
    return used


@pytest.mark.parametrize("base, warm, total", [(3e-4, 25, 200), (1e-3, 5, 40), (3e-4, 2500, 20_000), (3e-4, 0, 50)])
def test_transformers_cosine_with_min_lr_is_the_paper_schedule(base, warm, total):
    used = _lrs_used(base, warm, total)
    paper = [_paper_lr(i, base, warm, total) for i in range(len(used))]
    assert used[0] == (0.0 if warm else base)  # warm-up starts at 0: the first step runs at lr 0
    assert used[-1] == pytest.approx(1e-6, rel=1e-12)
    for i, (got, want) in enumerate(zip(used, paper, strict=True)):
        assert got == pytest.approx(want, rel=1e-15, abs=1e-22), i  # float64 rounding only
    # the weights are float32: there the two are the same number at every step
    assert np.array_equal(np.asarray(used, dtype=np.float32), np.asarray(paper, dtype=np.float32))


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


def test_ema_average_parameters_swaps_in_and_back():
    model = torch.nn.Linear(2, 2)
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    raw = model.weight.detach().clone()
    with ema.average_parameters(model):
        assert torch.equal(model.weight, ema.shadow["weight"]) and not torch.equal(model.weight, raw)
    assert torch.equal(model.weight, raw)
    with pytest.raises(RuntimeError, match="boom"), ema.average_parameters(model):
        raise RuntimeError("boom")
    assert torch.equal(model.weight, raw)  # restored on an error too
