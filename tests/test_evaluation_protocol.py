"""The paper's evaluation protocol command (``bitstream_diffusion.evaluation.run_protocol``) on a tiny pipeline.

A random-weight SDT (adaLN layers randomised, so the network output is far from the bare matched filter) with the
official LM1B entropy table and the real BERT tokenizer, 8 tokens per sample; the golden tiny GPT-2 scores the texts
and is the MAUVE featuriser. The first run measures everything: GenPPL, entropy, MAUVE, the variational bound and the
held-out loss. (Causal-LM folders: ``test_evaluation_protocol_ar.py``.)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitstream_diffusion.evaluation.protocol_likelihood import LIKELIHOOD_COLUMNS
from bitstream_diffusion.evaluation.run_protocol import (
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    build_reference,
    fingerprint_folder,
    main,
    read_reference_texts,
)
from bitstream_diffusion.evaluation.sampler_specs import SamplerSpec, sample_seed

SPECS = ("gamma=0.2,nfe=6", "gamma=0.3,steps=5")
SEEDS = (0, 1)
NUM_SAMPLES = 4
BATCH_SIZE = 2
VLB_BATCH_SIZE = 3  # 4 reference rows: batches [0, 3) and [3, 4), one per process with two processes
HELDOUT_SIGMAS = (0.1, 1.0)
LIKELIHOOD_SEED = 5


# ---------------------------------------------------------------------------------------------------- fixtures


def _tiny_pipeline(entropy_tables_dir, seed: int = 0):
    from bitstream_diffusion import (
        BitstreamDiffusionPipeline,
        EntropyRateScheduler,
        SDTConfig,
        SDTModel,
    )
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer

    torch.manual_seed(seed)
    config = SDTConfig(
        bits_per_token=15,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        content_dim=16,
        head_hidden_size=16,
        max_position_embeddings=8,
        dropout=0.0,
    )
    model = SDTModel(config).eval()
    with torch.no_grad():  # adaLN-Zero (and other zero-initialised) weights get random values
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.5)
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b")
    return BitstreamDiffusionPipeline(
        model=model,
        scheduler=scheduler,
        tokenizer=load_bert_uncased_tokenizer(),
        codec_layout="lm1b",
        codec_num_tokens=8,
    )


@pytest.fixture(scope="module", autouse=True)
def _fresh_accelerate_state():
    """The protocol sets up accelerate's process state (CPU here); leave none behind for other test modules."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, entropy_tables_dir) -> Path:
    folder = tmp_path_factory.mktemp("protocol") / "tiny-pipeline"
    _tiny_pipeline(entropy_tables_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    from bitstream_diffusion import BitstreamDiffusionPipeline

    pipe = BitstreamDiffusionPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, wiki_summaries) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in wiki_summaries[:40]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def evaluator_dir(golden_dir) -> Path:
    return golden_dir / "genppl" / "tiny_gpt2"


def _metric_flags(evaluator_dir) -> list[str]:
    """Every model and MAUVE metric, with the tiny GPT-2 as the MAUVE featuriser."""
    return [
        "--vlb", "--vlb-batch-size", str(VLB_BATCH_SIZE), "--likelihood-seed", str(LIKELIHOOD_SEED),
        "--heldout-loss", "--heldout-loss-sigmas", *map(str, HELDOUT_SIGMAS),
        "--mauve", "--mauve-featurizer", str(evaluator_dir),
    ]  # fmt: skip


def _argv(
    pipeline_dir, output_dir, evaluator_dir, reference_file=None, *, specs=SPECS, seeds=SEEDS, batch_size=BATCH_SIZE
):
    argv = ["--pipeline", str(pipeline_dir)]
    for spec in specs:
        argv += ["--spec", spec]
    argv += ["--num-samples", str(NUM_SAMPLES), "--seeds", *map(str, seeds), "--batch-size", str(batch_size)]
    argv += ["--evaluator", str(evaluator_dir), "--evaluator-dtype", "float32", "--device", "cpu"]
    argv += ["--output-dir", str(output_dir)]
    if reference_file is not None:
        argv += ["--reference-texts", str(reference_file)]
    return argv


