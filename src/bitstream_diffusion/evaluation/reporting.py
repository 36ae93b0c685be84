"""Reporting of the protocol: result rows, mean ± std summaries, and the files of the output folder.

Files written to ``OUTPUT_DIR`` (all atomically, all rewritten on every run):

* ``results.jsonl`` / ``results.csv`` (:data:`RESULT_COLUMNS`), rows told apart by ``row_type``:

  - ``"samples"``: one per spec x seed: the samples' GenPPL, entropy and MAUVE, NFE, timing;
  - ``"model"`` (with ``--vlb`` / ``--heldout-loss``): one row for the model itself, with the likelihood columns
    (:data:`~bitstream_diffusion.evaluation.protocol_likelihood.LIKELIHOOD_COLUMNS`). Likelihood is a property of
    the model, not of a sampler, so it is measured and written once, not per spec or seed;
  - ``"reference"`` (with a reference): the real held-out rows' GenPPL and entropy (``model_kind = "reference"``);

  every row carries ``model_kind`` (``"cobit"``, ``"ar"`` or ``"reference"``), ``num_parameters`` and
  ``train_tokens`` of the model (empty for the reference);
* ``summary.json`` / ``summary.csv``: one row per spec with mean ± std (sample std, ``ddof=1``) across seeds, then
  the model row and the reference row (:data:`SUMMARY_COLUMNS`); ``summary.md``: the specs and the reference in one
  table, the likelihood in a section of its own;
* ``genppl_vs_entropy.png``: the paper's frontier view (:func:`~.plotting.plot_frontier`; needs matplotlib);
* ``samples.jsonl`` (every generated text with its spec, seed, index and sample seed) and ``reference.jsonl``.

Timing: ``wall_time_s`` is the sum of the batches' generation times as recorded when each batch was made (each on
one device; cached batches keep their recorded time), and ``samples_per_s = num_samples / wall_time_s`` is the
throughput of one device.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.atomic_io import write_text_atomic
from .plotting import plot_frontier
from .protocol_likelihood import LIKELIHOOD_COLUMNS
from .sampler_specs import SPEC_COLUMNS, ResolvedARSpec, ResolvedSpec, sample_seed

if TYPE_CHECKING:
    from .generation import BatchResult
    from .scoring import TextScores

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "RunSettings",
    "format_summary",
    "model_row",
    "plot_frontier",
    "reference_row",
    "result_row",
    "summarize",
    "write_outputs",
]

logger = logging.getLogger(__name__)

_MODEL_COLUMNS = ("num_parameters", "train_tokens")

RESULT_COLUMNS: tuple[str, ...] = (
    "row_type",
    "model_kind",
    "spec",
    "seed",
    *SPEC_COLUMNS,
    "nfe",
    "num_samples",
    "gen_ppl",
    "gen_bits_per_token",
    "entropy",
    "mauve",
    "num_scored_tokens",
    "num_skipped_texts",
    *_MODEL_COLUMNS,
    *LIKELIHOOD_COLUMNS,
    "wall_time_s",
    "samples_per_s",
    "num_batches",
    "cached_batches",
    "batch_size",
    "num_processes",
    "device",
    "autocast_dtype",
    "evaluator",
    "evaluator_dtype",
    "mauve_featurizer",
    "pipeline",
    "pipeline_fingerprint",
    "spec_key",
    "timestamp_utc",
)
"""Columns of ``results.jsonl`` / ``results.csv``. ``paper_nfe`` is a CoBit spec's nominal NFE (empty for ``steps=``
specs), ``num_inference_steps`` its noise levels; ``temperature``/``top_p`` an AR spec's; ``nfe`` the model calls per
sample actually made (CoBit: denoiser calls from the pipeline output; AR: forward passes, one per generated token).
``mauve`` is empty without ``--mauve``; the likelihood columns are filled on the ``model`` row only. ``batch_size``
is the samples per cached batch on ``samples`` rows and the rows per likelihood batch on the ``model`` row."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "row_type",
    "model_kind",
    "spec",
    *SPEC_COLUMNS,
    "nfe",
    "num_seeds",
    "num_samples",
    "gen_ppl_mean",
    "gen_ppl_std",
    "entropy_mean",
    "entropy_std",
    "mauve_mean",
    "mauve_std",
    *_MODEL_COLUMNS,
    *LIKELIHOOD_COLUMNS,
    "wall_time_s_mean",
    "samples_per_s_mean",
)
"""Columns of ``summary.json`` / ``summary.csv``: one row per spec (mean and sample std across seeds; the std is
empty with a single seed), then the ``model`` row (likelihood) and a last row ``spec="reference"`` for the real
data."""


