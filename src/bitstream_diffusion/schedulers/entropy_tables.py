# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
#
# Licensed under the MIT License.
"""Entropy-rate tables: the learned distribution over noise levels that places the sampler's grid and, late in
training, draws the training sigmas. Loading, saving, validation and conversion live here and nowhere else.

A table over `K` log-sigma bins is four float32 vectors (see docs/design.md#the-entropy-rate-schedule):

* `pdf` `[K]`: probability mass per bin (>= 0, sums to 1);
* `cdf` `[K]`: the running sum of `pdf` (non-decreasing, ending at 1);
* `sigmas` `[K]`: the bin midpoints (geometric means of the edges), positive and strictly increasing;
* `edges` `[K + 1]`: the bin edges, positive and strictly increasing, bracketing the midpoints.

It has three forms: on disk, a folder of the official files `entropy_{pdf,cdf,sigmas,edges}.pt` (one plain tensor
each, read with `torch.load(weights_only=True)`); in a scheduler config, the float lists `entropy_pdf`, ...
(exact: every float32 is a float64); in memory, an [`EntropyTables`] or the dict `{"pdf": ..., "cdf": ...,
"sigmas": ..., "edges": ...}` that `EntropyRateEstimator.compute_tables` returns. Every form is checked by the one
validator, [`validate_entropy_tables`].
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.atomic_io import atomic_write

__all__ = [
    "TABLE_ATOL",
    "TABLE_NAMES",
    "EntropyTables",
    "check_entropy_tables",
    "edges_from_midpoints",
    "load_entropy_tables",
    "lognormal_prior_tables",
    "save_entropy_tables",
    "tables_from_config",
    "tables_to_config",
    "validate_entropy_tables",
]

#: The four vectors of a table, in file, config and tuple order.
TABLE_NAMES = ("pdf", "cdf", "sigmas", "edges")
#: Absolute tolerance of the distribution checks. The official tables are exact to 5e-8, but the estimator's float32
#: running sum can leave a CDF value a hair above the final 1.0 (e.g. 1.0000001 before trailing empty bins).
TABLE_ATOL = 1e-4

TensorLike = torch.Tensor | Sequence[float]


def validate_entropy_tables(
    pdf: TensorLike, cdf: TensorLike, sigmas: TensorLike, edges: TensorLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Check that four vectors form an entropy-rate table and return them as new float32 CPU tensors.

    Raises `ValueError` naming the first violated property: a non-flat or non-finite vector, lengths other than
    `K, K, K, K + 1` with `K >= 2`, negative mass, a `pdf` that does not sum to 1, a `cdf` that decreases, does not
    end at 1 or is not the running sum of `pdf` (e.g. the two swapped), `sigmas` or `edges` not positive and strictly
    increasing, or a midpoint outside its bin. Decreases and sums are checked to `TABLE_ATOL`.
    """
    tables = []
    for name, values in zip(TABLE_NAMES, (pdf, cdf, sigmas, edges)):
        tensor = torch.as_tensor(values, dtype=torch.float32).detach().to("cpu", copy=True)
        if tensor.ndim != 1:
            raise ValueError(f"`entropy_{name}` must be a flat list of floats, got shape {tuple(tensor.shape)}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`entropy_{name}` contains NaN or infinite values.")
        tables.append(tensor)
    pdf, cdf, sigmas, edges = tables

    num_bins = pdf.numel()
    if num_bins < 2 or cdf.numel() != num_bins or sigmas.numel() != num_bins or edges.numel() != num_bins + 1:
        raise ValueError(
            "Entropy tables must have lengths K, K, K and K+1 (pdf, cdf, sigmas, edges) with K >= 2; got "
            f"{pdf.numel()}, {cdf.numel()}, {sigmas.numel()}, {edges.numel()}. Load all four files of one table "
            "folder, e.g. with `EntropyTables.from_folder(dir)`."
        )
    if (pdf < 0).any():
        raise ValueError(f"`entropy_pdf` has negative mass at bins {torch.nonzero(pdf < 0).flatten().tolist()}.")
    total = pdf.double().sum().item()
    if abs(total - 1.0) > TABLE_ATOL:
        looks_like_cdf = bool((pdf[1:] >= pdf[:-1]).all()) and abs(pdf[-1].item() - 1.0) <= TABLE_ATOL
        hint = " It looks like a CDF: were `entropy_pdf` and `entropy_cdf` swapped?" if looks_like_cdf else ""
        raise ValueError(f"`entropy_pdf` must sum to 1 (a probability mass per bin), but sums to {total:.6g}.{hint}")
    if (cdf[1:] < cdf[:-1] - TABLE_ATOL).any() or cdf[0] < -TABLE_ATOL or abs(cdf[-1].item() - 1.0) > TABLE_ATOL:
        raise ValueError("`entropy_cdf` must be non-decreasing, start at or above 0 and end at 1.")
    cdf_error = (pdf.double().cumsum(0) - cdf.double()).abs().max().item()
    if cdf_error > TABLE_ATOL:
        raise ValueError(
            f"`entropy_cdf` is not the running sum of `entropy_pdf` (max abs difference {cdf_error:.3g}); were two "
            "tables swapped?"
        )
    if (sigmas <= 0).any() or (sigmas[1:] <= sigmas[:-1]).any():
        raise ValueError("`entropy_sigmas` (the bin midpoints) must be positive and strictly increasing.")
    if (edges <= 0).any() or (edges[1:] <= edges[:-1]).any():
        raise ValueError("`entropy_edges` must be positive and strictly increasing.")
    if (sigmas < edges[:-1]).any() or (sigmas > edges[1:]).any():
        raise ValueError("Each `entropy_sigmas[k]` must lie inside its bin `[entropy_edges[k], entropy_edges[k+1]]`.")
    return pdf, cdf, sigmas, edges


