"""Evaluation of generated text: GenPPL with an external causal LM, and token entropy.

These are the functions the ``metrics/gen_ppl`` evaluate module and the paper protocol call:

* :func:`compute_gen_ppl` / :class:`GenPPLScorer`: generative perplexity under the official CoBit rules;
* :func:`token_entropy`: mean per-sample unigram token entropy (nats), the official diversity measure;
* :func:`prepare_gguf_evaluator`: a real evaluator folder built offline from a GGUF file (SmolLM2 by default).
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
from .gguf_evaluator import default_cache_dir, prepare_gguf_evaluator

__all__ = [
    "DEFAULT_EVALUATOR",
    "GenPPLResult",
    "GenPPLScorer",
    "ScoringWindow",
    "compute_gen_ppl",
    "default_cache_dir",
    "plan_scoring_windows",
    "prepare_gguf_evaluator",
    "resolve_dtype",
    "sample_token_entropy",
    "token_entropy",
]
