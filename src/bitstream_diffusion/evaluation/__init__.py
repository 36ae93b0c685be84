"""Evaluation of CoBit models: generated-text quality and diversity, and the paper's protocol.

* :func:`compute_gen_ppl` / :class:`GenPPLScorer`: generative perplexity under the official CoBit rules (the code the
  ``metrics/gen_ppl`` evaluate module calls);
* :func:`token_entropy`: mean per-sample unigram token entropy (nats), the official diversity measure;
* :func:`compute_vlb` / :class:`VLBOutput`: the official variational bound on held-out bits (bits per bit, per token);
* :func:`compute_heldout_loss` / :class:`HeldoutLossOutput`: the training loss on held-out rows;
* :func:`compute_mauve` / :class:`MauveResult`: MAUVE of generated against real texts;
* ``python -m bitstream_diffusion.evaluation.run_protocol``: samples x seeds -> GenPPL and entropy, mean ± std.

Names load on first access, so that the protocol's ``--help`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy_exports import lazy_exports

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
    "HeldoutLossOutput": ".heldout_loss",
    "compute_heldout_loss": ".heldout_loss",
    "DEFAULT_FEATURIZER": ".mauve",
    "MauveFeaturizer": ".mauve",
    "MauveResult": ".mauve",
    "compute_mauve": ".mauve",
    "mauve_from_features": ".mauve",
    "VLBOutput": ".vlb",
    "VLBTerms": ".vlb",
    "compute_vlb": ".vlb",
    "vlb_terms": ".vlb",
    "VLBDraws": ".vlb_draws",
    "draw_vlb_noise": ".vlb_draws",
}

__all__ = [
    "compute_gen_ppl",
    "compute_heldout_loss",
    "compute_mauve",
    "compute_vlb",
    "DEFAULT_EVALUATOR",
    "DEFAULT_FEATURIZER",
    "draw_vlb_noise",
    "GenPPLResult",
    "GenPPLScorer",
    "HeldoutLossOutput",
    "mauve_from_features",
    "MauveFeaturizer",
    "MauveResult",
    "plan_scoring_windows",
    "resolve_dtype",
    "sample_token_entropy",
    "ScoringWindow",
    "token_entropy",
    "vlb_terms",
    "VLBDraws",
    "VLBOutput",
    "VLBTerms",
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
    from .heldout_loss import HeldoutLossOutput, compute_heldout_loss
    from .mauve import DEFAULT_FEATURIZER, MauveFeaturizer, MauveResult, compute_mauve, mauve_from_features
    from .vlb import VLBOutput, VLBTerms, compute_vlb, vlb_terms
    from .vlb_draws import VLBDraws, draw_vlb_noise


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