class _CallCounter:
    """Counts pipeline calls (generated batches) while installed."""

    def __init__(self, monkeypatch):
        from bitstream_diffusion import BitstreamDiffusionPipeline

        self.calls = 0
        original = BitstreamDiffusionPipeline.__call__

        def counted(pipe, *args, **kwargs):
            self.calls += 1
            return original(pipe, *args, **kwargs)

        monkeypatch.setattr(BitstreamDiffusionPipeline, "__call__", counted)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, pipeline_dir, evaluator_dir, reference_file):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = _CallCounter(monkeypatch)
        assert main(_argv(pipeline_dir, output_dir, evaluator_dir, reference_file) + _metric_flags(evaluator_dir)) == 0
    return output_dir, counter.calls


def _sample_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["row_type"] == "samples"]


# ---------------------------------------------------------------------------------------------------- specs


def test_spec_notations_resolve_to_the_paper_sampler():
    from bitstream_diffusion import EntropyRateScheduler

    config = {"solver": "euler", "self_conditioning": "carry"}
    paper = SamplerSpec.parse("gamma=0.2,nfe=256").resolve(config)
    assert paper.num_inference_steps == 255 and paper.expected_nfe == 255
    assert paper.gamma_per_step == EntropyRateScheduler.gamma_from_paper(0.2, 256)
    assert paper.label == "gamma=0.2,nfe=256"
    assert paper.key == "gamma=0.2,nfe=256,solver=euler,self_conditioning=carry"
    assert paper.scheduler_overrides(config) == {}

    direct = SamplerSpec.parse(" gamma=0.20 , steps=255 ").resolve(config)
    assert (direct.num_inference_steps, direct.gamma_per_step, direct.label) == (255, 0.2, "gamma=0.2,steps=255")

    heun = SamplerSpec.parse("gamma=0.2,nfe=256,solver=heun,sc=refined").resolve(config)
    # The most levels whose calls (one more per step for Heun, one more for refined SC) stay within nfe - 1 = 255.
    assert heun.num_inference_steps == 85 and heun.expected_nfe == 85 + 2 * 84 == 253
    assert heun.gamma_per_step == pytest.approx(0.2 * 255 / 84)  # S_churn = gamma * (nfe - 1) over the levels
    assert heun.scheduler_overrides(config) == {"solver": "heun", "self_conditioning": "refined"}
    assert heun.label == "gamma=0.2,nfe=256,solver=heun,self_conditioning=refined"


@pytest.mark.parametrize(
    "text, message",
    [
        ("gamma=0.2", "exactly one of"),
        ("gamma=0.2,nfe=256,steps=255", "exactly one of"),
        ("nfe=256", "no gamma"),
        ("gamma=0.2,nfe=256,eta=0.6", "Unknown spec key"),
        ("gamma=0.2,nfe=256,nfe=128", "given twice"),
        ("gamma=abc,nfe=256", "Bad number"),
        ("gamma=-1,steps=10", ">= 0"),
        ("gamma=0.2,nfe=2", ">= 3"),
        ("gamma=0.2,steps=10,solver=dpm", "solver"),
        ("gamma=0.2 nfe=256", "Bad number"),
        ("gamma0.2,nfe=256", "Malformed"),
    ],
)
def test_bad_specs_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        SamplerSpec.parse(text)


def test_sample_seed_is_the_official_formula_per_sample():
    import zlib

    key = "gamma=0.2,nfe=256,solver=euler,self_conditioning=carry"
    crc = zlib.crc32(key.encode())
    assert sample_seed(3, key, 17) == (3 * 1_000_003 + crc * 10_007 + 17) % (2**63 - 1)
    assert sample_seed(3, key, 17) != sample_seed(3, key + "x", 17)


def test_batches_are_listed_so_that_every_process_share_holds_every_run():
    """Contiguous shares (``split_between_processes``) of the batch list each hold part of every spec x seed."""
    from bitstream_diffusion.evaluation.generation import plan_batches

    batches = plan_batches(num_specs=3, seeds=(0, 5), num_samples=10, batch_size=4)
    assert len(batches) == 3 * 2 * 3 and len(set(batches)) == len(batches)
    assert {(b.start, b.end) for b in batches} == {(0, 4), (4, 8), (8, 10)}  # fixed boundaries, last one short
    half = len(batches) // 2
    runs = {(i, seed) for i in range(3) for seed in (0, 5)}
    assert {(b.spec_index, b.seed) for b in batches[:half]} == runs == {(b.spec_index, b.seed) for b in batches[half:]}


