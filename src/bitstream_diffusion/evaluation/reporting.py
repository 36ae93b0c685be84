"""Reporting of the protocol: result rows, mean ± std summaries, and the files of the output folder.

Files written to ``OUTPUT_DIR`` (all atomically, all rewritten on every run):

* ``results.jsonl`` / ``results.csv``: one row per spec x seed (:data:`RESULT_COLUMNS`);
* ``summary.json`` / ``summary.csv`` / ``summary.md``: one row per spec with mean ± std (sample std, ``ddof=1``)
  across seeds, and a ``reference`` row (:data:`SUMMARY_COLUMNS`);
* ``genppl_vs_entropy.png``: the paper's frontier view, one point per spec with ±std error bars, the reference as
  a star (:func:`plot_frontier`; needs matplotlib);
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

from ..utils.atomic_io import atomic_write, write_text_atomic
from .sampler_specs import ResolvedSpec, sample_seed

if TYPE_CHECKING:
    from .generation import BatchResult
    from .scoring import TextScores

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "RunSettings",
    "format_summary",
    "plot_frontier",
    "result_row",
    "summarize",
    "write_outputs",
]

logger = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = (
    "spec",
    "seed",
    "gamma",
    "paper_nfe",
    "num_inference_steps",
    "gamma_per_step",
    "solver",
    "self_conditioning",
    "nfe",
    "num_samples",
    "gen_ppl",
    "gen_bits_per_token",
    "entropy",
    "num_scored_tokens",
    "num_skipped_texts",
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
    "pipeline",
    "pipeline_fingerprint",
    "spec_key",
    "timestamp_utc",
)
"""Columns of ``results.jsonl`` / ``results.csv`` (one row per spec x seed). ``paper_nfe`` is the spec's nominal
NFE (empty for ``steps=`` specs), ``num_inference_steps`` the noise levels, ``nfe`` the denoiser calls per sample
actually made (from the pipeline output)."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "spec",
    "gamma",
    "paper_nfe",
    "num_inference_steps",
    "gamma_per_step",
    "solver",
    "self_conditioning",
    "nfe",
    "num_seeds",
    "num_samples",
    "gen_ppl_mean",
    "gen_ppl_std",
    "entropy_mean",
    "entropy_std",
    "wall_time_s_mean",
    "samples_per_s_mean",
)
"""Columns of ``summary.json`` / ``summary.csv``: one row per spec (mean and sample std across seeds; the std is
empty with a single seed) and a last row ``spec="reference"`` for the real data."""


@dataclass(frozen=True)
class RunSettings:
    """The columns every result row of one protocol run shares (see :data:`RESULT_COLUMNS`)."""

    batch_size: int
    num_processes: int
    device: str
    autocast_dtype: str
    evaluator: str
    evaluator_dtype: str
    pipeline: str
    pipeline_fingerprint: str
    timestamp_utc: str


# ---------------------------------------------------------------------------------------------------- rows


def _spec_columns(spec: ResolvedSpec) -> dict[str, Any]:
    return {
        "gamma": spec.spec.gamma,
        "paper_nfe": spec.spec.nfe,
        "num_inference_steps": spec.num_inference_steps,
        "gamma_per_step": spec.gamma_per_step,
        "solver": spec.solver,
        "self_conditioning": spec.self_conditioning,
    }


def result_row(
    spec: ResolvedSpec, seed: int, batches: Sequence[BatchResult], scores: TextScores, settings: RunSettings
) -> dict[str, Any]:
    """The :data:`RESULT_COLUMNS` row of one run (``spec``, ``seed``) from its batches (in sample order) and scores."""
    nfes = {b.nfe for b in batches}
    if len(nfes) != 1:
        raise RuntimeError(f"Batches of {spec.label} seed {seed} report different NFE {sorted(nfes)}.")
    wall = float(sum(b.wall_time_s for b in batches))
    row = {
        "spec": spec.label,
        "seed": seed,
        **_spec_columns(spec),
        "nfe": nfes.pop(),
        "num_samples": scores.num_samples,
        "gen_ppl": scores.gen_ppl,
        "gen_bits_per_token": scores.gen_bits_per_token,
        "entropy": scores.entropy,
        "num_scored_tokens": scores.num_scored_tokens,
        "num_skipped_texts": scores.num_skipped_texts,
        "wall_time_s": wall,
        "samples_per_s": scores.num_samples / wall if wall > 0 else math.inf,
        "num_batches": len(batches),
        "cached_batches": sum(b.cached for b in batches),
        "batch_size": settings.batch_size,
        "num_processes": settings.num_processes,
        "device": settings.device,
        "autocast_dtype": settings.autocast_dtype,
        "evaluator": settings.evaluator,
        "evaluator_dtype": settings.evaluator_dtype,
        "pipeline": settings.pipeline,
        "pipeline_fingerprint": settings.pipeline_fingerprint,
        "spec_key": spec.key,
        "timestamp_utc": settings.timestamp_utc,
    }
    return {column: row[column] for column in RESULT_COLUMNS}


