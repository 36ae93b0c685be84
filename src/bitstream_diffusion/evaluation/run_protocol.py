"""The paper's evaluation protocol, for CoBit pipelines and causal LMs: samples x seeds -> GenPPL, token entropy and
MAUVE (mean ± std across seeds), and the model's likelihood of the held-out reference rows.

    python -m bitstream_diffusion.evaluation.run_protocol --pipeline cobit-s-lm1b \\
        --spec gamma=0.185,nfe=256 --spec gamma=0.2,nfe=256 --num-samples 1024 --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --evaluator openai-community/gpt2-large --reference-dataset lm1b --output-dir eval-cobit-s-lm1b \\
        --vlb --heldout-loss --mauve

    # an autoregressive baseline (a causal-LM folder) under the same rules
    python -m bitstream_diffusion.evaluation.run_protocol --pipeline ar-lm1b --spec temperature=1 \\
        --spec temperature=0.9 --num-samples 1024 --reference-dataset lm1b --output-dir eval-ar-lm1b --vlb --mauve

    # the same on 8 GPUs (work split across processes and gathered; identical samples and numbers)
    accelerate launch --multi_gpu --num_processes 8 -m bitstream_diffusion.evaluation.run_protocol ...

``--pipeline`` is a CoBit pipeline folder (``model_index.json``) or a causal-LM folder (``config.json`` of an
``AutoModelForCausalLM`` with its tokenizer), told apart by their files (:mod:`~.protocol_models`). For every spec
(CoBit: ``gamma=G,nfe=N`` or ``gamma=G,steps=K``; causal LM: ``temperature=T[,top_p=P]``, by default
``temperature=1``; see :mod:`~.sampler_specs`) and every seed, ``--num-samples`` texts are generated, decoded and
scored. A causal LM generates rows of the reference rows' length in its own tokens from one start token (BOS, else
CLS, else EOS) and they are decoded under the rules of the CoBit codec of the same data
(:mod:`~.causal_lm_text`). The steps, one module each:

1. :mod:`~.generation`: fixed batches, each sample seeded by (seed, spec, index), cached under
   ``OUTPUT_DIR/cache`` so that a rerun only makes what is missing; ``--max-batch-size`` splits a model call into
   chunks that fit in memory without changing a sample;
2. :mod:`~.reference`: the first ``--num-samples`` rows of ``--reference-texts FILE`` or ``--reference-dataset NAME
   --reference-split test``, packed like the training rows and decoded like the generations;
3. :mod:`~.scoring`: GenPPL under ``--evaluator`` (the paper's ``openai-community/gpt2-large`` by default; a local
   folder, or ``smollm2`` / a ``.gguf`` file offline), the token entropy, and with ``--mauve`` MAUVE against the
   reference texts, for each spec x seed and for the reference;
4. :mod:`~.protocol_likelihood` (``--vlb``, ``--heldout-loss``): the bound on (CoBit) or the exact value of (causal
   LM) the NLL of the reference rows, and CoBit's held-out training loss: one ``model`` row;
5. :mod:`~.reporting`: ``results.jsonl``/``.csv`` (:data:`RESULT_COLUMNS`), ``summary.json``/``.csv``/``.md``
   (:data:`SUMMARY_COLUMNS`), ``samples.jsonl``, ``reference.jsonl`` and the ``genppl_vs_entropy.png`` plot.

Several processes: the batches, the scoring jobs (the reference and one per spec x seed), the MAUVE comparisons and
the likelihood batches are split between the processes in contiguous shares (accelerate's
``PartialState.split_between_processes``) and the results gathered. A sample depends only on its seed, spec and
index, each scoring job is scored whole by one process, and the likelihood's random draws are replayed to the start
of each share, so one process and many give identical samples and numbers.

Launching several CPU processes: ``accelerate launch --cpu --num_processes 2`` starts a *single* process in
accelerate 1.15 (its simple launcher ignores ``--num_processes`` without MPI); use
``accelerate launch --multi_gpu --num_processes 2 -m bitstream_diffusion.evaluation.run_protocol ... --device cpu``
(or ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m ...``).

This module imports torch, transformers and diffusers only once the protocol runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .generation import (
    AUTOCAST_DTYPES,
    CACHE_FORMAT,
    SampleCache,
    fingerprint_folder,
    generate_batches,
    group_by_run,
    plan_batches,
    utc_timestamp,
)
from .protocol_cli import build_parser, protocol_kwargs
from .protocol_likelihood import DEFAULT_HELDOUT_SIGMAS, LikelihoodSettings, model_likelihood
from .reference import PACKING_CHOICES, ReferenceData, build_reference, build_reference_data, read_reference_texts
from .reporting import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    RunSettings,
    format_summary,
    model_row,
    plot_frontier,
    reference_row,
    result_row,
    summarize,
    write_outputs,
)
from .sampler_specs import ARSamplerSpec, SamplerSpec, parse_spec
from .scoring import (
    REAL_TEXT_JOB,
    MauveSettings,
    generated_job,
    mauve_of_runs,
    reference_job,
    resolve_evaluator,
    score_jobs,
)

__all__ = [
    "CACHE_FORMAT",
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

_REAL_TEXT_FIELDS = ("gen_ppl", "gen_bits_per_token", "entropy", "num_samples", "num_scored_tokens")


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` computed (the same on every process).

    Attributes:
        rows: the ``results.jsonl`` rows (:data:`RESULT_COLUMNS`): one ``samples`` row per spec x seed, then the
            ``model`` row (with ``--vlb``/``--heldout-loss``) and the ``reference`` row (with a reference).
        summary: one dict per spec, then the model and reference rows (:data:`SUMMARY_COLUMNS`).
        reference: the reference's numbers (``gen_ppl``, ``entropy``, ``num_samples``, ...), or ``None``.
        generated_batches: batches generated by this run (all processes).
        cached_batches: batches read from the cache by this run (all processes).
        output_dir: where the files are.
        samples: ``{(spec label, seed): texts in index order}``.
        model_kind: ``"cobit"`` or ``"ar"``.
        likelihood: the likelihood columns of the model row, or ``None``.
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    reference: dict[str, Any] | None
    generated_batches: int
    cached_batches: int
    output_dir: Path
    samples: dict[tuple[str, int], list[str]] = field(default_factory=dict, repr=False)
    model_kind: str = "cobit"
    likelihood: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------------- checks


def _check_arguments(specs, seeds, *, counts, autocast_dtype, reference_sources, reference_packing, needs_reference):
    """Fail on bad arguments before anything is loaded; returns the parsed specs, the seeds and the autocast name."""
    parsed = [s if isinstance(s, (SamplerSpec, ARSamplerSpec)) else parse_spec(s) for s in specs]
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct integers, got {seeds}.")
    bad = [name for name, value in counts.items() if int(value) < 1]
    if bad:
        raise ValueError(f"{', '.join(f'`{name}`' for name in bad)} must be positive integers.")
    autocast_name = "none" if autocast_dtype is None else str(autocast_dtype).lower()
    if autocast_name not in AUTOCAST_DTYPES:
        raise ValueError(f"`autocast_dtype` must be one of {list(AUTOCAST_DTYPES)}, got {autocast_dtype!r}.")
    have_reference = sum(source is not None for source in reference_sources)
    if have_reference > 1:
        raise ValueError("Pass either --reference-texts or --reference-dataset, not both.")
    if needs_reference and not have_reference:
        raise ValueError(
            f"{', '.join(needs_reference)} measure(s) the model against the held-out reference rows; pass "
            f"--reference-texts FILE or --reference-dataset NAME."
        )
    if reference_packing not in PACKING_CHOICES:
        raise ValueError(f"`reference_packing` must be one of {list(PACKING_CHOICES)}, got {reference_packing!r}.")
    return parsed, seeds, autocast_name


def _resolve_specs(model, parsed: list) -> list:
    if not parsed:
        if model.kind != "ar":
            raise ValueError("Give at least one sampler spec, e.g. --spec gamma=0.2,nfe=256.")
        parsed = [ARSamplerSpec()]  # ancestral sampling
    resolved = model.resolve_specs(parsed)
    keys = [r.key for r in resolved]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Some sampler specs name the same sampler: {keys}.")
    return resolved


def _log_plan(model, resolved, seeds, num_samples, num_processes) -> None:
    logger.info(
        f"Protocol: {len(resolved)} spec(s) x {len(seeds)} seed(s) x {num_samples} samples on {num_processes} "
        f"process(es); {model.kind} model {model.folder} ({model.fingerprint[:12]}), {model.num_parameters:,} "
        f"parameters, {model.num_tokens} tokens per row"
    )
    for spec in resolved:
        if spec.model_kind == "cobit":
            logger.info(
                f"  {spec.label}: {spec.num_inference_steps} noise levels, per-step gamma {spec.gamma_per_step:.6g}, "
                f"solver={spec.solver}, self_conditioning={spec.self_conditioning}, {spec.expected_nfe} NFE"
            )
        else:
            logger.info(f"  {spec.label}: {spec.expected_nfe} forward passes per sample")


# ---------------------------------------------------------------------------------------------------- steps


def _share(state, items: Sequence[Any]) -> list[Any]:
    """This process's contiguous share of ``items`` (all of them with one process)."""
    with state.split_between_processes(list(items)) as share:
        return list(share)


