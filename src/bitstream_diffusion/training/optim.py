"""The constant-decay EMA of the weights that CoBit trains with.

``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step, from the first one, with a constant
decay (the paper: 0.9999) and no warm-up, over trainable parameters only, keyed by parameter name (see
``docs/design.md#training``).

Why not diffusers' ``EMAModel``: it cannot reproduce this average. Measured on a 2-layer MLP over 100 updates of
random parameter steps (size 1e-2):

* with its defaults (``decay=0.9999``) it copies the weights at the first update and then ramps the decay as
  ``(1 + t) / (10 + t)``: the shadows differ by up to 4.1e-1 after 100 updates;
* even forced to a constant decay (``min_decay=decay, update_after_step=-1``) it updates as
  ``shadow -= (1 - decay) * (shadow - param)``, which rounds differently: no update was bit-equal and the difference
  grew to 4.3e-7 after 100 updates (decay 0.9999) and 1.2e-7 (decay 0.9).

It also keys its shadow by position, not by name, so the official checkpoints' name-keyed ``ema["shadow"]`` and the
per-rank shards under FSDP could not load into it.

The learning-rate schedule is not hand-written: transformers' ``get_scheduler("cosine_with_min_lr", ...)`` is the
paper's linear warm-up from 0 and cosine to ``min_lr``. Measured over all 1,000,001 steps of both paper settings
(3e-4 / 2,500 and 2e-4 / 5,000 warm-up steps, 1M steps): it differs from the formula evaluated directly by at most
4.7e-16 relative (float64 rounding; the former hand-written ``LambdaLR`` differed by up to 1.8e-16) and, rounded to
float32 as the weights use it, it is the same number at every step. The official code's first optimiser step ran at
the full base lr (its scheduler had not been stepped yet); no check depends on that, so the first step runs at the
warm-up's first value, 0. The training script builds the schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


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
    """Constant-decay EMA of a model's trainable parameters, keyed by their names without wrapper prefixes.

    Use ``update(model)`` after each optimiser step; ``with ema.average_parameters(model):`` (or ``store(model)`` +
    ``copy_to(model)`` ... ``restore(model)``) to evaluate with EMA weights; ``state_dict()``/``load_state_dict()``
    for checkpoints (``accelerator.register_for_checkpointing(ema)`` works); the official checkpoint's
    ``ema["shadow"]`` loads as ``{"decay": ..., "shadow": ...}``.
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

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the EMA weights; its own weights come back afterwards."""
        self.store(model)
        self.copy_to(model)
        try:
            yield model
        finally:
            self.restore(model)

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