def _mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(
    specs: Sequence[ResolvedSpec], rows: Sequence[Mapping[str, Any]], reference: TextScores | None
) -> list[dict[str, Any]]:
    """One :data:`SUMMARY_COLUMNS` row per spec (mean and sample std across its seeds), then the reference's row."""
    summary = []
    for spec in specs:
        spec_rows = [r for r in rows if r["spec"] == spec.label]
        gen_ppl_mean, gen_ppl_std = _mean_std(r["gen_ppl"] for r in spec_rows)
        entropy_mean, entropy_std = _mean_std(r["entropy"] for r in spec_rows)
        summary.append(
            {
                "spec": spec.label,
                **_spec_columns(spec),
                "nfe": spec_rows[0]["nfe"],
                "num_seeds": len(spec_rows),
                "num_samples": spec_rows[0]["num_samples"],
                "gen_ppl_mean": gen_ppl_mean,
                "gen_ppl_std": gen_ppl_std,
                "entropy_mean": entropy_mean,
                "entropy_std": entropy_std,
                "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in spec_rows),
                "samples_per_s_mean": statistics.fmean(r["samples_per_s"] for r in spec_rows),
            }
        )
    if reference is not None:
        row = dict.fromkeys(SUMMARY_COLUMNS)
        row.update(
            spec="reference",
            num_samples=reference.num_samples,
            gen_ppl_mean=reference.gen_ppl,
            entropy_mean=reference.entropy,
        )
        summary.append(row)
    return summary


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return ""
    text = f"{value:.2f}" if math.isfinite(value) else str(value)
    return text if std is None else f"{text} ± {std:.2f}"


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table (also written to ``summary.md``)."""
    lines = [
        "| spec | noise levels | NFE | seeds | samples | GenPPL | entropy | samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        cells = [
            row["spec"],
            "" if row["num_inference_steps"] is None else str(row["num_inference_steps"]),
            "" if row["nfe"] is None else str(row["nfe"]),
            "" if row["num_seeds"] is None else str(row["num_seeds"]),
            str(row["num_samples"]),
            _fmt(row["gen_ppl_mean"], row["gen_ppl_std"]),
            _fmt(row["entropy_mean"], row["entropy_std"]),
            _fmt(row["samples_per_s_mean"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    specs: Sequence[ResolvedSpec],
    seeds: Sequence[int],
    samples: Mapping[tuple[str, int], Sequence[str]],
    reference_texts: Sequence[str] | None = None,
    plot: bool = True,
) -> None:
    """Write every file of the output folder (see the module docstring).

    Args:
        output_dir: the output folder.
        rows: :func:`result_row` rows.
        summary: :func:`summarize` rows.
        specs, seeds: the runs, in the order ``samples.jsonl`` lists them.
        samples: ``{(spec label, seed): texts in index order}``.
        reference_texts: the reference's decoded rows, or ``None`` (no ``reference.jsonl``).
        plot: write ``genppl_vs_entropy.png`` (skipped with a warning when matplotlib is missing).
    """
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / "results.jsonl", _jsonl_text({k: r[k] for k in RESULT_COLUMNS} for r in rows))
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


def plot_frontier(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """GenPPL against entropy, one point per spec (±std error bars), the reference as a star (Agg, no display).

    Written atomically as PNG; returns ``path``. Raises ``ImportError`` without matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in summary:
        if row["spec"] == "reference":
            axes.plot(
                row["entropy_mean"],
                row["gen_ppl_mean"],
                marker="*",
                markersize=14,
                linestyle="none",
                color="black",
                label=f"reference (n={row['num_samples']})",
            )
            continue
        axes.errorbar(
            row["entropy_mean"],
            row["gen_ppl_mean"],
            xerr=row["entropy_std"] or 0.0,
            yerr=row["gen_ppl_std"] or 0.0,
            marker="o",
            capsize=3,
            linestyle="none",
            label=f"{row['spec']} ({row['nfe']} NFE)",
        )
    axes.set_xlabel("token entropy (nats, mean over samples)")
    axes.set_ylabel("GenPPL")
    axes.set_title("GenPPL vs entropy (mean ± std across seeds)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=120)
    return path
