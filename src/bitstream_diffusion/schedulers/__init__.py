"""Schedulers: the CoBit entropy-rate sampler as a diffusers scheduler."""

from .scheduling_entropy_rate import (
    ChurnOutput,
    EntropyRateScheduler,
    EntropyRateSchedulerOutput,
    validate_entropy_tables,
)

__all__ = ["ChurnOutput", "EntropyRateScheduler", "EntropyRateSchedulerOutput", "validate_entropy_tables"]
