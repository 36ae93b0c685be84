"""The paper's learning-rate schedule and EMA of the weights (REFERENCE_TRAINING §6.3, §6.4).

LR: linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` (1e-6) at ``total_steps``.
:func:`get_lr_lambda` gives the multiplier for ``torch.optim.lr_scheduler.LambdaLR`` (stepped after every optimiser
step). The i-th optimiser step (1-based) then runs at ``lr(i - 1)``, the value the official scheduler had set after
``i - 1`` calls: identical to the official schedule at every step but the first, which the official code ran at the
full base lr (its scheduler had not been called yet) and which here runs at ``lr(0) = 0``. ``first_step_full_lr=True``
restores that quirk.

EMA: ``shadow = decay · shadow + (1 - decay) · param`` after every optimiser step, from the first one, with a constant
decay (0.9999) and no warm-up, over trainable parameters only. (diffusers' ``EMAModel`` ramps its decay as
``(1 + t) / (10 + t)``, which the official code does not.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage", "get_lr_lambda", "warmup_cosine_lr"]


def warmup_cosine_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 1e-6) -> float:
    """The learning rate after ``step`` scheduler calls: ``base·step/warm`` in warm-up, then cosine to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def get_lr_lambda(
    *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 1e-6, first_step_full_lr: bool = False
) -> Callable[[int], float]:
    """Multiplier of ``base_lr`` for ``LambdaLR`` (the optimiser's lr must be ``base_lr``).

    Paper values: ``base_lr`` 3e-4 (S) / 2e-4 (M), ``warmup_steps`` 2,500 / 5,000, ``total_steps`` 1,000,000.
    """
    if base_lr <= 0 or warmup_steps < 0 or total_steps < warmup_steps or min_lr < 0:
        raise ValueError("need base_lr > 0, 0 <= warmup_steps <= total_steps and min_lr >= 0")

    def lr_lambda(step: int) -> float:
        if step == 0 and first_step_full_lr:
            return 1.0
        lr = warmup_cosine_lr(step, base_lr=base_lr, warmup_steps=warmup_steps, total_steps=total_steps, min_lr=min_lr)
        return lr / base_lr

    return lr_lambda


_WRAPPER_PARTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _clean_name(name: str) -> str:
    """Drop the wrapper prefixes: ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``_fsdp_wrapped_module.``
    (FSDP1 with ``use_orig_params``) and ``_checkpoint_wrapped_module.`` (activation checkpointing wrappers)."""
    previous = None
    while previous != name:
        previous = name
        for part in _WRAPPER_PARTS:
            name = name.replace(part, "")
        if name.startswith("module."):
            name = name[len("module.") :]
    return name


class ExponentialMovingAverage:
    """Constant-decay EMA of a model's trainable parameters, keyed by clean names (official ``utils/ema.py``).

    Use ``update(model)`` after each optimiser step; ``store(model)`` + ``copy_to(model)`` ... ``restore(model)`` to
    evaluate with EMA weights; ``state_dict()``/``load_state_dict()`` for checkpoints (``accelerator.
    register_for_checkpointing(ema)`` works); the official checkpoint's ``ema["shadow"]`` loads as ``{"decay":
    ..., "shadow": ...}``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow = {name: p.detach().clone() for name, p in self._params(model)}
        self._backup: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in model.named_parameters():
            if param.requires_grad:
                yield _clean_name(name), param

    def _matched(self, model: nn.Module) -> Iterator[tuple[torch.Tensor, nn.Parameter]]:
        for name, param in self._params(model):
            if name not in self.shadow:
                raise KeyError(f"parameter {name!r} has no EMA shadow (was the model changed after the EMA was made?)")
            if self.shadow[name].device != param.device:  # the model moved (e.g. accelerator.prepare)
                self.shadow[name] = self.shadow[name].to(param.device)
            yield self.shadow[name], param

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, param in self._matched(model):
            shadow.mul_(self.decay).add_(param.detach().to(shadow.dtype), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for shadow, param in self._matched(model):
            param.copy_(shadow)

    @torch.no_grad()
    def store(self, model: nn.Module) -> None:
        self._backup = {name: p.detach().clone() for name, p in self._params(model)}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        if self._backup is None:
            raise RuntimeError("restore() without a matching store()")
        for name, param in self._params(model):
            param.copy_(self._backup[name])
        self._backup = None

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        self.decay = float(state["decay"])
        for name, tensor in state["shadow"].items():
            if name in self.shadow:
                self.shadow[name].copy_(tensor)
