"""The protocol's frontier plot: GenPPL against token entropy, one point per sampler spec, the reference a star."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..utils.atomic_io import atomic_write

__all__ = ["plot_frontier"]


def plot_frontier(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """GenPPL against entropy, one point per spec (±std error bars), the reference as a star (Agg, no display).

    ``summary`` holds :func:`~bitstream_diffusion.evaluation.reporting.summarize` rows; rows without GenPPL (the
    model's likelihood row) are left out. Written atomically as PNG; returns ``path``. Raises ``ImportError``
    without matplotlib.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in summary:
        if row.get("gen_ppl_mean") is None:
            continue
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
        kind = row.get("model_kind")
        axes.errorbar(
            row["entropy_mean"],
            row["gen_ppl_mean"],
            xerr=row["entropy_std"] or 0.0,
            yerr=row["gen_ppl_std"] or 0.0,
            marker="o" if kind != "ar" else "s",
            capsize=3,
            linestyle="none",
            label=f"{kind + ' ' if kind else ''}{row['spec']} ({row['nfe']} NFE)",
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