def _load_reference(rules, num_rows: int, packing: str, path, **dataset) -> ReferenceData | None:
    """The reference rows from a file (``path``) or a ``datasets`` split (``dataset=NAME``, ...); ``None`` without."""
    if path is None and dataset["dataset"] is None:
        return None
    return build_reference_data(rules, read_reference_texts(path, **dataset), num_rows, packing)


def _load_scorers(model, my_jobs, device, *, evaluator, evaluator_dtype, mauve, mauve_featurizer, **mauve_options):
    """The GenPPL scorer and the MAUVE featuriser (``None`` on a process without scoring jobs) and MAUVE settings."""
    from .gen_ppl import GenPPLScorer
    from .mauve import MauveFeaturizer

    evaluator_path = resolve_evaluator(evaluator)
    scorer = GenPPLScorer(evaluator_path, dtype=evaluator_dtype, device=device) if my_jobs else None
    if not mauve:
        return scorer, None, None
    featurizer_path = resolve_evaluator(mauve_featurizer or evaluator)
    length = mauve_options.pop("max_text_length")
    if length is None:  # a CoBit OWT code stands for several GPT-2 tokens: the official 1024
        length = 1024 if model.kind == "cobit" and model.text_rules.layout == "owt" else model.num_tokens
    settings = MauveSettings(featurizer_path, int(length), **mauve_options)
    featurizer = None
    if my_jobs and featurizer_path == evaluator_path and evaluator_dtype == "float32":
        featurizer = MauveFeaturizer(model=scorer.model, tokenizer=scorer.tokenizer, device=device)
    elif my_jobs:
        featurizer = MauveFeaturizer(featurizer_path, dtype="float32", device=device)
    return scorer, featurizer, settings