def test_help_imports_no_torch_transformers_or_diffusers():
    """The command line and its modules load their heavy dependencies only when the protocol runs.

    The two package ``__init__`` files are stubbed out here: they import the model classes and the GenPPL scorer
    eagerly, which is outside this module's control.
    """
    from bitstream_diffusion.evaluation import DEFAULT_EVALUATOR
    from bitstream_diffusion.evaluation.run_protocol import build_parser

    evaluator_option = next(a for a in build_parser()._actions if "--evaluator" in a.option_strings)
    assert f"(default {DEFAULT_EVALUATOR})" in evaluator_option.help  # named in the help without importing gen_ppl
    package = Path(__import__("bitstream_diffusion").__file__).parent
    stubs = [("bitstream_diffusion", str(package)), ("bitstream_diffusion.evaluation", str(package / "evaluation"))]
    script = f"""
import contextlib, io, sys, types
for name, folder in {stubs!r}:
    module = types.ModuleType(name)
    module.__path__, module.__version__ = [folder], "0"
    sys.modules[name] = module
from bitstream_diffusion.evaluation.run_protocol import main
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main(["--help"])
assert all(flag in out.getvalue() for flag in ("--reference-packing", "--vlb", "--mauve", "--max-batch-size"))
print(sorted(m for m in ("torch", "transformers", "diffusers", "accelerate", "datasets") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------- one run


def test_protocol_writes_the_stated_files_and_columns(first_run, pipe):
    from bitstream_diffusion import EntropyRateScheduler

    output_dir, calls = first_run
    num_batches = NUM_SAMPLES // BATCH_SIZE
    assert calls == len(SPECS) * len(SEEDS) * num_batches
    for name in ("results.jsonl", "results.csv", "summary.json", "summary.csv", "summary.md", "samples.jsonl",
                 "reference.jsonl"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / "genppl_vs_entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    all_rows = _read_jsonl(output_dir / "results.jsonl")
    header, all_csv_rows = _read_csv(output_dir / "results.csv")
    assert header == list(RESULT_COLUMNS) and all(list(row) == list(RESULT_COLUMNS) for row in all_rows)
    stated = {"seed", "gamma", "num_inference_steps", "nfe", "gen_ppl", "entropy", "wall_time_s", "samples_per_s",
              "model_kind", "num_parameters", "train_tokens", "mauve", "vlb_bpd", "bits_per_token", "ppl_bound",
              "heldout_loss"}  # fmt: skip
    assert stated <= set(header)
    # one row per spec x seed, then the model's likelihood row, then the reference
    assert [r["row_type"] for r in all_rows] == ["samples"] * len(SPECS) * len(SEEDS) + ["model", "reference"]
    assert [r["row_type"] for r in all_csv_rows] == [r["row_type"] for r in all_rows]
    rows, csv_rows = all_rows[:-2], all_csv_rows[:-2]
    assert [(r["spec"], r["seed"]) for r in rows] == [(s, seed) for s in SPECS for seed in SEEDS]
    assert [(r["spec"], int(r["seed"])) for r in csv_rows] == [(r["spec"], r["seed"]) for r in rows]
    num_parameters = sum(p.numel() for p in pipe.model.parameters())
    for row, csv_row in zip(rows, csv_rows, strict=True):
        assert float(csv_row["gen_ppl"]) == row["gen_ppl"] and float(csv_row["entropy"]) == row["entropy"]
        assert row["model_kind"] == "cobit" and row["num_parameters"] == num_parameters
        assert row["train_tokens"] is None  # nothing recorded beside the folder
        assert 0 < row["mauve"] <= 1 and float(csv_row["mauve"]) == row["mauve"]
        assert row["vlb_bpd"] is None and row["likelihood"] is None  # a property of the model, not of a sampler
        assert row["num_inference_steps"] == 5 and row["nfe"] == 5  # nfe=6 in the paper's notation is 5 calls
        assert row["num_samples"] == NUM_SAMPLES and row["num_batches"] == num_batches and row["cached_batches"] == 0
        assert row["num_processes"] == 1 and row["wall_time_s"] > 0 and row["samples_per_s"] > 0
        assert 1 < row["gen_ppl"] < float("inf") and row["entropy"] > 0
    paper_row = rows[0]
    assert paper_row["paper_nfe"] == 6 and paper_row["gamma_per_step"] == EntropyRateScheduler.gamma_from_paper(0.2, 6)
    assert rows[-1]["paper_nfe"] is None and rows[-1]["gamma_per_step"] == 0.3

    model, reference = all_rows[-2:]
    assert (model["model_kind"], model["spec"], model["seed"], model["gen_ppl"]) == ("cobit", None, None, None)
    assert model["likelihood"] == "bound" and model["likelihood_rows"] == NUM_SAMPLES
    assert model["batch_size"] == VLB_BATCH_SIZE and model["vlb_num_mc_samples"] == 1
    assert (reference["model_kind"], reference["spec"], reference["num_samples"]) == ("reference", "reference", 4)
    assert reference["num_parameters"] is None and reference["vlb_bpd"] is None

    summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))["summary"]
    summary_header, _ = _read_csv(output_dir / "summary.csv")
    assert summary_header == list(SUMMARY_COLUMNS)
    assert [s["spec"] for s in summary] == [*SPECS, None, "reference"]
    assert [s["row_type"] for s in summary] == ["samples"] * len(SPECS) + ["model", "reference"]
    assert {k: summary[-2][k] for k in ("vlb_bpd", "ppl_bound", "heldout_loss")} == {
        k: model[k] for k in ("vlb_bpd", "ppl_bound", "heldout_loss")
    }
    for entry in summary[:-2]:
        spec_rows = [r for r in rows if r["spec"] == entry["spec"]]
        assert entry["num_seeds"] == len(SEEDS) and entry["nfe"] == 5
        assert entry["gen_ppl_mean"] == pytest.approx(statistics.fmean(r["gen_ppl"] for r in spec_rows))
        assert entry["gen_ppl_std"] == pytest.approx(statistics.stdev(r["gen_ppl"] for r in spec_rows))
        assert entry["entropy_mean"] == pytest.approx(statistics.fmean(r["entropy"] for r in spec_rows))
        assert entry["mauve_mean"] == pytest.approx(statistics.fmean(r["mauve"] for r in spec_rows))
        assert entry["model_kind"] == "cobit" and entry["num_parameters"] == num_parameters
    reference = summary[-1]
    assert reference["num_samples"] == NUM_SAMPLES and reference["gen_ppl_mean"] > 1 and reference["entropy_mean"] > 0
    assert reference["gen_ppl_mean"] == all_rows[-1]["gen_ppl"] and reference["model_kind"] == "reference"
    markdown = (output_dir / "summary.md").read_text(encoding="utf-8")
    assert "| reference | reference |" in markdown and "| MAUVE |" in markdown
    assert "## Likelihood of the held-out reference rows (4 rows)" in markdown
    assert f"| cobit | {num_parameters:,} |  | bound (K=1) | {model['vlb_bpd']:.4f} ± " in markdown

    samples = _read_jsonl(output_dir / "samples.jsonl")
    assert len(samples) == len(SPECS) * len(SEEDS) * NUM_SAMPLES
    assert len({s["text"] for s in samples}) == len(samples)  # every sample has its own noise


def test_numbers_are_the_library_metrics_of_the_samples(first_run, evaluator_dir):
    """GenPPL from the GenPPL scorer over the row's texts, entropy from the codec's ids of the cached token ids."""
    from bitstream_diffusion import BitstreamDiffusionPipeline
    from bitstream_diffusion.evaluation import GenPPLScorer, token_entropy

    output_dir, _ = first_run
    rows = _sample_rows(_read_jsonl(output_dir / "results.jsonl"))
    samples = _read_jsonl(output_dir / "samples.jsonl")
    scorer = GenPPLScorer(evaluator_dir, dtype="float32", device="cpu")
    row = rows[1]
    texts = [s["text"] for s in samples if (s["spec"], s["seed"]) == (row["spec"], row["seed"])]
    assert scorer.score_texts(texts, batch_size=16).gen_ppl == pytest.approx(row["gen_ppl"], rel=1e-6)

    cache_files = sorted((output_dir / "cache").glob(f"*/seed-{row['seed']}/*.json"))
    records = [json.loads(p.read_text()) for p in cache_files]
    records = [r for r in records if r["key"]["spec_key"] == row["spec_key"]]
    records.sort(key=lambda r: r["key"]["start"])
    assert [t for r in records for t in r["texts"]] == texts
    codec = BitstreamDiffusionPipeline.from_pretrained(row["pipeline"]).codec
    ids = [i for r in records for i in r["token_ids"]]
    assert token_entropy(codec.ids_for_token_entropy(ids))[0] == pytest.approx(row["entropy"], rel=1e-6)


def test_a_sample_depends_only_on_seed_spec_and_index(first_run, pipe):
    """Sample 3 of (seed 1, spec 0), generated alone with its own generator, is the protocol's sample."""
    output_dir, _ = first_run
    samples = _read_jsonl(output_dir / "samples.jsonl")
    sample = next(s for s in samples if (s["spec"], s["seed"], s["index"]) == (SPECS[0], 1, 3))
    spec = SamplerSpec.parse(SPECS[0]).resolve(pipe.scheduler.config)
    assert sample["sample_seed"] == sample_seed(1, spec.key, 3)
    out = pipe(
        batch_size=1,
        num_inference_steps=spec.num_inference_steps,
        gamma=spec.gamma_per_step,
        generator=[torch.Generator().manual_seed(sample["sample_seed"])],
    )
    assert out.texts == [sample["text"]]


