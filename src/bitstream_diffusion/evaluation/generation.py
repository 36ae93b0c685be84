"""Resumable generation of the protocol's samples: fixed batches per (spec, seed), each cached in its own file.

The samples of one run (a spec and a seed) are cut into batches with fixed boundaries
``[k * batch_size, (k + 1) * batch_size)``. Sample ``i`` draws its noise from its own generator
(:func:`~bitstream_diffusion.evaluation.sampler_specs.sample_generators`), so a batch gives the same texts whatever
process makes it and whatever else that process makes.

Every finished batch is written atomically to ``<cache root>/<spec>/seed-<seed>/samples-<start>-<end>-<hash>.json``
(:class:`SampleCache`). Its key holds what decides the samples: the model folder's content hash
(:func:`fingerprint_folder`: weights, configs, entropy table, tokenizer), the resolved spec (its ``cache_fields``:
for CoBit the noise levels and the per-step gamma, for a causal LM the row length), the seed, the sample range, the
autocast dtype, the device type, the package version and :data:`CACHE_FORMAT`. A rerun reuses a batch whose key
matches and regenerates the others; a changed file under the same folder path therefore never serves stale samples.
The chunk size of a pipeline call (``max_batch_size``) is not part of the key: with one generator per sample the
samples do not depend on it.

The model is a :class:`~bitstream_diffusion.evaluation.protocol_models.CoBitProtocolModel` (the pipeline, called by
:func:`generate_batch`) or a :class:`~bitstream_diffusion.evaluation.protocol_models.CausalLMProtocolModel`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..utils.atomic_io import write_text_atomic
from .sampler_specs import ResolvedARSpec, ResolvedSpec, sample_generators
from .scoring import per_sample_entropies

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUTOCAST_DTYPES",
    "CACHE_FORMAT",
    "BatchResult",
    "GenerationBatch",
    "SampleCache",
    "autocast_dtype_from_name",
    "fingerprint_folder",
    "generate_batch",
    "generate_batches",
    "group_by_run",
    "plan_batches",
    "utc_timestamp",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever the cache file layout or the sample-seeding rule changes (part of every cache key)."""

AUTOCAST_DTYPES: tuple[str, ...] = ("none", "bfloat16", "float16")
"""Denoiser autocast choices by name (``none``: float32)."""


def utc_timestamp() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def autocast_dtype_from_name(name: str) -> torch.dtype | None:
    """``"none"`` -> ``None``, ``"bfloat16"``/``"float16"`` -> the torch dtype."""
    import torch

    if name not in AUTOCAST_DTYPES:
        raise ValueError(f"`autocast_dtype` must be one of {list(AUTOCAST_DTYPES)}, got {name!r}.")
    return None if name == "none" else getattr(torch, name)


# ---------------------------------------------------------------------------------------------------- fingerprint


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.digest()


def fingerprint_folder(folder: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and contents of every file in a pipeline folder.

    Hidden files, ``__pycache__`` and Markdown files (the model card) are left out: they do not change samples.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts) or path.suffix == ".md":
            continue
        digest.update(relative.as_posix().encode("utf-8") + b"\0")
        digest.update(_sha256_file(path))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class GenerationBatch:
    """One generation job: samples ``[start, end)`` of the run (spec ``spec_index``, ``seed``)."""

    spec_index: int
    seed: int
    start: int
    end: int


@dataclass
class BatchResult:
    """A generated (or cached) batch, reduced to what scoring and reporting need.

    Attributes:
        batch: which samples.
        texts: the decoded samples, in index order.
        entropies: per sample, the token entropy in nats of the ids the codec counts.
        nfe: denoiser calls per sample.
        wall_time_s: seconds the batch took when it was generated (kept from the cache).
        cached: whether this run read it from the cache.
    """

    batch: GenerationBatch
    texts: list[str]
    entropies: list[float]
    nfe: int
    wall_time_s: float
    cached: bool


def plan_batches(num_specs: int, seeds: Sequence[int], num_samples: int, batch_size: int) -> list[GenerationBatch]:
    """Every batch of every run, sample range first: a contiguous share of the list holds part of every run.

    Processes take contiguous shares (``PartialState.split_between_processes``); listing the ranges in the outer
    loop gives each process a part of every spec, so a slow spec does not fall on one process.
    """
    return [
        GenerationBatch(spec_index, int(seed), start, min(start + batch_size, num_samples))
        for start in range(0, num_samples, batch_size)
        for spec_index in range(num_specs)
        for seed in seeds
    ]


def group_by_run(results: Sequence[BatchResult]) -> dict[tuple[int, int], list[BatchResult]]:
    """``{(spec_index, seed): batches in sample order}``."""
    runs: dict[tuple[int, int], list[BatchResult]] = {}
    for result in results:
        runs.setdefault((result.batch.spec_index, result.batch.seed), []).append(result)
    for batches in runs.values():
        batches.sort(key=lambda r: r.batch.start)
    return runs


# ---------------------------------------------------------------------------------------------------- the cache


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace(",", "_")).strip("_") or "spec"