def _generate(state, model, specs, cache: SampleCache, seeds, num_samples, batch_size, max_batch_size):
    """Every batch of every run, this process making its share; returns ``({(spec_index, seed): batches}, all)``."""
    from accelerate.utils import gather_object

    my_batches = _share(state, plan_batches(len(specs), seeds, num_samples, batch_size))
    made = generate_batches(
        model, specs, my_batches, cache, max_batch_size=max_batch_size, show_progress=state.is_local_main_process
    )
    batches = gather_object(made)
    return group_by_run(batches), batches


def _score(state, scorer, my_jobs, by_run, reference: ReferenceData | None, batch_size: int, **mauve) -> dict:
    """This process's scoring jobs scored, everyone's gathered: ``{job name: TextScores}``."""
    from accelerate.utils import gather_object

    jobs = []
    for name in my_jobs:
        if name == REAL_TEXT_JOB:
            jobs.append(reference_job(reference.texts, reference.entropy_ids))
            continue
        texts = [text for batch in by_run[name] for text in batch.texts]
        jobs.append(generated_job(name, texts, [e for batch in by_run[name] for e in batch.entropies]))
    scores = score_jobs(scorer, jobs, batch_size=batch_size, show_progress=state.is_local_main_process, **mauve)
    return {score.name: score for score in gather_object(scores)}


def _report(state, output_dir, specs, seeds, by_run, scores, mauve, likelihood, settings, reference, plot, batch_size):
    """The result rows, the summary and the samples of every run (``batch_size``: of the likelihood's batches); the
    main process writes the files."""
    runs = [(spec_index, seed) for spec_index in range(len(specs)) for seed in seeds]
    rows = [
        result_row(specs[i], seed, by_run[i, seed], scores[i, seed], settings, mauve.get((i, seed)))
        for i, seed in runs
    ]
    if likelihood is not None:
        rows.append(model_row(likelihood, settings, batch_size=batch_size))
    if REAL_TEXT_JOB in scores:
        rows.append(reference_row(scores[REAL_TEXT_JOB], settings))
    samples = {(specs[i].label, seed): [t for b in by_run[i, seed] for t in b.texts] for i, seed in runs}
    summary = summarize(specs, rows)
    if state.is_main_process:
        write_outputs(
            output_dir,
            rows,
            summary,
            specs=specs,
            seeds=seeds,
            samples=samples,
            reference_texts=None if reference is None else reference.texts,
            plot=plot,
        )
    return rows, summary, samples