def test_rerun_skips_cached_batches(first_run, pipeline_dir, evaluator_dir, reference_file, monkeypatch):
    output_dir, _ = first_run
    cache_files = sorted((output_dir / "cache").rglob("*.json"))
    assert len(cache_files) == len(SPECS) * len(SEEDS) * NUM_SAMPLES // BATCH_SIZE
    stamps = {p: p.stat().st_mtime_ns for p in cache_files}
    before = _sample_rows(_read_jsonl(output_dir / "results.jsonl"))
    counter = _CallCounter(monkeypatch)

    model_before = _read_jsonl(output_dir / "results.jsonl")[-2]
    assert main(_argv(pipeline_dir, output_dir, evaluator_dir, reference_file) + _metric_flags(evaluator_dir)) == 0
    assert counter.calls == 0
    assert {p: p.stat().st_mtime_ns for p in sorted((output_dir / "cache").rglob("*.json"))} == stamps
    model_after = _read_jsonl(output_dir / "results.jsonl")[-2]
    assert {k: model_after[k] for k in LIKELIHOOD_COLUMNS} == {k: model_before[k] for k in LIKELIHOOD_COLUMNS}
    after = _sample_rows(_read_jsonl(output_dir / "results.jsonl"))
    for old, new in zip(before, after, strict=True):
        assert new["cached_batches"] == new["num_batches"]
        for column in ("gen_ppl", "entropy", "nfe", "wall_time_s", "num_scored_tokens", "mauve"):
            assert new[column] == old[column], column


