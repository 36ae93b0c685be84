"""Per-sample random streams: one `torch.Generator` per sample, derived from one seed.

With one generator per sample, the pipeline draws each sample's noise from that sample's own generator, so a sample
does not depend on the batch it runs in: a batch split into chunks, or the inputs of a transformers call grouped
differently, give the same samples. The streams are derived with NumPy's `SeedSequence`, whose spawn keys are made
for exactly this (independent, well-mixed child seeds of one seed): sample `key` of seed `s` is seeded with
`SeedSequence(s, spawn_key=key).generate_state(1, numpy.uint64)[0]`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["derive_sample_generators", "sample_generators", "sample_seed"]

#: Seeds drawn from a generator lie in [0, 2**63): a non-negative int64.
_SEED_BOUND = 2**63 - 1


def sample_seed(seed: int, key: Sequence[int]) -> int:
    """The seed of the stream `key` (a tuple of non-negative ints, e.g. `(input_index, sequence_index)`) of `seed`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return int(np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key)).generate_state(1, np.uint64)[0])


def sample_generators(
    seed: int, keys: Iterable[Sequence[int]], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator on `device` per key, seeded with [`sample_seed`]`(seed, key)`."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, key)) for key in keys]


def derive_sample_generators(generator: torch.Generator, batch_size: int) -> list[torch.Generator]:
    """
    `batch_size` generators on the device of `generator`, derived from it with one draw: a seed `s` in [0, 2**63)
    (`torch.randint`), then sample `i` gets [`sample_seed`]`(s, (i,))`. The result depends only on the state of
    `generator`, which advances by that one draw.
    """
    base = torch.randint(0, _SEED_BOUND, (1,), generator=generator, device=generator.device, dtype=torch.int64)
    return sample_generators(int(base.item()), ((i,) for i in range(batch_size)), device=generator.device)
