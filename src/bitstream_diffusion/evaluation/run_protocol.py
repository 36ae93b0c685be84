"""The paper's evaluation protocol: sampler specs x seeds -> GenPPL and token entropy, mean ± std across seeds.

    python -m bitstream_diffusion.evaluation.run_protocol --pipeline cobit-s-lm1b \\
        --spec gamma=0.185,nfe=256 --spec gamma=0.2,nfe=256 --num-samples 1024 --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --evaluator openai-community/gpt2-large --reference-dataset lm1b --output-dir eval-cobit-s-lm1b

    # the same on 8 GPUs (samples split across processes and gathered; identical samples and numbers)
    accelerate launch --multi_gpu --num_processes 8 -m bitstream_diffusion.evaluation.run_protocol ...

For every spec (``gamma=G,nfe=N`` in the paper's notation or ``gamma=G,steps=K``, see
:mod:`~bitstream_diffusion.evaluation.sampler_specs`) and every seed, ``--num-samples`` texts are generated in
batches, decoded with the pipeline's codec (the official rules), and scored like the official evaluation
(REFERENCE_SAMPLING §4–5):

* **GenPPL**: the external causal LM (``--evaluator``, the paper's ``openai-community/gpt2-large`` by default; a
  local folder, or ``smollm2`` / a ``.gguf`` file for an offline evaluator) scores each text alone, token-weighted
  (:class:`~bitstream_diffusion.evaluation.GenPPLScorer`);
* **entropy**: the mean over samples of the per-sample unigram entropy in nats of the ids the paper counts
  (``pipe.codec.ids_for_token_entropy``: LM1B's 128 BERT ids after the modulo wrap, OWT's cleaned GPT-2 ids).

The real reference is the first ``--num-samples`` rows of ``--reference-texts FILE`` (``.jsonl``: a string or an
object with ``--reference-column`` per line; any other file: one text per non-empty line) or of
``--reference-dataset NAME --reference-split test`` (``datasets.load_dataset``). Rows are built as the official
caches are (``--reference-packing auto``: LM1B lines packed into 128-token blocks joined by ``[SEP]``, OWT
documents into the flat GPT-2 stream cut into 1022-token windows; other layouts one text per row), turned into bits
and decoded back exactly like the generations, then scored the same way. Unlike the official code, every process
count uses the same first N rows (REFERENCE_SAMPLING §9 item 9).

Each sample ``i`` of (seed, spec) draws its noise from its own generator seeded with
``sample_seed(seed, spec_key, i)``, so a sample never depends on the batch size or the number of processes. Batches
have fixed boundaries ``[k * batch_size, (k + 1) * batch_size)`` and are dealt round-robin to the processes, so one
process and many run the very same computations; scoring tasks (the reference, then one per spec x seed) are dealt
the same way and their numbers gathered. One process and many therefore give identical samples and numbers.

Resuming: every finished batch is written (atomically) to ``OUTPUT_DIR/cache/<spec>/seed-<seed>/`` under a key
that holds the pipeline folder's content hash (weights, configs, entropy table, tokenizer), the resolved spec, the
seed, the sample range, the autocast dtype, the device type and the package version; a rerun skips batches whose
key matches and regenerates the rest (the official cache ignored the entropy table and the code version,
REFERENCE_SAMPLING §9 item 16). Scores are recomputed on every run.

Files in ``OUTPUT_DIR``:

* ``results.jsonl`` / ``results.csv``: one row per spec x seed (:data:`RESULT_COLUMNS`), rewritten on every run;
* ``summary.json`` / ``summary.csv`` / ``summary.md``: one row per spec with mean ± std (sample std, ``ddof=1``)
  across seeds, and a ``reference`` row (:data:`SUMMARY_COLUMNS`);
* ``genppl_vs_entropy.png``: the paper's frontier view, one point per spec with ±std error bars, the reference as
  a star;
* ``samples.jsonl`` (every generated text with its spec, seed, index and sample seed) and ``reference.jsonl``.

Timing: ``wall_time_s`` is the sum of the batches' generation times as recorded when each batch was made (each on
one device; cached batches keep their recorded time), and ``samples_per_s = num_samples / wall_time_s`` is the
throughput of one device.

Launching several CPU processes: ``accelerate launch --cpu --num_processes 2`` starts a *single* process in
accelerate 1.15 (its simple launcher ignores ``--num_processes`` without MPI); use
``accelerate launch --multi_gpu --num_processes 2 -m bitstream_diffusion.evaluation.run_protocol ... --device cpu``
(or ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m ...``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .entropy import token_entropy
from .gen_ppl import DEFAULT_EVALUATOR, GenPPLScorer
from .sampler_specs import ResolvedSpec, SamplerSpec, sample_generators, sample_seed

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "ProtocolResult",
    "build_parser",
    "build_reference",
    "fingerprint_folder",
    "format_summary",
    "main",
    "plot_frontier",
    "read_reference_texts",
    "run_protocol",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever the cache file layout or the sample-seeding rule changes (part of every cache key)."""

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