def test_other_batch_boundaries_give_the_same_samples(first_run, pipeline_dir, evaluator_dir, tmp_path, monkeypatch):
    output_dir, _ = first_run
    counter = _CallCounter(monkeypatch)
    assert main(_argv(pipeline_dir, tmp_path, evaluator_dir, specs=SPECS[:1], seeds=(1,), batch_size=3)) == 0
    assert counter.calls == 2  # samples [0, 3) and [3, 4)
    expected = [s["text"] for s in _read_jsonl(output_dir / "samples.jsonl") if (s["spec"], s["seed"]) == (SPECS[0], 1)]
    assert [s["text"] for s in _read_jsonl(tmp_path / "samples.jsonl")] == expected
    assert not (tmp_path / "reference.jsonl").exists()
    assert [s["spec"] for s in json.loads((tmp_path / "summary.json").read_text())["summary"]] == [SPECS[0]]


def test_a_changed_pipeline_folder_is_not_served_stale_samples(
    first_run, pipeline_dir, evaluator_dir, entropy_tables_dir, tmp_path, monkeypatch
):
    """Another entropy table in the same folder path (the official cache's item-16 bug) regenerates the samples."""
    from bitstream_diffusion import EntropyRateScheduler

    output_dir = tmp_path / "out"
    shutil.copytree(first_run[0], output_dir)  # the first run's cache, in a folder of its own
    changed = tmp_path / "tiny-pipeline"
    shutil.copytree(pipeline_dir, changed)
    assert fingerprint_folder(changed) == fingerprint_folder(pipeline_dir)
    (changed / "README.md").write_text("a model card does not change samples\n")
    assert fingerprint_folder(changed) == fingerprint_folder(pipeline_dir)
    EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "owt").save_pretrained(changed / "scheduler")
    assert fingerprint_folder(changed) != fingerprint_folder(pipeline_dir)

    counter = _CallCounter(monkeypatch)
    assert main(_argv(changed, output_dir, evaluator_dir, specs=SPECS[:1], seeds=(0,))) == 0
    assert counter.calls == NUM_SAMPLES // BATCH_SIZE  # same spec and seed, but regenerated
    counter.calls = 0
    assert main(_argv(pipeline_dir, output_dir, evaluator_dir, specs=SPECS[:1], seeds=(0,))) == 0
    assert counter.calls == 0  # the original folder still finds its batches


