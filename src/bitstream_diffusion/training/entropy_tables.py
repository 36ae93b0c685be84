"""Entropy-rate tables on disk and in configs.

A table set is a dict of four float32 CPU tensors (REFERENCE_TRAINING §5.3):

* ``pdf``    ``[K]``: per-bin probability mass (sums to 1);
* ``cdf``    ``[K]``: ``cumsum(pdf)`` made monotone, with ``cdf[-1] = 1``;
* ``sigmas`` ``[K]``: geometric bin midpoints;
* ``edges``  ``[K + 1]``: bin edges, ``exp(linspace(ln σ_min, ln σ_max, K + 1))``.

On disk they are the official files ``entropy_{pdf,cdf,sigmas,edges}.pt`` (one plain tensor each, read with
``weights_only=True``); in a scheduler config they are float lists (exact: every float32 is a float64).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from .sigma_sampling import edges_from_midpoints

__all__ = [
    "TABLE_NAMES",
    "check_entropy_tables",
    "load_entropy_tables",
    "save_entropy_tables",
    "tables_from_config",
    "tables_to_config",
]

TABLE_NAMES = ("pdf", "cdf", "sigmas", "edges")


def check_entropy_tables(tables: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check shapes and values of a table set; return it as float32 CPU tensors (a new dict)."""
    missing = [name for name in TABLE_NAMES if tables.get(name) is None]
    if missing:
        raise ValueError(f"entropy tables are missing {missing}; expected the keys {TABLE_NAMES}")
    out = {name: torch.as_tensor(tables[name]).detach().to("cpu", torch.float32).reshape(-1) for name in TABLE_NAMES}
    num_bins = out["pdf"].numel()
    if num_bins < 1 or out["cdf"].numel() != num_bins or out["sigmas"].numel() != num_bins:
        raise ValueError(
            f"pdf, cdf and sigmas must have the same length K >= 1, got "
            f"{out['pdf'].numel()}, {out['cdf'].numel()}, {out['sigmas'].numel()}"
        )
    if out["edges"].numel() != num_bins + 1:
        raise ValueError(f"edges must have K + 1 = {num_bins + 1} entries, got {out['edges'].numel()}")
    for name, tensor in out.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"entropy table {name!r} contains NaN or inf")
    return out


def save_entropy_tables(tables: Mapping[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """Write ``entropy_{pdf,cdf,sigmas,edges}.pt`` into ``directory`` (created if needed), the official format."""
    tables = check_entropy_tables(tables)
    os.makedirs(directory, exist_ok=True)
    for name in TABLE_NAMES:
        torch.save(tables[name].clone(), os.path.join(directory, f"entropy_{name}.pt"))


def load_entropy_tables(
    directory: str | os.PathLike, *, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> dict[str, torch.Tensor]:
    """Read the official ``entropy_*.pt`` files (``weights_only=True``).

    ``entropy_edges.pt`` is optional, as in the official loader: without it the edges are rebuilt from the
    midpoints with :func:`~bitstream_diffusion.training.edges_from_midpoints` (bounds ``sigma_min``/``sigma_max``).
    """
    paths = {name: os.path.join(directory, f"entropy_{name}.pt") for name in TABLE_NAMES}
    missing = [paths[name] for name in ("pdf", "cdf", "sigmas") if not os.path.isfile(paths[name])]
    if missing:
        raise FileNotFoundError(f"entropy table files not found: {missing}")
    tables = {}
    for name, path in paths.items():
        if os.path.isfile(path):
            tensor = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{path} does not hold a plain tensor (got {type(tensor).__name__})")
            tables[name] = tensor
    if "edges" not in tables:
        tables["edges"] = edges_from_midpoints(tables["sigmas"].float(), sigma_min=sigma_min, sigma_max=sigma_max)
    return check_entropy_tables(tables)


def tables_to_config(tables: Mapping[str, torch.Tensor], *, prefix: str = "entropy_") -> dict[str, list[float]]:
    """Float lists for a JSON config: ``{"entropy_pdf": [...], "entropy_cdf": [...], ...}`` (exact round trip)."""
    tables = check_entropy_tables(tables)
    return {f"{prefix}{name}": tables[name].tolist() for name in TABLE_NAMES}


def tables_from_config(config: Mapping[str, Sequence[float]], *, prefix: str = "entropy_") -> dict[str, torch.Tensor]:
    """Inverse of :func:`tables_to_config`: float32 tensors from the float lists of a config."""
    return check_entropy_tables(
        {
            name: torch.tensor(config[f"{prefix}{name}"], dtype=torch.float32)
            for name in TABLE_NAMES
            if f"{prefix}{name}" in config
        }
    )
