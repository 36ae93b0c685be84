"""Scoring of the protocol: GenPPL, token entropy and MAUVE of each run's samples and of the real reference.

* **GenPPL**: an external causal LM scores each text on its own, token-weighted over the texts
  (:class:`~bitstream_diffusion.evaluation.GenPPLScorer`);
* **entropy**: the mean over samples of each sample's unigram token entropy in nats, of the ids the codec counts
  (``codec.ids_for_token_entropy``: LM1B's 128 BERT ids after the modulo wrap, OWT's cleaned GPT-2 ids; a causal
  LM's rows follow the same rules in its own tokens, see :mod:`~bitstream_diffusion.evaluation.causal_lm_text`);
* **MAUVE** (``--mauve``): each run's texts against the reference texts
  (:func:`~bitstream_diffusion.evaluation.mauve_from_features`). Each job's features are computed with its GenPPL
  score (:class:`~bitstream_diffusion.evaluation.MauveFeaturizer`), so the reference's features are computed once
  for all runs; then the runs' MAUVE numbers are computed, each by one process.

See ``docs/design.md#evaluation``. One job (a run, or the reference) is scored whole by one process, so its numbers
do not depend on how many processes share the jobs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REAL_TEXT_JOB",
    "MauveSettings",
    "ScoringJob",
    "TextScores",
    "generated_job",
    "mauve_of_runs",
    "per_sample_entropies",
    "reference_job",
    "resolve_evaluator",
    "score_jobs",
]

REAL_TEXT_JOB = "reference"
"""The name of the reference's scoring job (runs are named ``(spec_index, seed)``)."""


@dataclass(frozen=True)
class ScoringJob:
    """Texts to score, with their entropy already known.

    Attributes:
        name: :data:`REAL_TEXT_JOB` or ``(spec_index, seed)``.
        texts: the texts GenPPL scores.
        entropy: mean per-sample token entropy in nats.
    """

    name: str | tuple[int, int]
    texts: list[str]
    entropy: float


@dataclass(frozen=True)
class TextScores:
    """The numbers of one scoring job.

    Attributes:
        name: the job's name.
        gen_ppl: GenPPL (``inf`` when nothing could be scored).
        gen_bits_per_token: the evaluator's mean NLL in bits per scored token.
        entropy: mean per-sample token entropy in nats.
        num_scored_tokens: evaluator tokens scored.
        num_skipped_texts: texts GenPPL left out (empty or a single token).
        num_samples: texts in the job.
        features: the job's MAUVE features ``[n, d]`` (with ``--mauve``), else ``None``.
    """

    name: str | tuple[int, int]
    gen_ppl: float
    gen_bits_per_token: float
    entropy: float
    num_scored_tokens: int
    num_skipped_texts: int
    num_samples: int
    features: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class MauveSettings:
    """How ``--mauve`` featurises and compares texts (:func:`~bitstream_diffusion.evaluation.compute_mauve`).

    Attributes:
        featurizer: the featuriser, a hub id or a local folder (already resolved by :func:`resolve_evaluator`).
        max_text_length: featuriser tokens kept per text.
        num_buckets: k-means clusters (``"auto"``: one per ten texts; the paper: 25).
        seed: seeds PCA and k-means.
        batch_size: texts per featuriser call.
    """

    featurizer: str
    max_text_length: int
    num_buckets: int | str = "auto"
    seed: int = 25
    batch_size: int = 8


def per_sample_entropies(codec, token_ids: Sequence[Sequence[int]]) -> list[float]:
    """Per row of generated (or reference) token ids, the token entropy in nats of the ids the codec counts."""
    from .entropy import token_entropy

    _, entropies = token_entropy(codec.ids_for_token_entropy(token_ids))
    return entropies


def reference_job(texts: list[str], entropy_ids: list[list[int]]) -> ScoringJob:
    """The reference's job (:class:`~bitstream_diffusion.evaluation.reference.ReferenceRows` fields)."""
    from .entropy import token_entropy

    entropy, _ = token_entropy(entropy_ids)
    return ScoringJob(REAL_TEXT_JOB, texts, entropy)


def generated_job(name: tuple[int, int], texts: list[str], entropies: Sequence[float]) -> ScoringJob:
    """A run's job from its samples and their per-sample entropies (:func:`per_sample_entropies`)."""
    return ScoringJob(name, texts, float(sum(entropies) / len(entropies)))


def resolve_evaluator(evaluator: str) -> str:
    """``smollm2`` or a ``.gguf`` file -> a dequantised local folder (offline evaluators); anything else unchanged."""
    if evaluator.lower() in ("smollm2", "smollm2-gguf"):
        from ..offline.gguf_evaluator import prepare_gguf_evaluator

        return str(prepare_gguf_evaluator())
    if evaluator.endswith(".gguf"):
        from ..offline.gguf_evaluator import prepare_gguf_evaluator

        return str(prepare_gguf_evaluator(evaluator))
    return evaluator


def score_jobs(
    scorer: Any,
    jobs: Sequence[ScoringJob],
    *,
    batch_size: int,
    show_progress: bool = True,
    featurizer: Any = None,
    mauve: MauveSettings | None = None,
) -> list[TextScores]:
    """Score every job with ``scorer`` (a :class:`~bitstream_diffusion.evaluation.GenPPLScorer`), in order.

    Args:
        scorer: the GenPPL scorer (unused when ``jobs`` is empty, so it may be ``None`` then).
        jobs: this process's jobs.
        batch_size: evaluator windows per forward pass.
        show_progress: show a progress bar (transformers' ``tqdm``).
        featurizer: a :class:`~bitstream_diffusion.evaluation.MauveFeaturizer` to compute each job's MAUVE
            features with (``mauve`` gives the settings), or ``None``.
        mauve: the MAUVE settings (with ``featurizer``).
    """
    from transformers.utils.logging import tqdm

    scores = []
    for job in tqdm(jobs, desc="score", unit="run", disable=not show_progress):
        result = scorer.score_texts(job.texts, batch_size=batch_size)
        features = None
        if featurizer is not None and any(job.texts):
            features = featurizer.featurize(
                job.texts, max_text_length=mauve.max_text_length, batch_size=mauve.batch_size
            )
        scores.append(
            TextScores(
                name=job.name,
                gen_ppl=result.gen_ppl,
                gen_bits_per_token=result.bits_per_token,
                entropy=job.entropy,
                num_scored_tokens=result.total_scored_tokens,
                num_skipped_texts=int(sum(result.skipped)),
                num_samples=len(job.texts),
                features=features,
            )
        )
    return scores


def mauve_of_runs(state, scores: dict, settings: MauveSettings) -> dict[tuple[int, int], float]:
    """MAUVE of every run's features against the reference's; call it on every process (runs split between them).

    Args:
        state: accelerate's ``PartialState``.
        scores: ``{job name: TextScores}`` of every job, gathered, with features.
        settings: the MAUVE settings.

    Returns:
        ``{(spec_index, seed): MAUVE}``, the same on every process.
    """
    from accelerate.utils import gather_object

    from .mauve import mauve_from_features

    reference = scores[REAL_TEXT_JOB].features
    runs = sorted(name for name in scores if name != REAL_TEXT_JOB)
    values = []
    with state.split_between_processes(runs) as mine:
        for run in mine:
            features = scores[run].features
            if features is None:  # every sample of the run is empty text
                values.append((run, math.nan))
                continue
            result = mauve_from_features(features, reference, num_buckets=settings.num_buckets, seed=settings.seed)
            values.append((run, result.mauve))
    return dict(gather_object(values))