def test_reference_rows_are_packed_like_the_official_lm1b_cache(pipe, reference_file, wiki_summaries):
    from bitstream_diffusion.codecs.lm1b import pack_lm1b_lines

    texts, entropy_ids = build_reference(pipe, read_reference_texts(reference_file), 5)
    expected_rows = pack_lm1b_lines(wiki_summaries[:40], pipe.tokenizer, seq_len=8).rows[:5]
    assert entropy_ids == expected_rows.tolist()
    assert texts == pipe.bits_to_text(pipe.codec.ids_to_bits(expected_rows))
    assert "[PAD]" not in " ".join(texts)

    row_texts, row_ids = build_reference(pipe, iter(["hello world", "a b c"]), 5, packing="rows")
    assert len(row_texts) == 2 and row_texts[0].startswith("hello world") and "[PAD]" in row_texts[0]
    assert row_ids == pipe.codec.ids_for_token_entropy(pipe.codec.encode_texts(["hello world", "a b c"]))


def test_reference_from_a_datasets_split(pipe, reference_file, tmp_path, monkeypatch):
    """``--reference-dataset`` reads the split with ``datasets.load_dataset`` (here a local folder, offline)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    folder = tmp_path / "dataset"
    folder.mkdir()
    shutil.copy(reference_file, folder / "test.jsonl")
    from_dataset = build_reference(pipe, read_reference_texts(dataset=str(folder), split="test"), 5)
    assert from_dataset == build_reference(pipe, read_reference_texts(reference_file), 5)
    with pytest.raises(KeyError, match="no column"):
        list(read_reference_texts(dataset=str(folder), split="test", column="body"))


def test_solver_and_self_conditioning_options(pipeline_dir, evaluator_dir, tmp_path):
    """Heun and refined self-conditioning each add a call per step; nfe=N keeps the calls within N - 1."""
    specs = ("gamma=0.1,steps=3,solver=heun,self_conditioning=refined", "gamma=0.2,nfe=8,solver=heun")
    assert main(_argv(pipeline_dir, tmp_path, evaluator_dir, specs=specs, seeds=(0,))) == 0
    rows = _read_jsonl(tmp_path / "results.jsonl")
    assert [(r["num_inference_steps"], r["nfe"], r["solver"], r["self_conditioning"]) for r in rows] == [
        (3, 3 + 2 * 2, "heun", "refined"),
        (4, 4 + 3, "heun", "carry"),
    ]


def test_command_line_errors(pipeline_dir, evaluator_dir, tmp_path, capsys):
    argv = _argv(pipeline_dir, tmp_path / "out", evaluator_dir, specs=("gamma=0.2,steps=5,eta=1",))
    assert main(argv) == 2
    assert "Unknown spec key" in capsys.readouterr().err
    assert main(_argv(tmp_path / "missing", tmp_path / "out", evaluator_dir)) == 2
    assert main(_argv(pipeline_dir, tmp_path / "out", evaluator_dir, tmp_path / "missing.jsonl")) == 2
    capsys.readouterr()
    assert main(["--pipeline", str(pipeline_dir), "--output-dir", str(tmp_path)]) == 2  # no --spec (only AR has one)
    assert "Give at least one sampler spec" in capsys.readouterr().err
    assert main(_argv(pipeline_dir, tmp_path / "out", evaluator_dir, specs=("temperature=0.9",))) == 2
    assert "are for autoregressive models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--pipeline", str(pipeline_dir), "--spec", "gamma=0.2,nfe=6"])  # no --output-dir


# ---------------------------------------------------------------------------------------------------- model metrics


def _reference_bits(pipe, reference_file):
    from bitstream_diffusion.evaluation.reference import build_reference_data

    data = build_reference_data(pipe.codec, read_reference_texts(reference_file), NUM_SAMPLES)
    return pipe.codec.ids_to_bits(data.token_ids)


def test_the_bound_and_the_heldout_loss_are_direct_library_calls_on_the_reference_bits(first_run, pipe, reference_file):
    """The model row is one compute_vlb / compute_heldout_loss call on the reference rows' bits, same seed."""
    from bitstream_diffusion.evaluation import compute_heldout_loss, compute_vlb

    output_dir, _ = first_run
    model = _read_jsonl(output_dir / "results.jsonl")[-2]
    bits = _reference_bits(pipe, reference_file)
    assert bits.shape == (NUM_SAMPLES, 8 * 15)
    direct = compute_vlb(
        pipe.model, bits, batch_size=VLB_BATCH_SIZE, generator=torch.Generator().manual_seed(LIKELIHOOD_SEED),
        show_progress=False,
    )  # fmt: skip
    assert model["vlb_bpd"] == direct.vlb_bpd and model["vlb_bpd_stderr"] == direct.vlb_bpd_stderr
    assert model["bits_per_token"] == direct.bits_per_token_bound == 15 * direct.vlb_bpd
    assert model["bits_per_token_stderr"] == direct.bits_per_token_bound_stderr
    assert model["ppl_bound"] == direct.ppl_bound and model["nll_per_token"] == pytest.approx(
        direct.bits_per_token_bound * 0.6931471805599453, rel=1e-12
    )
    other_seed = compute_vlb(pipe.model, bits, batch_size=VLB_BATCH_SIZE, generator=torch.Generator().manual_seed(0),
                             show_progress=False)  # fmt: skip
    assert other_seed.vlb_bpd != model["vlb_bpd"]  # the seed is used

    loss = compute_heldout_loss(
        pipe.model, bits, batch_size=VLB_BATCH_SIZE, sigmas=list(HELDOUT_SIGMAS),
        generator=torch.Generator().manual_seed(LIKELIHOOD_SEED), show_progress=False,
    )  # fmt: skip
    assert (model["heldout_loss"], model["heldout_loss_stderr"]) == (loss.loss, loss.loss_stderr)