_AUTOCAST_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PACKINGS = ("auto", "packed", "rows")
_READ_CHUNK = 1024


# ---------------------------------------------------------------------------------------------------- small helpers


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace(",", "_")).strip("_") or "spec"


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


def _resolve_pipeline_folder(pipeline: str | os.PathLike) -> Path:
    local = Path(pipeline).expanduser()
    if local.is_dir():
        return local.resolve()
    from ..pipelines import BitstreamDiffusionPipeline

    try:
        return Path(BitstreamDiffusionPipeline.download(str(pipeline)))
    except Exception as error:  # hub errors come in many types
        raise FileNotFoundError(
            f"The pipeline {str(pipeline)!r} is neither a local folder nor a downloadable hub repo ({error})."
        ) from error


def _resolve_evaluator(evaluator: str) -> str:
    """``smollm2`` or a ``.gguf`` file -> a dequantised local folder; anything else is passed on."""
    if evaluator.lower() in ("smollm2", "smollm2-gguf"):
        from ..offline.gguf_evaluator import prepare_gguf_evaluator

        return str(prepare_gguf_evaluator())
    if evaluator.endswith(".gguf"):
        from ..offline.gguf_evaluator import prepare_gguf_evaluator

        return str(prepare_gguf_evaluator(evaluator))
    return evaluator


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _tqdm(iterable, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ---------------------------------------------------------------------------------------------------- reference data


def read_reference_texts(
    path: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    column: str = "text",
) -> Iterator[str]:
    """The reference texts in order, lazily: from a file, or from a ``datasets`` dataset.

    A ``.jsonl`` file holds one JSON string or object (read at ``column``) per line; any other file one text per
    non-empty line. ``dataset`` is passed to ``datasets.load_dataset(dataset, dataset_config, split=split)``.
    """
    if (path is None) == (dataset is None):
        raise ValueError("Pass exactly one of a reference file and a reference dataset.")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Reference file not found: {path}.")
        return _read_text_file(path, column)
    return _read_dataset(dataset, dataset_config, split, column)


def _read_text_file(path: Path, column: str) -> Iterator[str]:
    jsonl = path.suffix.lower() == ".jsonl"
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not jsonl:
                yield line
                continue
            item = json.loads(line)
            if isinstance(item, dict):
                if column not in item:
                    raise KeyError(f"{path}:{number} has no field {column!r} (set --reference-column).")
                item = item[column]
            if not isinstance(item, str):
                raise TypeError(f"{path}:{number}: expected a string, got {type(item).__name__}.")
            yield item


def _read_dataset(name: str, config: str | None, split: str, column: str) -> Iterator[str]:
    import datasets

    data = datasets.load_dataset(name, config, split=split)
    if column not in data.column_names:
        raise KeyError(f"Dataset {name!r} has no column {column!r}; columns: {data.column_names}.")
    for row in data:
        yield row[column]


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _packed_lm1b_rows(texts: Iterable[str], tokenizer, num_tokens: int, num_rows: int) -> torch.Tensor:
    from ..codecs.lm1b import chunk_token_stream, lm1b_token_stream

    stream: list[int] = []
    for chunk in _chunks(texts, _READ_CHUNK):
        part, _, _ = lm1b_token_stream(chunk, tokenizer)
        if part and stream:
            stream.append(int(tokenizer.sep_token_id))  # [SEP] between examples, also across chunks
        stream.extend(part)
        if len(stream) >= num_rows * num_tokens:
            break
    return chunk_token_stream(stream, num_tokens)[:num_rows]


def _packed_owt_rows(texts: Iterable[str], codec, num_tokens: int, num_rows: int) -> torch.Tensor:
    from ..codecs.owt import build_owt_flat_stream, owt_windows

    meta = codec.code_tokenizer.meta
    content_len = meta.base_seq_len_tokens - 2
    stream: list[int] = []
    for chunk in _chunks(texts, _READ_CHUNK):
        part = build_owt_flat_stream(chunk, codec.tokenizer, eos_token_id=meta.eos_token_id_gpt2)
        stream.extend(part.tokens.tolist())
        if len(stream) >= num_rows * content_len:
            break
    windows = owt_windows(
        torch.tensor(stream, dtype=torch.long),
        base_seq_len=meta.base_seq_len_tokens,
        bos_token_id=meta.bos_token_id_gpt2,
        eos_token_id=meta.eos_token_id_gpt2,
        max_windows=num_rows,
    )
    if windows.shape[0] == 0:
        return torch.empty((0, num_tokens), dtype=torch.long)
    return codec.code_tokenizer.encode_windows(windows, code_seq_len=num_tokens)


def build_reference(
    pipe, texts: Iterable[str], num_rows: int, packing: str = "auto"
) -> tuple[list[str], list[list[int]]]:
    """The first ``num_rows`` reference rows, decoded the way the generations are.

    Args:
        pipe: a :class:`~bitstream_diffusion.BitstreamDiffusionPipeline` (its codec is used).
        texts: reference texts in order (:func:`read_reference_texts`).
        num_rows: how many rows.
        packing: ``"packed"`` builds rows as the official data caches do (LM1B: lines joined by ``[SEP]`` in
            128-token blocks; OWT: the flat GPT-2 stream in 1022-token windows); ``"rows"`` makes one row per text
            with ``pipe.text_to_bits``; ``"auto"`` packs for the lm1b/owt layouts and uses rows otherwise.

    Returns:
        ``(texts, entropy_ids)``: each row turned into bits and decoded with ``pipe.bits_to_text``, and the ids the
        token entropy counts (``codec.ids_for_token_entropy``).
    """
    if packing not in _PACKINGS:
        raise ValueError(f"`packing` must be one of {list(_PACKINGS)}, got {packing!r}.")
    codec = pipe.codec
    if packing == "auto":
        packing = "packed" if codec.layout in ("lm1b", "owt") else "rows"
    num_tokens = codec.num_tokens
    if packing == "rows":
        rows = list(itertools.islice(texts, num_rows))
        bits = pipe.text_to_bits(rows) if rows else torch.empty((0, codec.num_bits), dtype=torch.uint8)
    elif codec.layout == "lm1b":
        bits = codec.ids_to_bits(_packed_lm1b_rows(texts, codec.tokenizer, num_tokens, num_rows))
    elif codec.layout == "owt":
        bits = codec.ids_to_bits(_packed_owt_rows(texts, codec, num_tokens, num_rows))
    else:
        raise ValueError(f"packing='packed' needs the lm1b or owt codec layout, not {codec.layout!r}; use 'rows'.")
    if bits.shape[0] == 0:
        raise ValueError("The reference data gave no rows (empty file or split?).")
    if bits.shape[0] < num_rows:
        logger.warning(f"The reference data gave only {bits.shape[0]} of the {num_rows} rows asked for; using those.")
    decoded = pipe.bits_to_text(bits)
    return decoded, codec.ids_for_token_entropy(codec.bits_to_ids(bits))


# ---------------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _Batch:
    """One generation job: samples ``[start, end)`` of (spec, seed)."""

    spec_index: int
    seed: int
    start: int
    end: int


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` computed (the same on every process).

    Attributes:
        rows: one dict per spec x seed (:data:`RESULT_COLUMNS`).
        summary: one dict per spec plus the reference row (:data:`SUMMARY_COLUMNS`).
        reference: the reference's numbers (``gen_ppl``, ``entropy``, ``num_samples``, ...), or ``None``.
        generated_batches: batches generated by this run (all processes).
        cached_batches: batches read from the cache by this run (all processes).
        output_dir: where the files are.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    reference: dict[str, Any] | None
    generated_batches: int
    cached_batches: int
    output_dir: Path
    samples: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False)


def _cache_key(fingerprint: str, spec: ResolvedSpec, batch: _Batch, autocast: str, device_type: str) -> dict:
    return {
        "cache_format": CACHE_FORMAT,
        "package_version": __version__,
        "pipeline_fingerprint": fingerprint,
        "spec_key": spec.key,
        "num_inference_steps": spec.num_inference_steps,
        "gamma_per_step": spec.gamma_per_step,
        "seed": batch.seed,
        "start": batch.start,
        "end": batch.end,
        "autocast_dtype": autocast,
        "device_type": device_type,
    }


def _cache_path(cache_dir: Path, spec: ResolvedSpec, batch: _Batch, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    name = f"samples-{batch.start:07d}-{batch.end:07d}-{digest}.json"
    return cache_dir / _slug(spec.label) / f"seed-{batch.seed}" / name


def _load_cached(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning(f"Ignoring unreadable cache file {path}; regenerating it.")
        return None
    if record.get("key") != key or len(record.get("texts", ())) != key["end"] - key["start"]:
        return None
    return record


def _generate(pipe, spec: ResolvedSpec, batch: _Batch, autocast_dtype: torch.dtype | None) -> dict:
    generators = sample_generators(batch.seed, spec.key, range(batch.start, batch.end))
    began = time.perf_counter()
    out = pipe(
        batch_size=batch.end - batch.start,
        num_inference_steps=spec.num_inference_steps,
        gamma=spec.gamma_per_step,
        generator=generators,
        output_type="text",
        autocast_dtype=autocast_dtype,
    )
    wall = time.perf_counter() - began
    return {
        "texts": list(out.texts),
        "token_ids": out.token_ids.tolist(),
        "nfe": int(out.nfe),
        "wall_time_s": wall,
        "created_utc": _utc_now(),
    }


# ---------------------------------------------------------------------------------------------------- the protocol


def run_protocol(
    pipeline: str | os.PathLike,
    specs: Sequence[str | SamplerSpec],
    *,
    num_samples: int,
    output_dir: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    evaluator: str = DEFAULT_EVALUATOR,
    evaluator_dtype: str = "bfloat16",
    evaluator_batch_size: int = 16,
    autocast_dtype: str | None = None,
    device: str | None = None,
    reference_texts: str | os.PathLike | None = None,
    reference_dataset: str | None = None,
    reference_dataset_config: str | None = None,
    reference_split: str = "test",
    reference_column: str = "text",
    reference_packing: str = "auto",
    plot: bool = True,
) -> ProtocolResult:
    """Run the protocol (see the module docstring) and write its files; call it on every process.

    Args:
        pipeline: a pipeline folder (or a hub id).
        specs: sampler specs, strings (``"gamma=0.2,nfe=256"``) or :class:`SamplerSpec`.
        num_samples: samples per spec and seed (and reference rows).
        output_dir: where the cache and the result files go.
        seeds: one run per seed.
        batch_size: samples per pipeline call (fixes the batch boundaries, not the samples).
        evaluator: GenPPL evaluator: a hub id, a local folder, ``"smollm2"`` or a ``.gguf`` file.
        evaluator_dtype: ``"bfloat16"`` (the paper's) or ``"float32"``.
        evaluator_batch_size: windows per evaluator call.
        autocast_dtype: ``None``/``"none"`` (float32), ``"bfloat16"`` (the official generation setting) or
            ``"float16"`` for the denoiser.
        device: ``"cpu"``, ``"cuda:0"``...; default: the accelerate process's device.
        reference_texts, reference_dataset, reference_dataset_config, reference_split, reference_column,
        reference_packing: the real reference (:func:`read_reference_texts`, :func:`build_reference`); none given
            means no reference row.
        plot: write ``genppl_vs_entropy.png``.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    from ..pipelines import BitstreamDiffusionPipeline
    from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler

    run_began = time.perf_counter()
    parsed = [s if isinstance(s, SamplerSpec) else SamplerSpec.parse(s) for s in specs]
    if not parsed:
        raise ValueError("Give at least one sampler spec, e.g. --spec gamma=0.2,nfe=256.")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct integers, got {seeds}.")
    if int(num_samples) < 1 or int(batch_size) < 1 or int(evaluator_batch_size) < 1:
        raise ValueError("`num_samples`, `batch_size` and `evaluator_batch_size` must be positive integers.")
    num_samples, batch_size = int(num_samples), int(batch_size)
    autocast_name = "none" if autocast_dtype is None else str(autocast_dtype).lower()
    if autocast_name not in _AUTOCAST_DTYPES:
        raise ValueError(f"`autocast_dtype` must be one of {list(_AUTOCAST_DTYPES)}, got {autocast_dtype!r}.")
    if reference_texts is not None and reference_dataset is not None:
        raise ValueError("Pass either --reference-texts or --reference-dataset, not both.")
    if reference_packing not in _PACKINGS:
        raise ValueError(f"`reference_packing` must be one of {list(_PACKINGS)}, got {reference_packing!r}.")
    output_dir = Path(output_dir)

    state = PartialState(cpu=device is not None and str(device) == "cpu")
    is_main = state.is_main_process
    show = state.is_local_main_process
    exec_device = torch.device(device) if device is not None else state.device
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = output_dir / "cache"

    # ---- pipeline, its fingerprint, the specs made concrete
    with state.main_process_first():
        folder = _resolve_pipeline_folder(pipeline)
    pipe = BitstreamDiffusionPipeline.from_pretrained(folder)
    pipe.to(exec_device)
    pipe.set_progress_bar_config(disable=not show, leave=False, desc="denoising")
    fingerprint = [fingerprint_folder(folder) if is_main else None]
    fingerprint = broadcast_object_list(fingerprint)[0]
    base_scheduler = pipe.scheduler
    resolved = [spec.resolve(base_scheduler.config) for spec in parsed]
    keys = [r.key for r in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Some sampler specs name the same sampler: {keys}.")
    schedulers = []
    for spec in resolved:
        overrides = spec.scheduler_overrides(base_scheduler.config)
        scheduler = EntropyRateScheduler.from_config(base_scheduler.config, **overrides) if overrides else None
        scheduler = scheduler or base_scheduler
        scheduler.set_timesteps(spec.num_inference_steps, gamma=spec.gamma_per_step)  # invalid settings fail now
        schedulers.append(scheduler)
    if is_main:
        logger.info(
            f"Protocol: {len(resolved)} spec(s) x {len(seeds)} seed(s) x {num_samples} samples on "
            f"{state.num_processes} process(es); pipeline {folder} ({fingerprint[:12]})"
        )
        for spec in resolved:
            logger.info(
                f"  {spec.label}: {spec.num_inference_steps} noise levels, per-step gamma {spec.gamma_per_step:.6g}, "
                f"solver={spec.solver}, self_conditioning={spec.self_conditioning}, {spec.expected_nfe} NFE"
            )

    # ---- the reference rows and the evaluator, before the long part so that their errors show at once
    have_reference = reference_texts is not None or reference_dataset is not None
    tasks: list[Any] = (["reference"] if have_reference else []) + [(i, s) for i in range(len(resolved)) for s in seeds]
    my_tasks = tasks[state.process_index :: state.num_processes]
    reference_rows: tuple[list[str], list[list[int]]] | None = None
    with state.main_process_first():  # downloads (dataset, evaluator) happen once
        if have_reference:
            texts_iter = read_reference_texts(
                reference_texts,
                dataset=reference_dataset,
                dataset_config=reference_dataset_config,
                split=reference_split,
                column=reference_column,
            )
            reference_rows = build_reference(pipe, texts_iter, num_samples, reference_packing)
        evaluator_path = _resolve_evaluator(str(evaluator))
        scorer = GenPPLScorer(evaluator_path, dtype=evaluator_dtype, device=exec_device) if my_tasks else None

    # ---- generation: fixed batches dealt round-robin; cached batches are skipped
    batches = [
        _Batch(spec_index, seed, start, min(start + batch_size, num_samples))
        for spec_index in range(len(resolved))
        for seed in seeds
        for start in range(0, num_samples, batch_size)
    ]
    mine = batches[state.process_index :: state.num_processes]
    records: list[dict] = []
    autocast = _AUTOCAST_DTYPES[autocast_name]
    try:
        for batch in _tqdm(mine, desc="generate", unit="batch", disable=not show):
            spec = resolved[batch.spec_index]
            key = _cache_key(fingerprint, spec, batch, autocast_name, exec_device.type)
            path = _cache_path(cache_dir, spec, batch, key)
            record = _load_cached(path, key)
            cached = record is not None
            if record is None:
                pipe.scheduler = schedulers[batch.spec_index]
                record = {"key": key, **_generate(pipe, spec, batch, autocast), "device": str(exec_device)}
                _write_atomic(path, json.dumps(record) + "\n")
            _, entropies = token_entropy(pipe.codec.ids_for_token_entropy(record["token_ids"]))
            records.append(
                {
                    "spec_index": batch.spec_index,
                    "seed": batch.seed,
                    "start": batch.start,
                    "texts": record["texts"],
                    "entropies": entropies,
                    "nfe": record["nfe"],
                    "wall_time_s": record["wall_time_s"],
                    "cached": cached,
                }
            )
    finally:
        pipe.scheduler = base_scheduler
    records = gather_object(records)

    groups: dict[tuple[int, int], list[dict]] = {}
    for record in records:
        groups.setdefault((record["spec_index"], record["seed"]), []).append(record)
    for group in groups.values():
        group.sort(key=lambda r: r["start"])

    # ---- scoring: the reference first, then one task per spec x seed, dealt round-robin
    scores: list[dict] = []
    for task in _tqdm(my_tasks, desc="score", unit="run", disable=not show):
        if task == "reference":
            texts, entropy_ids = reference_rows
            entropy, _ = token_entropy(entropy_ids)
        else:
            group = groups[task]
            texts = [t for r in group for t in r["texts"]]
            per_sample = [e for r in group for e in r["entropies"]]
            entropy = float(sum(per_sample) / len(per_sample))
        result = scorer.score_texts(texts, batch_size=evaluator_batch_size)
        scores.append(
            {
                "task": task,
                "gen_ppl": result.gen_ppl,
                "gen_bits_per_token": result.bits_per_token,
                "entropy": entropy,
                "num_scored_tokens": result.total_scored_tokens,
                "num_skipped_texts": int(sum(result.skipped)),
                "num_samples": len(texts),
            }
        )
    scores = gather_object(scores)
    by_task = {(s["task"] if s["task"] == "reference" else tuple(s["task"])): s for s in scores}

    # ---- rows, summary, files
    timestamp = _utc_now()
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, int], list[str]] = {}
    for spec_index, spec in enumerate(resolved):
        for seed in seeds:
            group, score = groups[spec_index, seed], by_task[spec_index, seed]
            nfes = {r["nfe"] for r in group}
            if len(nfes) != 1:
                raise RuntimeError(f"Batches of {spec.label} seed {seed} report different NFE {sorted(nfes)}.")
            wall = float(sum(r["wall_time_s"] for r in group))
            samples[spec.label, seed] = [t for r in group for t in r["texts"]]
            rows.append(
                {
                    "spec": spec.label,
                    "seed": seed,
                    "gamma": spec.spec.gamma,
                    "paper_nfe": spec.spec.nfe,
                    "num_inference_steps": spec.num_inference_steps,
                    "gamma_per_step": spec.gamma_per_step,
                    "solver": spec.solver,
                    "self_conditioning": spec.self_conditioning,
                    "nfe": nfes.pop(),
                    "num_samples": num_samples,
                    "gen_ppl": score["gen_ppl"],
                    "gen_bits_per_token": score["gen_bits_per_token"],
                    "entropy": score["entropy"],
                    "num_scored_tokens": score["num_scored_tokens"],
                    "num_skipped_texts": score["num_skipped_texts"],
                    "wall_time_s": wall,
                    "samples_per_s": num_samples / wall if wall > 0 else math.inf,
                    "num_batches": len(group),
                    "cached_batches": sum(r["cached"] for r in group),
                    "batch_size": batch_size,
                    "num_processes": state.num_processes,
                    "device": exec_device.type,
                    "autocast_dtype": autocast_name,
                    "evaluator": str(evaluator),
                    "evaluator_dtype": evaluator_dtype,
                    "pipeline": str(pipeline),
                    "pipeline_fingerprint": fingerprint,
                    "spec_key": spec.key,
                    "timestamp_utc": timestamp,
                }
            )
    reference = None
    if have_reference:
        ref = by_task["reference"]
        names = ("gen_ppl", "gen_bits_per_token", "entropy", "num_samples", "num_scored_tokens")
        reference = {**{k: ref[k] for k in names}, "texts": reference_rows[0]}
    summary = _summarize(resolved, rows, reference)
    generated = sum(not r["cached"] for r in records)
    if is_main:
        _write_outputs(output_dir, rows, summary, reference, samples, resolved, seeds, plot)
        logger.info(
            f"Generated {generated} batch(es), reused {len(records) - generated} from the cache; "
            f"{time.perf_counter() - run_began:.1f} s.\n{format_summary(summary)}\nWrote {output_dir}"
        )
    state.wait_for_everyone()
    return ProtocolResult(
        rows=rows,
        summary=summary,
        reference=None if reference is None else {k: v for k, v in reference.items() if k != "texts"},
        generated_batches=generated,
        cached_batches=len(records) - generated,
        output_dir=output_dir,
        samples=samples,
    )


def _summarize(resolved: list[ResolvedSpec], rows: list[dict], reference: dict | None) -> list[dict[str, Any]]:
    summary = []
    for spec in resolved:
        spec_rows = [r for r in rows if r["spec"] == spec.label]
        gen_ppl_mean, gen_ppl_std = _stats([r["gen_ppl"] for r in spec_rows])
        entropy_mean, entropy_std = _stats([r["entropy"] for r in spec_rows])
        summary.append(
            {
                "spec": spec.label,
                "gamma": spec.spec.gamma,
                "paper_nfe": spec.spec.nfe,
                "num_inference_steps": spec.num_inference_steps,
                "gamma_per_step": spec.gamma_per_step,
                "solver": spec.solver,
                "self_conditioning": spec.self_conditioning,
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
            num_samples=reference["num_samples"],
            gen_ppl_mean=reference["gen_ppl"],
            entropy_mean=reference["entropy"],
        )
        summary.append(row)
    return summary


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return ""
    text = f"{value:.2f}" if math.isfinite(value) else str(value)
    return text if std is None else f"{text} ± {std:.2f}"


def format_summary(summary: list[dict[str, Any]]) -> str:
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


def _csv_text(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def _jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_outputs(output_dir, rows, summary, reference, samples, resolved, seeds, plot) -> None:
    _write_atomic(output_dir / "results.jsonl", _jsonl_text({k: r[k] for k in RESULT_COLUMNS} for r in rows))
    _write_atomic(output_dir / "results.csv", _csv_text(rows, RESULT_COLUMNS))
    summary_json = json.dumps({"summary": summary, "columns": SUMMARY_COLUMNS}, indent=2)
    _write_atomic(output_dir / "summary.json", summary_json + "\n")
    _write_atomic(output_dir / "summary.csv", _csv_text(summary, SUMMARY_COLUMNS))
    _write_atomic(output_dir / "summary.md", format_summary(summary) + "\n")
    sample_rows = (
        {
            "spec": spec.label,
            "seed": seed,
            "index": index,
            "sample_seed": sample_seed(seed, spec.key, index),
            "text": text,
        }
        for spec in resolved
        for seed in seeds
        for index, text in enumerate(samples[spec.label, seed])
    )
    _write_atomic(output_dir / "samples.jsonl", _jsonl_text(sample_rows))
    if reference is not None:
        reference_rows = ({"index": i, "text": t} for i, t in enumerate(reference["texts"]))
        _write_atomic(output_dir / "reference.jsonl", _jsonl_text(reference_rows))
    if plot:
        try:
            plot_frontier(summary, output_dir / "genppl_vs_entropy.png")
        except ImportError:
            logger.warning("matplotlib is not installed; no plot (pip install 'bitstream-diffusion[eval]').")


def plot_frontier(summary: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """GenPPL against entropy, one point per spec (±std error bars), the reference as a star (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row in summary:
        if row["spec"] == "reference":
            axes.plot(row["entropy_mean"], row["gen_ppl_mean"], marker="*", markersize=14, linestyle="none",
                      color="black", label=f"reference (n={row['num_samples']})")
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
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bitstream_diffusion.evaluation.run_protocol",
        description="The CoBit evaluation protocol: GenPPL and token entropy per sampler spec, mean ± std over seeds.",
        epilog="Several processes: accelerate launch --multi_gpu --num_processes N -m "
        "bitstream_diffusion.evaluation.run_protocol ... (add --device cpu for CPU processes).",
    )
    parser.add_argument("--pipeline", required=True, help="BitstreamDiffusionPipeline folder (or hub id)")
    parser.add_argument(
        "--spec",
        action="append",
        required=True,
        metavar="SPEC",
        help="sampler spec, repeatable: gamma=G,nfe=N (paper notation: N-1 levels) or gamma=G,steps=K (per-step "
        "gamma, K levels); optional solver=euler|heun, self_conditioning=carry|refined|none",
    )
    parser.add_argument("--num-samples", type=int, default=1024, help="samples per spec and seed (default 1024)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per pipeline call (default 64)")
    parser.add_argument("--output-dir", required=True, help="results, plot and the resumable sample cache")
    parser.add_argument(
        "--evaluator",
        default=DEFAULT_EVALUATOR,
        help=f"GenPPL causal LM: hub id or folder (default {DEFAULT_EVALUATOR}); 'smollm2' or a .gguf file for an "
        "offline evaluator",
    )
    parser.add_argument("--evaluator-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="evaluator weights and logits dtype (default bfloat16, the paper's)")
    parser.add_argument("--evaluator-batch-size", type=int, default=16, help="windows per evaluator call")
    parser.add_argument("--autocast-dtype", choices=tuple(_AUTOCAST_DTYPES), default="none",
                        help="denoiser autocast (the official runs used bfloat16; default none = float32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the accelerate process's device)")
    reference = parser.add_argument_group("real-data reference (the first --num-samples rows)")
    source = reference.add_mutually_exclusive_group()
    source.add_argument("--reference-texts", metavar="FILE", help=".jsonl (strings or objects) or one text per line")
    source.add_argument("--reference-dataset", metavar="NAME", help="datasets.load_dataset name, e.g. lm1b")
    reference.add_argument("--reference-dataset-config", metavar="CONFIG", help="dataset configuration name")
    reference.add_argument("--reference-split", default="test", help="split, slicing allowed (default test)")
    reference.add_argument("--reference-column", default="text", help="text column / jsonl field (default text)")
    reference.add_argument("--reference-packing", choices=_PACKINGS, default="auto",
                           help="packed: rows as the official caches (LM1B/OWT); rows: one text per row")
    parser.add_argument("--no-plot", action="store_true", help="skip genppl_vs_entropy.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        specs = [SamplerSpec.parse(text) for text in args.spec]
        run_protocol(
            args.pipeline,
            specs,
            num_samples=args.num_samples,
            output_dir=args.output_dir,
            seeds=args.seeds,
            batch_size=args.batch_size,
            evaluator=args.evaluator,
            evaluator_dtype=args.evaluator_dtype,
            evaluator_batch_size=args.evaluator_batch_size,
            autocast_dtype=args.autocast_dtype,
            device=args.device,
            reference_texts=args.reference_texts,
            reference_dataset=args.reference_dataset,
            reference_dataset_config=args.reference_dataset_config,
            reference_split=args.reference_split,
            reference_column=args.reference_column,
            reference_packing=args.reference_packing,
            plot=not args.no_plot,
        )
    except (OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