@dataclass(frozen=True)
class SampleCache:
    """The batch files of one output folder, for one pipeline, autocast setting and device type.

    Attributes:
        root: the cache folder (``OUTPUT_DIR/cache``).
        pipeline_fingerprint: :func:`fingerprint_folder` of the pipeline folder.
        autocast_dtype: the autocast name (:data:`AUTOCAST_DTYPES`).
        device_type: ``"cpu"``, ``"cuda"``, ...
    """

    root: Path
    pipeline_fingerprint: str
    autocast_dtype: str
    device_type: str

    def key(self, spec: ResolvedSpec | ResolvedARSpec, batch: GenerationBatch) -> dict[str, Any]:
        """Everything that decides the batch's samples."""
        return {
            "cache_format": CACHE_FORMAT,
            "package_version": __version__,
            "pipeline_fingerprint": self.pipeline_fingerprint,
            **spec.cache_fields(),
            "seed": batch.seed,
            "start": batch.start,
            "end": batch.end,
            "autocast_dtype": self.autocast_dtype,
            "device_type": self.device_type,
        }

    def path(self, spec: ResolvedSpec | ResolvedARSpec, batch: GenerationBatch, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
        name = f"samples-{batch.start:07d}-{batch.end:07d}-{digest}.json"
        return self.root / _slug(spec.label) / f"seed-{batch.seed}" / name

    def load(self, spec: ResolvedSpec | ResolvedARSpec, batch: GenerationBatch) -> dict[str, Any] | None:
        """The cached record of ``batch``, or ``None`` when it is missing, unreadable or made under another key."""
        key = self.key(spec, batch)
        path = self.path(spec, batch, key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(f"Ignoring unreadable cache file {path}; regenerating it.")
            return None
        if record.get("key") != key or len(record.get("texts", ())) != batch.end - batch.start:
            return None
        return record

    def save(
        self, spec: ResolvedSpec | ResolvedARSpec, batch: GenerationBatch, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Write ``record`` (with its key added) atomically; returns the record as written."""
        key = self.key(spec, batch)
        record = {"key": key, **record}
        write_text_atomic(self.path(spec, batch, key), json.dumps(record) + "\n")
        return record


# ---------------------------------------------------------------------------------------------------- generating


def generate_batch(
    pipe,
    spec: ResolvedSpec,
    batch: GenerationBatch,
    autocast_dtype: torch.dtype | None,
    *,
    max_batch_size: int | str | None = None,
) -> dict:
    """Call the pipeline once for ``batch`` (its scheduler must already be the spec's); returns the cache record.

    ``max_batch_size`` (an int or ``"auto"``) makes the pipeline run the batch in chunks; each sample has its own
    generator, so the samples are those of one call on the whole batch.
    """
    generators = sample_generators(batch.seed, spec.key, range(batch.start, batch.end))
    began = time.perf_counter()
    out = pipe(
        batch_size=batch.end - batch.start,
        num_inference_steps=spec.num_inference_steps,
        gamma=spec.gamma_per_step,
        generator=generators,
        output_type="text",
        autocast_dtype=autocast_dtype,
        max_batch_size=max_batch_size,
    )
    wall = time.perf_counter() - began
    return {
        "texts": list(out.texts),
        "token_ids": out.token_ids.tolist(),
        "nfe": int(out.nfe),
        "wall_time_s": wall,
        "created_utc": utc_timestamp(),
    }


def generate_batches(
    model,
    specs: Sequence[ResolvedSpec | ResolvedARSpec],
    batches: Sequence[GenerationBatch],
    cache: SampleCache,
    *,
    max_batch_size: int | str | None = None,
    show_progress: bool = True,
) -> list[BatchResult]:
    """Make or load every batch of ``batches``, in order.

    Args:
        model: the protocol model (``CoBitProtocolModel`` or ``CausalLMProtocolModel``), on its device.
        specs: its resolved specs, indexed by ``GenerationBatch.spec_index``.
        batches: this process's batches (:func:`plan_batches`, split between processes).
        cache: where batches are looked up and written.
        max_batch_size: the most samples one model call runs (an int, ``"auto"`` or ``None`` for the whole batch).
        show_progress: show a progress bar (transformers' ``tqdm``, off with ``HF_HUB_DISABLE_PROGRESS_BARS=1``).
    """
    from transformers.utils.logging import tqdm

    autocast = autocast_dtype_from_name(cache.autocast_dtype)
    results: list[BatchResult] = []
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not show_progress):
        spec = specs[batch.spec_index]
        record = cache.load(spec, batch)
        cached = record is not None
        if record is None:
            record = model.generate(spec, batch, autocast, max_batch_size=max_batch_size)
            record = cache.save(spec, batch, {**record, "device": str(model.device)})
        results.append(
            BatchResult(
                batch=batch,
                texts=record["texts"],
                entropies=per_sample_entropies(model.text_rules, record["token_ids"]),
                nfe=record["nfe"],
                wall_time_s=record["wall_time_s"],
                cached=cached,
            )
        )
    return results
