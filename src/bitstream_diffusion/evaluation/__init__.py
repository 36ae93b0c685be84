"""Evaluation of CoBit models: generated-text quality and diversity, and the paper's protocol.

* :func:`compute_gen_ppl` / :class:`GenPPLScorer`: generative perplexity under the official CoBit rules (the code the
  ``metrics/gen_ppl`` evaluate module calls);
* :func:`token_entropy`: mean per-sample unigram token entropy (nats), the official diversity measure;
* ``python -m bitstream_diffusion.evaluation.run_protocol``: samples x seeds -> GenPPL and entropy, mean ± std.

Names load on first access, so that the protocol's ``--help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_ATTRIBUTES: dict[str, str] = {
    "sample_token_entropy": ".entropy",
    "token_entropy": ".entropy",
    "DEFAULT_EVALUATOR": ".gen_ppl",
    "GenPPLResult": ".gen_ppl",
    "GenPPLScorer": ".gen_ppl",
    "ScoringWindow": ".gen_ppl",
    "compute_gen_ppl": ".gen_ppl",
    "plan_scoring_windows": ".gen_ppl",
    "resolve_dtype": ".gen_ppl",
}

__all__ = [
    "compute_gen_ppl",
    "DEFAULT_EVALUATOR",
    "GenPPLResult",
    "GenPPLScorer",
    "plan_scoring_windows",
    "resolve_dtype",
    "sample_token_entropy",
    "ScoringWindow",
    "token_entropy",
]

if TYPE_CHECKING:
    from .entropy import sample_token_entropy, token_entropy
    from .gen_ppl import (
        DEFAULT_EVALUATOR,
        GenPPLResult,
        GenPPLScorer,
        ScoringWindow,
        compute_gen_ppl,
        plan_scoring_windows,
        resolve_dtype,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
