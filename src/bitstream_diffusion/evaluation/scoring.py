"""Scoring of the protocol: GenPPL and token entropy of each run's samples and of the real reference.

* **GenPPL**: an external causal LM scores each text on its own, token-weighted over the texts
  (:class:`~bitstream_diffusion.evaluation.GenPPLScorer`);
* **entropy**: the mean over samples of each sample's unigram token entropy in nats, of the ids the codec counts
  (``codec.ids_for_token_entropy``: LM1B's 128 BERT ids after the modulo wrap, OWT's cleaned GPT-2 ids).

See ``docs/design.md#evaluation``. One job (a run, or the reference) is scored whole by one process, so its numbers
do not depend on how many processes share the jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REFERENCE_JOB",
    "ScoringJob",
    "TextScores",
    "generated_job",
    "per_sample_entropies",
    "reference_job",
    "resolve_evaluator",
    "score_jobs",
]

REFERENCE_JOB = "reference"
"""The name of the reference's scoring job (runs are named ``(spec_index, seed)``)."""


@dataclass(frozen=True)
class ScoringJob:
    """Texts to score, with their entropy already known.

    Attributes:
        name: :data:`REFERENCE_JOB` or ``(spec_index, seed)``.
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
    """

    name: str | tuple[int, int]
    gen_ppl: float
    gen_bits_per_token: float
    entropy: float
    num_scored_tokens: int
    num_skipped_texts: int
    num_samples: int


def per_sample_entropies(codec, token_ids: Sequence[Sequence[int]]) -> list[float]:
    """Per row of generated (or reference) token ids, the token entropy in nats of the ids the codec counts."""
    from .entropy import token_entropy

    _, entropies = token_entropy(codec.ids_for_token_entropy(token_ids))
    return entropies


def reference_job(texts: list[str], entropy_ids: list[list[int]]) -> ScoringJob:
    """The reference's job (:class:`~bitstream_diffusion.evaluation.reference.ReferenceRows` fields)."""
    from .entropy import token_entropy

    entropy, _ = token_entropy(entropy_ids)
    return ScoringJob(REFERENCE_JOB, texts, entropy)


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
    scorer: Any, jobs: Sequence[ScoringJob], *, batch_size: int, show_progress: bool = True
) -> list[TextScores]:
    """Score every job with ``scorer`` (a :class:`~bitstream_diffusion.evaluation.GenPPLScorer`), in order.

    Args:
        scorer: the GenPPL scorer (unused when ``jobs`` is empty, so it may be ``None`` then).
        jobs: this process's jobs.
        batch_size: evaluator windows per forward pass.
        show_progress: show a progress bar (transformers' ``tqdm``).
    """
    from transformers.utils.logging import tqdm

    scores = []
    for job in tqdm(jobs, desc="score", unit="run", disable=not show_progress):
        result = scorer.score_texts(job.texts, batch_size=batch_size)
        scores.append(
            TextScores(
                name=job.name,
                gen_ppl=result.gen_ppl,
                gen_bits_per_token=result.bits_per_token,
                entropy=job.entropy,
                num_scored_tokens=result.total_scored_tokens,
                num_skipped_texts=int(sum(result.skipped)),
                num_samples=len(job.texts),
            )
        )
    return scores