@pytest.mark.parametrize("num_mc_samples", [1, 3])
def test_a_share_of_the_bound_replays_the_draws_of_the_batches_before_it(pipe, reference_file, num_mc_samples):
    """Shares of batches (as processes get them) give exactly the per-row values of one call on all rows."""
    from bitstream_diffusion.evaluation import compute_vlb
    from bitstream_diffusion.evaluation.protocol_likelihood import LikelihoodSettings, vlb_of_batches

    bits = torch.cat([_reference_bits(pipe, reference_file)] * 2)[:7]  # 7 rows: batches of 2, 2, 2, 1
    settings = LikelihoodSettings(vlb=True, batch_size=2, num_mc_samples=num_mc_samples, seed=11)
    whole = compute_vlb(
        pipe.model, bits, batch_size=2, num_mc_samples=num_mc_samples, generator=torch.Generator().manual_seed(11),
        show_progress=False,
    )  # fmt: skip
    shares = [vlb_of_batches(pipe.model, bits, batches, settings) for batches in (range(0, 1), range(1, 4))]
    for name, expected in (("vlb", whole.vlb_bpd_per_row), ("diff", whole.diff_bpd_per_row)):
        assert torch.equal(torch.cat([share[name] for share in shares]), expected), name
    unreplayed = compute_vlb(pipe.model, bits[2:], batch_size=2, num_mc_samples=num_mc_samples,
                             generator=torch.Generator().manual_seed(11), show_progress=False)  # fmt: skip
    assert not torch.equal(unreplayed.vlb_bpd_per_row, whole.vlb_bpd_per_row[2:])  # the replay is what makes it so
    empty = vlb_of_batches(pipe.model, bits, range(4, 4), settings)
    assert empty["vlb"].numel() == 0


def test_mauve_is_the_library_mauve_of_the_samples_against_the_reference(first_run, evaluator_dir):
    from bitstream_diffusion.evaluation import compute_mauve

    output_dir, _ = first_run
    row = _sample_rows(_read_jsonl(output_dir / "results.jsonl"))[2]
    texts = [s["text"] for s in _read_jsonl(output_dir / "samples.jsonl") if (s["spec"], s["seed"]) == (row["spec"],
             row["seed"])]  # fmt: skip
    reference = [r["text"] for r in _read_jsonl(output_dir / "reference.jsonl")]
    direct = compute_mauve(texts, reference, featurize_model_id=evaluator_dir, max_text_length=8, device="cpu")
    assert row["mauve"] == pytest.approx(direct.mauve, rel=1e-9)
    assert row["mauve_featurizer"] == str(evaluator_dir)


def test_max_batch_size_chunks_the_pipeline_calls_without_changing_a_sample(
    first_run, pipeline_dir, evaluator_dir, tmp_path, monkeypatch
):
    from bitstream_diffusion import BitstreamDiffusionPipeline

    output_dir, _ = first_run
    chunks = []
    original = BitstreamDiffusionPipeline.__call__

    def recording(pipe, *args, **kwargs):
        chunks.append(kwargs.get("max_batch_size"))
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(BitstreamDiffusionPipeline, "__call__", recording)
    argv = _argv(pipeline_dir, tmp_path, evaluator_dir, specs=SPECS[1:], seeds=(1,), batch_size=4)
    assert main([*argv, "--max-batch-size", "1"]) == 0
    assert chunks == [1]  # one cached batch of 4 samples, run one sample at a time
    expected = [s["text"] for s in _read_jsonl(output_dir / "samples.jsonl") if (s["spec"], s["seed"]) == (SPECS[1], 1)]
    assert [s["text"] for s in _read_jsonl(tmp_path / "samples.jsonl")] == expected
    with pytest.raises(SystemExit):
        main([*argv, "--max-batch-size", "0"])


