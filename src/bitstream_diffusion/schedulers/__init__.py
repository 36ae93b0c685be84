"""Schedulers: the CoBit entropy-rate sampler as a diffusers scheduler, and its entropy-rate tables."""

from .entropy_tables import EntropyTables, validate_entropy_tables
from .scheduling_entropy_rate import ChurnOutput, EntropyRateScheduler, EntropyRateSchedulerOutput

__all__ = [
    "ChurnOutput",
    "EntropyRateScheduler",
    "EntropyRateSchedulerOutput",
    "EntropyTables",
    "validate_entropy_tables",
]