@dataclass(frozen=True)
class RunSettings:
    """The columns every row of one protocol run shares (see :data:`RESULT_COLUMNS`)."""

    batch_size: int
    num_processes: int
    device: str
    autocast_dtype: str
    evaluator: str
    evaluator_dtype: str
    pipeline: str
    pipeline_fingerprint: str
    timestamp_utc: str
    model_kind: str = "cobit"
    num_parameters: int | None = None
    train_tokens: int | None = None
    mauve_featurizer: str | None = None

    def shared_columns(self) -> dict[str, Any]:
        return {
            "num_processes": self.num_processes,
            "device": self.device,
            "autocast_dtype": self.autocast_dtype,
            "evaluator": self.evaluator,
            "evaluator_dtype": self.evaluator_dtype,
            "mauve_featurizer": self.mauve_featurizer,
            "pipeline": self.pipeline,
            "pipeline_fingerprint": self.pipeline_fingerprint,
            "timestamp_utc": self.timestamp_utc,
        }

    def model_columns(self) -> dict[str, Any]:
        return {"model_kind": self.model_kind, "num_parameters": self.num_parameters, "train_tokens": self.train_tokens}


# ---------------------------------------------------------------------------------------------------- rows


def _ordered(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    return {column: row.get(column) for column in columns}


def result_row(
    spec: ResolvedSpec | ResolvedARSpec,
    seed: int,
    batches: Sequence[BatchResult],
    scores: TextScores,
    settings: RunSettings,
    mauve: float | None = None,
) -> dict[str, Any]:
    """The ``samples`` row of one run (``spec``, ``seed``) from its batches (in sample order), scores and MAUVE."""
    nfes = {b.nfe for b in batches}
    if len(nfes) != 1:
        raise RuntimeError(f"Batches of {spec.label} seed {seed} report different NFE {sorted(nfes)}.")
    wall = float(sum(b.wall_time_s for b in batches))
    row = {
        "row_type": "samples",
        **settings.model_columns(),
        "spec": spec.label,
        "seed": seed,
        **spec.columns(),
        "nfe": nfes.pop(),
        "num_samples": scores.num_samples,
        "gen_ppl": scores.gen_ppl,
        "gen_bits_per_token": scores.gen_bits_per_token,
        "entropy": scores.entropy,
        "mauve": mauve,
        "num_scored_tokens": scores.num_scored_tokens,
        "num_skipped_texts": scores.num_skipped_texts,
        "wall_time_s": wall,
        "samples_per_s": scores.num_samples / wall if wall > 0 else math.inf,
        "num_batches": len(batches),
        "cached_batches": sum(b.cached for b in batches),
        "batch_size": settings.batch_size,
        **settings.shared_columns(),
        "spec_key": spec.key,
    }
    return _ordered(row, RESULT_COLUMNS)


def model_row(likelihood: Mapping[str, Any], settings: RunSettings, batch_size: int | None = None) -> dict[str, Any]:
    """The ``model`` row: the likelihood columns of the model (no spec, no seed; ``batch_size``: rows per batch)."""
    row = {"row_type": "model", **settings.model_columns(), **likelihood, "batch_size": batch_size}
    return _ordered({**row, **settings.shared_columns()}, RESULT_COLUMNS)


def reference_row(scores: TextScores, settings: RunSettings) -> dict[str, Any]:
    """The ``reference`` row: GenPPL and entropy of the real held-out rows."""
    row = {
        "row_type": "reference",
        "model_kind": "reference",
        "spec": "reference",
        "num_samples": scores.num_samples,
        "gen_ppl": scores.gen_ppl,
        "gen_bits_per_token": scores.gen_bits_per_token,
        "entropy": scores.entropy,
        "num_scored_tokens": scores.num_scored_tokens,
        "num_skipped_texts": scores.num_skipped_texts,
        **settings.shared_columns(),
    }
    return _ordered(row, RESULT_COLUMNS)


def _mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(
    specs: Sequence[ResolvedSpec | ResolvedARSpec],
    rows: Sequence[Mapping[str, Any]],
    reference: TextScores | None = None,
) -> list[dict[str, Any]]:
    """One :data:`SUMMARY_COLUMNS` row per spec (mean and sample std across its seeds), then the ``model`` row of
    ``rows`` (if any) and the reference's row (from ``reference``, or from the ``reference`` row of ``rows``)."""
    summary = []
    samples = [r for r in rows if r.get("row_type", "samples") == "samples"]
    for spec in specs:
        spec_rows = [r for r in samples if r["spec"] == spec.label]
        gen_ppl_mean, gen_ppl_std = _mean_std(r["gen_ppl"] for r in spec_rows)
        entropy_mean, entropy_std = _mean_std(r["entropy"] for r in spec_rows)
        mauve_mean, mauve_std = _mean_std(r.get("mauve") for r in spec_rows)
        entry = {
            "row_type": "samples",
            **{column: spec_rows[0].get(column) for column in ("model_kind", *_MODEL_COLUMNS)},
            "spec": spec.label,
            **spec.columns(),
            "nfe": spec_rows[0]["nfe"],
            "num_seeds": len(spec_rows),
            "num_samples": spec_rows[0]["num_samples"],
            "gen_ppl_mean": gen_ppl_mean,
            "gen_ppl_std": gen_ppl_std,
            "entropy_mean": entropy_mean,
            "entropy_std": entropy_std,
            "mauve_mean": mauve_mean,
            "mauve_std": mauve_std,
            "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in spec_rows),
            "samples_per_s_mean": statistics.fmean(r["samples_per_s"] for r in spec_rows),
        }
        summary.append(_ordered(entry, SUMMARY_COLUMNS))
    summary.extend(_ordered(r, SUMMARY_COLUMNS) for r in rows if r.get("row_type") == "model")
    reference_rows = [r for r in rows if r.get("row_type") == "reference"]
    if reference is not None or reference_rows:
        source = reference_rows[0] if reference is None else {
            "num_samples": reference.num_samples, "gen_ppl": reference.gen_ppl, "entropy": reference.entropy
        }  # fmt: skip
        entry = {
            "row_type": "reference",
            "model_kind": "reference",
            "spec": "reference",
            "num_samples": source["num_samples"],
            "gen_ppl_mean": source["gen_ppl"],
            "entropy_mean": source["entropy"],
        }
        summary.append(_ordered(entry, SUMMARY_COLUMNS))
    return summary


# ---------------------------------------------------------------------------------------------------- Markdown


def _fmt(value: float | None, std: float | None = None, digits: int = 2) -> str:
    if value is None:
        return ""
    text = f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return text if std is None or not math.isfinite(std) else f"{text} ± {std:.{digits}f}"


def _count(value: int | None) -> str:
    return "" if value is None else f"{int(value):,}"


def _samples_table(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    with_mauve = any(row.get("mauve_mean") is not None for row in summary)
    header = "| spec | model | params | train tokens | noise levels | NFE | seeds | samples | GenPPL | entropy |"
    header += " MAUVE |" if with_mauve else ""
    rule = "|---|---|" + "---:|" * (9 + with_mauve)
    lines = [header + " samples/s |", rule]
    for row in summary:
        if row.get("row_type") == "model":
            continue
        cells = [
            row["spec"],
            row.get("model_kind") or "",
            _count(row.get("num_parameters")),
            _count(row.get("train_tokens")),
            _count(row.get("num_inference_steps")),
            _count(row.get("nfe")),
            _count(row.get("num_seeds")),
            _count(row.get("num_samples")),
            _fmt(row["gen_ppl_mean"], row["gen_ppl_std"]),
            _fmt(row["entropy_mean"], row["entropy_std"]),
        ]
        if with_mauve:
            cells.append(_fmt(row.get("mauve_mean"), row.get("mauve_std"), digits=3))
        cells.append(_fmt(row["samples_per_s_mean"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _likelihood_section(row: Mapping[str, Any]) -> list[str]:
    exact = row.get("likelihood") == "exact"
    estimate = {"bound": f"bound (K={row.get('vlb_num_mc_samples')})", "exact": "exact"}.get(row.get("likelihood"), "")
    ppl = "perplexity (exact)" if exact else "perplexity bound"
    return [
        "",
        f"## Likelihood of the held-out reference rows ({_count(row.get('likelihood_rows'))} rows)",
        "",
        "Measured once for the model (not per sampler spec). CoBit: the variational bound, an upper bound on the "
        "negative log-likelihood; a causal LM: its exact negative log-likelihood. Per token of the model's rows.",
        "",
        f"| model | params | train tokens | estimate | bits per bit | bits per token | {ppl} | held-out loss |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
        "| "
        + " | ".join(
            [
                row.get("model_kind") or "",
                _count(row.get("num_parameters")),
                _count(row.get("train_tokens")),
                estimate,
                _fmt(row.get("vlb_bpd"), row.get("vlb_bpd_stderr"), digits=4),
                _fmt(row.get("bits_per_token"), row.get("bits_per_token_stderr"), digits=3),
                _fmt(row.get("ppl_bound")),
                _fmt(row.get("heldout_loss"), row.get("heldout_loss_stderr"), digits=4),
            ]
        )
        + " |",
    ]


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as Markdown (also written to ``summary.md``): the specs and the reference, then the likelihood."""
    lines = _samples_table(summary)
    for row in summary:
        if row.get("row_type") == "model":
            lines += _likelihood_section(row)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- files


def _csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def _jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_outputs(
    output_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    *,
    specs: Sequence[ResolvedSpec | ResolvedARSpec],
    seeds: Sequence[int],
    samples: Mapping[tuple[str, int], Sequence[str]],
    reference_texts: Sequence[str] | None = None,
    plot: bool = True,
) -> None:
    """Write every file of the output folder (see the module docstring).

    Args:
        output_dir: the output folder.
        rows: :func:`result_row`, :func:`model_row` and :func:`reference_row` rows.
        summary: :func:`summarize` rows.
        specs, seeds: the runs, in the order ``samples.jsonl`` lists them.
        samples: ``{(spec label, seed): texts in index order}``.
        reference_texts: the reference's decoded rows, or ``None`` (no ``reference.jsonl``).
        plot: write ``genppl_vs_entropy.png`` (skipped with a warning when matplotlib is missing).
    """
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / "results.jsonl", _jsonl_text(_ordered(r, RESULT_COLUMNS) for r in rows))
    write_text_atomic(output_dir / "results.csv", _csv_text(rows, RESULT_COLUMNS))
    summary_json = json.dumps({"summary": list(summary), "columns": SUMMARY_COLUMNS}, indent=2)
    write_text_atomic(output_dir / "summary.json", summary_json + "\n")
    write_text_atomic(output_dir / "summary.csv", _csv_text(summary, SUMMARY_COLUMNS))
    write_text_atomic(output_dir / "summary.md", format_summary(summary) + "\n")
    sample_rows = (
        {
            "spec": spec.label,
            "seed": seed,
            "index": index,
            "sample_seed": sample_seed(seed, spec.key, index),
            "text": text,
        }
        for spec in specs
        for seed in seeds
        for index, text in enumerate(samples[spec.label, seed])
    )
    write_text_atomic(output_dir / "samples.jsonl", _jsonl_text(sample_rows))
    if reference_texts is not None:
        reference_rows = ({"index": i, "text": t} for i, t in enumerate(reference_texts))
        write_text_atomic(output_dir / "reference.jsonl", _jsonl_text(reference_rows))
    if plot:
        try:
            plot_frontier(summary, output_dir / "genppl_vs_entropy.png")
        except ImportError:
            logger.warning("matplotlib is not installed; no plot (pip install 'bitstream-diffusion[eval]').")