def test_model_metrics_need_a_reference(pipeline_dir, evaluator_dir, tmp_path, capsys):
    for flag in ("--vlb", "--heldout-loss", "--mauve"):
        assert main([*_argv(pipeline_dir, tmp_path / "out", evaluator_dir), flag]) == 2
        assert f"{flag} measure(s) the model against the held-out reference rows" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cache").exists()  # refused before anything was generated



@pytest.mark.slow
def test_mauve_with_the_offline_smollm2_evaluator(first_run, pipeline_dir, reference_file, tmp_path):
    """``--evaluator smollm2 --mauve``: the featuriser defaults to the evaluator (the offline SmolLM2-135M folder,
    shared with the float32 GenPPL scorer) and MAUVE is the library's on the same texts."""
    from bitstream_diffusion.evaluation import compute_mauve
    from bitstream_diffusion.offline import prepare_gguf_evaluator

    argv = _argv(pipeline_dir, tmp_path, "smollm2", reference_file, specs=SPECS[:1], seeds=(0,))
    assert main([*argv, "--mauve"]) == 0
    row = _read_jsonl(tmp_path / "results.jsonl")[0]
    assert row["evaluator"] == row["mauve_featurizer"] == "smollm2" and 0 < row["mauve"] <= 1
    texts = [s["text"] for s in _read_jsonl(tmp_path / "samples.jsonl")]
    reference = [r["text"] for r in _read_jsonl(tmp_path / "reference.jsonl")]
    featurizer = prepare_gguf_evaluator()
    direct = compute_mauve(texts, reference, featurize_model_id=featurizer, max_text_length=8, device="cpu")
    assert row["mauve"] == pytest.approx(direct.mauve, rel=1e-6)
    assert "| MAUVE |" in (tmp_path / "summary.md").read_text()

# ---------------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_give_the_same_samples_and_numbers(
    first_run, pipeline_dir, evaluator_dir, reference_file, tmp_path, two_cpu_processes_launch
):
    """``accelerate launch`` with 2 CPU processes: batches, scoring jobs, MAUVE comparisons and likelihood batches
    dealt across processes, identical results (the second process replays the bound's draws of the first batch).

    (``accelerate launch --cpu --num_processes 2`` starts a single process in accelerate 1.15; ``--multi_gpu`` with
    ``--device cpu`` starts two gloo processes on CPU.)
    """
    output_dir, _ = first_run
    command = two_cpu_processes_launch(
        "-m", "bitstream_diffusion.evaluation.run_protocol",
        *_argv(pipeline_dir, tmp_path, evaluator_dir, reference_file), *_metric_flags(evaluator_dir),
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]

    assert (tmp_path / "samples.jsonl").read_text() == (output_dir / "samples.jsonl").read_text()
    assert (tmp_path / "reference.jsonl").read_text() == (output_dir / "reference.jsonl").read_text()
    one, two = _read_jsonl(output_dir / "results.jsonl"), _read_jsonl(tmp_path / "results.jsonl")
    numbers = ("row_type", "spec", "seed", "nfe", "gen_ppl", "gen_bits_per_token", "entropy", "num_scored_tokens",
               "mauve", "num_parameters", *LIKELIHOOD_COLUMNS)  # fmt: skip
    assert [r["row_type"] for r in two] == [r["row_type"] for r in one]
    for a, b in zip(one, two, strict=True):
        assert b["num_processes"] == 2 and b.get("cached_batches") in (0, None)
        for column in numbers:
            assert a[column] == b[column], column
    assert two[-2]["vlb_bpd"] is not None and two[-2]["heldout_loss"] is not None
    summary_one = json.loads((output_dir / "summary.json").read_text())["summary"]
    summary_two = json.loads((tmp_path / "summary.json").read_text())["summary"]
    for a, b in zip(summary_one, summary_two, strict=True):
        for column in ("spec", "gen_ppl_mean", "gen_ppl_std", "entropy_mean", "entropy_std", "mauve_mean", "vlb_bpd"):
            assert a[column] == b[column], column
