"""Evaluation of generated text: GenPPL with an external causal LM, and token entropy.

These are the functions the ``metrics/gen_ppl`` evaluate module and the paper protocol call:

* :func:`compute_gen_ppl` / :class:`GenPPLScorer`: generative perplexity under the official CoBit rules;
* :func:`token_entropy`: mean per-sample unigram token entropy (nats), the official diversity measure;
* :func:`compute_vlb` / :class:`VLBOutput`: the official variational bound on held-out bits (bits per bit, per token);
* :func:`compute_heldout_loss` / :class:`HeldoutLossOutput`: the training loss on held-out rows;
* :func:`compute_mauve` / :class:`MauveResult`: MAUVE of generated against real texts;
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
from .heldout_loss import HeldoutLossOutput, compute_heldout_loss
from .mauve import DEFAULT_FEATURIZER, MauveFeaturizer, MauveResult, compute_mauve, mauve_from_features
from .vlb import VLBOutput, VLBTerms, compute_vlb, vlb_terms
from .vlb_draws import VLBDraws, draw_vlb_noise

__all__ = [
    "DEFAULT_FEATURIZER",
    "HeldoutLossOutput",
    "MauveFeaturizer",
    "MauveResult",
    "VLBDraws",
    "VLBOutput",
    "VLBTerms",
    "compute_heldout_loss",
    "compute_mauve",
    "compute_vlb",
    "draw_vlb_noise",
    "mauve_from_features",
    "vlb_terms",
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