# ---------------------------------------------------------------------------------------------------- the protocol


def run_protocol(
    pipeline: str | os.PathLike,
    specs: Sequence[str | SamplerSpec | ARSamplerSpec] = (),
    *,
    num_samples: int,
    output_dir: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    max_batch_size: int | str | None = "auto",
    num_tokens: int | None = None,
    ar_layout: str = "auto",
    evaluator: str | None = None,
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
    vlb: bool = False,
    vlb_num_mc_samples: int = 1,
    vlb_batch_size: int = 16,
    likelihood_seed: int = 0,
    heldout_loss: bool = False,
    heldout_loss_sigmas: Sequence[float] = DEFAULT_HELDOUT_SIGMAS,
    mauve: bool = False,
    mauve_featurizer: str | None = None,
    mauve_num_buckets: int | str = "auto",
    mauve_max_text_length: int | None = None,
    plot: bool = True,
) -> ProtocolResult:
    """Run the protocol (see the module docstring) and write its files; call it on every process.

    Args:
        pipeline: a CoBit pipeline folder, a causal-LM folder, or a hub id of either.
        specs: sampler specs, strings (``"gamma=0.2,nfe=256"``, ``"temperature=0.9"``) or parsed specs; a causal LM
            defaults to ``temperature=1``.
        num_samples: samples per spec and seed (and reference rows).
        output_dir: where the cache and the result files go.
        seeds: one run per seed.
        batch_size: samples per cached batch (fixes the batch boundaries, not the samples).
        max_batch_size: the most samples one model call runs (an int, ``"auto"`` from the free CUDA memory, or
            ``None`` for the whole batch); the samples do not depend on it.
        num_tokens: a causal LM's row length (default: recorded by its training run).
        ar_layout: a causal LM's text rules (:data:`~.causal_lm_text.AR_TEXT_LAYOUTS`).
        evaluator: GenPPL evaluator: a hub id, a local folder, ``"smollm2"`` or a ``.gguf`` file; ``None``: the
            paper's ``openai-community/gpt2-large`` (``evaluation.DEFAULT_EVALUATOR``).
        evaluator_dtype: ``"bfloat16"`` (the paper's) or ``"float32"``.
        evaluator_batch_size: windows per evaluator call.
        autocast_dtype: ``None``/``"none"`` (float32), ``"bfloat16"`` (the official generation setting) or
            ``"float16"`` for the model (generation and likelihood).
        device: ``"cpu"``, ``"cuda:0"``...; default: the accelerate process's device.
        reference_texts, reference_dataset, reference_dataset_config, reference_split, reference_column,
        reference_packing: the real reference (:func:`read_reference_texts`, :func:`build_reference`); none given
            means no reference row (and no likelihood or MAUVE).
        vlb, vlb_num_mc_samples, vlb_batch_size, likelihood_seed, heldout_loss, heldout_loss_sigmas: the likelihood
            metrics (:mod:`~.protocol_likelihood`).
        mauve, mauve_featurizer, mauve_num_buckets, mauve_max_text_length: MAUVE against the reference texts; the
            featuriser defaults to the evaluator (resolved the same way).
        plot: write ``genppl_vs_entropy.png``.
    """
    import torch
    from accelerate import PartialState

    from .gen_ppl import DEFAULT_EVALUATOR
    from .protocol_models import load_protocol_model

    began = time.perf_counter()
    wanted = {"--vlb": vlb, "--heldout-loss": heldout_loss, "--mauve": mauve}
    parsed, seeds, autocast_name = _check_arguments(
        specs,
        seeds,
        counts={"num_samples": num_samples, "batch_size": batch_size, "evaluator_batch_size": evaluator_batch_size,
                "vlb_num_mc_samples": vlb_num_mc_samples, "vlb_batch_size": vlb_batch_size},
        autocast_dtype=autocast_dtype,
        reference_sources=(reference_texts, reference_dataset),
        reference_packing=reference_packing,
        needs_reference=[flag for flag, on in wanted.items() if on],
    )  # fmt: skip
    num_samples, batch_size, evaluator = int(num_samples), int(batch_size), str(evaluator or DEFAULT_EVALUATOR)
    output_dir = Path(output_dir)
    state = PartialState(cpu=device is not None and str(device) == "cpu")
    exec_device = torch.device(device) if device is not None else state.device
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    model = load_protocol_model(state, pipeline, exec_device, num_tokens=num_tokens, ar_layout=ar_layout)
    resolved = _resolve_specs(model, parsed)
    if state.is_main_process:
        _log_plan(model, resolved, seeds, num_samples, state.num_processes)
    if heldout_loss and not model.supports_heldout_loss:
        logger.warning("--heldout-loss is a CoBit metric (a diffusion loss); a causal LM leaves its columns empty.")

    # The reference rows and the scorers come before the long part, so that their errors show at once.
    runs = [(spec_index, seed) for spec_index in range(len(resolved)) for seed in seeds]
    have_reference = reference_texts is not None or reference_dataset is not None
    my_jobs = _share(state, ([REAL_TEXT_JOB] if have_reference else []) + runs)
    with state.main_process_first():  # downloads (dataset, evaluator, featuriser) happen once
        reference = _load_reference(
            model.text_rules,
            num_samples,
            reference_packing,
            reference_texts,
            dataset=reference_dataset,
            dataset_config=reference_dataset_config,
            split=reference_split,
            column=reference_column,
        )
        scorer, featurizer, mauve_settings = _load_scorers(
            model, my_jobs, exec_device, evaluator=evaluator, evaluator_dtype=evaluator_dtype, mauve=mauve,
            mauve_featurizer=mauve_featurizer, max_text_length=mauve_max_text_length, num_buckets=mauve_num_buckets,
        )  # fmt: skip

    cache = SampleCache(output_dir / "cache", model.fingerprint, autocast_name, exec_device.type)
    by_run, batches = _generate(state, model, resolved, cache, seeds, num_samples, batch_size, max_batch_size)
    scores = _score(
        state, scorer, my_jobs, by_run, reference, evaluator_batch_size, featurizer=featurizer, mauve=mauve_settings
    )
    mauve_values = mauve_of_runs(state, scores, mauve_settings) if mauve else {}
    likelihood_settings = LikelihoodSettings(
        vlb=vlb,
        heldout_loss=heldout_loss,
        batch_size=int(vlb_batch_size),
        num_mc_samples=int(vlb_num_mc_samples),
        seed=int(likelihood_seed),
        heldout_sigmas=tuple(float(s) for s in heldout_loss_sigmas),
        autocast_dtype=None if autocast_name == "none" else getattr(torch, autocast_name),
        show_progress=state.is_local_main_process,
    )
    likelihood = None
    if likelihood_settings.any:
        likelihood = model_likelihood(state, model, reference.token_ids, likelihood_settings)

    settings = RunSettings(
        batch_size=batch_size,
        num_processes=state.num_processes,
        device=exec_device.type,
        autocast_dtype=autocast_name,
        evaluator=evaluator,
        evaluator_dtype=evaluator_dtype,
        pipeline=str(pipeline),
        pipeline_fingerprint=model.fingerprint,
        timestamp_utc=utc_timestamp(),
        model_kind=model.kind,
        num_parameters=model.num_parameters,
        train_tokens=model.train_tokens,
        mauve_featurizer=None if mauve_settings is None else (mauve_featurizer or evaluator),
    )
    rows, summary, samples = _report(
        state, output_dir, resolved, seeds, by_run, scores, mauve_values, likelihood, settings, reference, plot,
        likelihood_settings.batch_size,
    )  # fmt: skip
    generated = sum(not b.cached for b in batches)
    if state.is_main_process:
        logger.info(
            f"Generated {generated} batch(es), reused {len(batches) - generated} from the cache; "
            f"{time.perf_counter() - began:.1f} s.\n{format_summary(summary)}\nWrote {output_dir}"
        )
    state.wait_for_everyone()
    reference_scores = scores.get(REAL_TEXT_JOB)
    return ProtocolResult(
        rows=rows,
        summary=summary,
        reference=None if reference_scores is None else {k: getattr(reference_scores, k) for k in _REAL_TEXT_FIELDS},
        generated_batches=generated,
        cached_batches=len(batches) - generated,
        output_dir=output_dir,
        samples=samples,
        model_kind=model.kind,
        likelihood=likelihood,
    )


# ---------------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_protocol(**protocol_kwargs(args))
    except (OSError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