def _check_bounds(sigma_min: float, sigma_max: float) -> None:
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0.0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}")


def edges_from_midpoints(sigmas: torch.Tensor, *, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """
    Rebuild the `K + 1` bin edges from `K` bin midpoints, as the official trainer does for tables without edges.

    Interior edges are the geometric means of neighbouring midpoints; the outer edges are `sigma_min` and
    `sigma_max`. Returns float32 `[K + 1]` on the device of `sigmas`.
    """
    _check_bounds(sigma_min, sigma_max)
    if sigmas.dim() != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-d tensor of bin midpoints, got shape {tuple(sigmas.shape)}")
    log_mids = sigmas.float().clamp(min=1e-12).log()
    edges_log = torch.empty(log_mids.numel() + 1, device=log_mids.device, dtype=log_mids.dtype)
    edges_log[0] = math.log(sigma_min)
    edges_log[-1] = math.log(sigma_max)
    edges_log[1:-1] = 0.5 * (log_mids[:-1] + log_mids[1:])
    return edges_log.exp().clamp(min=1e-12)


@dataclass(frozen=True, eq=False)
class EntropyTables:
    """
    A validated entropy-rate table: float32 CPU tensors `pdf [K]`, `cdf [K]`, `sigmas [K]`, `edges [K + 1]`.

    Construction runs [`validate_entropy_tables`] and stores copies, so an instance is always a valid table. Build
    one from the official folder (`from_folder`), a scheduler config (`from_config`) or a dict (`from_dict`);
    write it back with `save`, `to_config` or `to_dict`.
    """

    pdf: torch.Tensor
    cdf: torch.Tensor
    sigmas: torch.Tensor
    edges: torch.Tensor

    def __post_init__(self) -> None:
        for name, tensor in zip(TABLE_NAMES, validate_entropy_tables(self.pdf, self.cdf, self.sigmas, self.edges)):
            object.__setattr__(self, name, tensor)

    @property
    def num_bins(self) -> int:
        """The number of log-sigma bins `K`."""
        return self.pdf.numel()

    @classmethod
    def from_dict(cls, tables: Mapping[str, TensorLike]) -> EntropyTables:
        """From a dict with the keys `pdf`, `cdf`, `sigmas`, `edges` (e.g. `EntropyRateEstimator.tables`)."""
        if isinstance(tables, EntropyTables):
            return tables
        missing = [name for name in TABLE_NAMES if tables.get(name) is None]
        if missing:
            raise ValueError(f"The entropy tables are missing {missing}; pass all of {list(TABLE_NAMES)}.")
        return cls(*(tables[name] for name in TABLE_NAMES))

    def to_dict(self) -> dict[str, torch.Tensor]:
        """`{"pdf": ..., "cdf": ..., "sigmas": ..., "edges": ...}` (new tensors)."""
        return {name: getattr(self, name).clone() for name in TABLE_NAMES}

    @classmethod
    def from_folder(
        cls, directory: str | os.PathLike, *, sigma_min: float = 0.002, sigma_max: float = 80.0
    ) -> EntropyTables:
        """
        Read the official folder of `entropy_{pdf,cdf,sigmas,edges}.pt` (each one plain tensor, `weights_only=True`).

        `entropy_edges.pt` is optional, as in the official loader: without it the edges are rebuilt from the
        midpoints with [`edges_from_midpoints`] between `sigma_min` and `sigma_max`.
        """
        directory = Path(directory)
        paths = {name: directory / f"entropy_{name}.pt" for name in TABLE_NAMES}
        missing = [paths[name].name for name in ("pdf", "cdf", "sigmas") if not paths[name].is_file()]
        if missing:
            raise FileNotFoundError(
                f"Entropy table files {missing} not found in {directory}; point to a folder with "
                "entropy_{pdf,cdf,sigmas,edges}.pt (e.g. the official assets/entropy_tables/<dataset>/)."
            )
        tables = {}
        for name, path in paths.items():
            if path.is_file():
                try:
                    tensor = torch.load(path, map_location="cpu", weights_only=True)
                except Exception as error:  # empty, truncated, text, or pickled objects other than a tensor
                    raise ValueError(
                        f"The entropy table file {path} cannot be read as a PyTorch tensor file "
                        f"({type(error).__name__}: {str(error).split('.')[0] or 'no details'}). "
                        "It is damaged, truncated or not a table file: copy the table folder again (the official "
                        "assets/entropy_tables/<dataset>/ files, or one written by `EntropyTables.save`)."
                    ) from error
                if not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"{path} must hold a plain tensor, found {type(tensor).__name__}.")
                tables[name] = tensor
        if "edges" not in tables:
            tables["edges"] = edges_from_midpoints(tables["sigmas"].float(), sigma_min=sigma_min, sigma_max=sigma_max)
        return cls.from_dict(tables)

    def save(self, directory: str | os.PathLike) -> Path:
        """
        Write the official files `entropy_{pdf,cdf,sigmas,edges}.pt` into `directory` (created if needed).

        Each file is written atomically (a reader sees the old file or the new one, never half of one); other files
        in `directory` are left alone. Returns `directory`.
        """
        directory = Path(directory)
        for name in TABLE_NAMES:
            with atomic_write(directory / f"entropy_{name}.pt", "wb") as file:
                torch.save(getattr(self, name).clone(), file)
        return directory

    @classmethod
    def from_config(cls, config: Mapping[str, Sequence[float]], *, prefix: str = "entropy_") -> EntropyTables:
        """From the float lists of a config: `config["entropy_pdf"]`, ... (the inverse of `to_config`)."""
        return cls.from_dict({name: config.get(f"{prefix}{name}") for name in TABLE_NAMES})

    def to_config(self, *, prefix: str = "entropy_") -> dict[str, list[float]]:
        """Float lists for a JSON config: `{"entropy_pdf": [...], ...}` (exact round trip)."""
        return {f"{prefix}{name}": getattr(self, name).tolist() for name in TABLE_NAMES}


