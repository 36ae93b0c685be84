"""Evaluation of generated text: GenPPL with an external causal LM, and token entropy.

These are the functions the ``metrics/gen_ppl`` evaluate module and the paper protocol call:

* :func:`compute_gen_ppl` / :class:`GenPPLScorer`: generative perplexity under the official CoBit rules;
* :func:`token_entropy`: mean per-sample unigram token entropy (nats), the official diversity measure;
"""

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

__all__ = [
    "DEFAULT_EVALUATOR",
    "GenPPLResult",
    "GenPPLScorer",
    "ScoringWindow",
    "compute_gen_ppl",
    "plan_scoring_windows",
    "resolve_dtype",
    "sample_token_entropy",
    "token_entropy",
]