def check_entropy_tables(tables: Mapping[str, TensorLike] | EntropyTables) -> dict[str, torch.Tensor]:
    """Validate a table dict (keys `pdf`, `cdf`, `sigmas`, `edges`); return it as new float32 CPU tensors."""
    return EntropyTables.from_dict(tables).to_dict()


def load_entropy_tables(
    directory: str | os.PathLike, *, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> dict[str, torch.Tensor]:
    """The official folder as a validated dict; see [`EntropyTables.from_folder`]."""
    return EntropyTables.from_folder(directory, sigma_min=sigma_min, sigma_max=sigma_max).to_dict()


def save_entropy_tables(tables: Mapping[str, TensorLike] | EntropyTables, directory: str | os.PathLike) -> Path:
    """Validate `tables` and write the official files into `directory`; see [`EntropyTables.save`]."""
    return EntropyTables.from_dict(tables).save(directory)


def tables_to_config(
    tables: Mapping[str, TensorLike] | EntropyTables, *, prefix: str = "entropy_"
) -> dict[str, list[float]]:
    """Validate `tables` and return the float lists of a scheduler config: `{"entropy_pdf": [...], ...}`."""
    return EntropyTables.from_dict(tables).to_config(prefix=prefix)


def tables_from_config(config: Mapping[str, Sequence[float]], *, prefix: str = "entropy_") -> dict[str, torch.Tensor]:
    """The inverse of [`tables_to_config`]: a validated dict of float32 tensors from a config's float lists."""
    return EntropyTables.from_config(config, prefix=prefix).to_dict()


def lognormal_prior_tables(
    num_bins: int = 128,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> dict[str, torch.Tensor]:
    """
    The training warm-up distribution as an entropy table: the mass of `ln sigma ~ N(p_mean, p_std^2)` in each of
    `num_bins` bins equally spaced in `ln sigma` over `[sigma_min, sigma_max]`, renormalised to the range.

    A stand-in for a learned table, e.g. for a pipeline exported before the estimator's first refresh. Returns the
    validated dict form (float32 CPU tensors).
    """
    _check_bounds(sigma_min, sigma_max)
    if not p_std > 0:
        raise ValueError(f"p_std must be > 0, got {p_std}")
    edges_log = torch.linspace(math.log(sigma_min), math.log(sigma_max), num_bins + 1, dtype=torch.float64)
    normal = torch.distributions.Normal(p_mean, p_std)
    mass = (normal.cdf(edges_log[1:]) - normal.cdf(edges_log[:-1])).clamp_min(0)
    pdf = (mass / mass.sum()).float()
    cdf = torch.cumsum(pdf, 0)
    cdf[-1] = 1.0
    mids = (0.5 * (edges_log[:-1] + edges_log[1:])).exp().float()
    return check_entropy_tables({"pdf": pdf, "cdf": cdf, "sigmas": mids, "edges": edges_log.exp().float()})
