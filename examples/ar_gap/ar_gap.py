#!/usr/bin/env python
# Copyright 2026 The bitstream-diffusion authors. All rights reserved.
# Licensed under the MIT License.
"""CoBit against an autoregressive baseline of the same size, trained on the same tokens with the same budget and
evaluated under the same protocol, in one command.

    python examples/ar_gap/ar_gap.py --output-dir ar-gap            # the full setting (about 25 min on 2 CPU cores)
    python examples/ar_gap/ar_gap.py --output-dir ar-gap --quick    # a smoke run (under 10 minutes on 2 CPU cores)

Each step is a command a user could run by hand (this script runs them as subprocesses and reads their files; the
two models go side by side, each trained and then evaluated, with half the cores each):

1. train CoBit with ``configs/tiny-wiki.yaml`` and the baseline with ``configs/tiny-wiki-ar.yaml``: a
   ``LlamaForCausalLM`` of the SDT's parameter count on the same 32-token rows of the embedded Wikipedia summaries,
   with the same batch, steps, optimizer, learning-rate schedule and EMA (``DIR/cobit``, ``DIR/ar``);
2. write the held-out reference: the summaries the training never saw (those in the validation tail at the end of
   the corpus), ``DIR/reference.jsonl``;
3. run ``python -m bitstream_diffusion.evaluation.run_protocol`` on both with the same evaluator, samples, seeds and
   reference: CoBit at several gamma, the baseline at several temperatures, ``--vlb`` for CoBit's likelihood bound
   and the baseline's exact likelihood of the reference rows (``DIR/eval/cobit``, ``DIR/eval/ar``);
4. write ``DIR/summary.json`` (one row per model and setting, plus the reference), ``DIR/summary.md`` and
   ``DIR/genppl_vs_entropy.png`` (both frontiers), and print the table.

The GenPPL evaluator is ``openai-community/gpt2-large`` (the paper's) when the hub is reachable, else the offline
SmolLM2 evaluator (``bitstream_diffusion.offline.prepare_gguf_evaluator``); ``--evaluator`` chooses. A finished
training run is reused (``--retrain`` trains again) and the protocol reuses its sample cache, so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "examples" / "train_bitstream_diffusion" / "train_bitstream_diffusion.py"
CONFIGS = TRAIN_SCRIPT.parent / "configs"
MODELS = {"cobit": CONFIGS / "tiny-wiki.yaml", "ar": CONFIGS / "tiny-wiki-ar.yaml"}
EXPORTS = {"cobit": "pipeline", "ar": "model"}
PAPER_EVALUATOR = "openai-community/gpt2-large"
OFFLINE_EVALUATOR = "smollm2"

logger = logging.getLogger("ar_gap")


@dataclass(frozen=True)
class Setting:
    """How much is trained and evaluated.

    Attributes:
        max_train_steps: optimizer steps of both runs (``None``: the configs' 800).
        gammas: CoBit's churn settings, each a spec ``gamma=G,steps=inference_steps``.
        inference_steps: CoBit's noise levels per sample.
        temperatures: the baseline's sampling temperatures, each a spec ``temperature=T``.
        num_samples: samples per spec and seed (and reference rows).
        seeds: evaluation seeds.
        vlb_num_mc_samples: log-sigma draws per reference row of CoBit's bound.
    """

    max_train_steps: int | None
    gammas: tuple[float, ...]
    inference_steps: int
    temperatures: tuple[float, ...]
    num_samples: int
    seeds: tuple[int, ...]
    vlb_num_mc_samples: int


FULL = Setting(max_train_steps=None, gammas=(0.0, 0.1, 0.2, 0.3), inference_steps=64,
               temperatures=(0.7, 0.8, 0.9, 1.0), num_samples=256, seeds=(0, 1, 2), vlb_num_mc_samples=4)
QUICK = Setting(max_train_steps=150, gammas=(0.0, 0.2), inference_steps=32, temperatures=(0.8, 1.0),
                num_samples=32, seeds=(0,), vlb_num_mc_samples=4)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="runs, evaluations and the summary go here")
    parser.add_argument("--quick", action="store_true", help="the smoke setting (see QUICK in this file)")
    parser.add_argument("--max-train-steps", type=int, help="override the setting's training steps (both models)")
    parser.add_argument("--num-samples", type=int, help="override the samples per spec and seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the evaluation seeds")
    parser.add_argument("--gammas", type=float, nargs="+", help="override CoBit's gamma values")
    parser.add_argument("--inference-steps", type=int, help="override CoBit's noise levels per sample")
    parser.add_argument("--temperatures", type=float, nargs="+", help="override the baseline's temperatures")
    parser.add_argument("--evaluator", default="auto",
                        help=f"GenPPL evaluator: auto ({PAPER_EVALUATOR} when the hub is reachable, else "
                             f"{OFFLINE_EVALUATOR}), a hub id, a folder, or {OFFLINE_EVALUATOR}")
    parser.add_argument("--device", default=None, help="the protocol's device (default: cuda if available, else cpu)")
    parser.add_argument("--no-vlb", action="store_true", help="skip the likelihood of the reference rows")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished run is there")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                        help="models handled side by side (each trained, then evaluated), each with cpu_count / jobs "
                             "threads (default 2: both at once)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra training flag for both runs, e.g. --train-arg train_batch_size=16")
    return parser


def resolve_setting(args: argparse.Namespace) -> Setting:
    base = QUICK if args.quick else FULL
    overrides = {
        "max_train_steps": args.max_train_steps, "num_samples": args.num_samples,
        "inference_steps": args.inference_steps,
        "seeds": None if args.seeds is None else tuple(args.seeds),
        "gammas": None if args.gammas is None else tuple(args.gammas),
        "temperatures": None if args.temperatures is None else tuple(args.temperatures),
    }
    values = {**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    return Setting(**values)


def resolve_evaluator(choice: str) -> str:
    """``auto``: the paper's gpt2-large when it is cached or the hub answers, else the offline SmolLM2 evaluator."""
    if choice != "auto":
        return choice
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(PAPER_EVALUATOR, "config.json"), str):
        return PAPER_EVALUATOR
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return OFFLINE_EVALUATOR
    try:
        from huggingface_hub import model_info

        model_info(PAPER_EVALUATOR, timeout=10)
        return PAPER_EVALUATOR
    except Exception:  # any hub or network error: stay offline
        return OFFLINE_EVALUATOR


# ---------------------------------------------------------------------------------------------------- steps


def _thread_environment(jobs: int) -> dict[str, str]:
    """The commands' environment: ``cpu_count // jobs`` threads each (unless ``OMP_NUM_THREADS`` is set)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    return env


def run_lane(steps: list[tuple[str, list[str], Path]], env: dict[str, str]) -> dict[str, dict[str, float]]:
    """Run ``(name, command, log file)`` steps one after the other; returns each step's wall and CPU seconds (the
    command's own process). Stops at the first failure with the tail of its log."""
    times = {}
    for name, command, log_file in steps:
        wall = time.perf_counter()
        with log_file.open("w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        times[name] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu, 1)}
        logger.info(f"{name}: {times[name]['wall_s']} s wall, {times[name]['cpu_s']} s CPU")
        if process.returncode != 0:
            tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"{name} failed (exit {process.returncode}); log {log_file}:\n{tail}")
    return times


def run_lanes(lanes: dict[str, list[tuple[str, list[str], Path]]], jobs: int) -> dict[str, dict[str, float]]:
    """Run the lanes (one per model: train, then evaluate), ``jobs`` of them side by side."""
    env = _thread_environment(jobs)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_lane, steps, env) for steps in lanes.values()]
        return {name: step for future in futures for name, step in future.result().items()}


def train_command(kind: str, output_dir: Path, setting: Setting, extra: list[str]) -> list[str]:
    """The training command of one model: its tiny-wiki config, the setting's steps, no samples, no trackers."""
    command = [sys.executable, str(TRAIN_SCRIPT), "--config", str(MODELS[kind]), "--output_dir",
               str(output_dir / kind), "--report_to", "none", "--num_validation_samples", "0",
               "--generate_after_export", "0"]
    if setting.max_train_steps is not None:
        steps = str(setting.max_train_steps)
        command += ["--max_train_steps", steps, "--validation_steps", steps, "--checkpointing_steps", steps,
                    "--validation_at_start", "false"]
    for item in extra:
        name, _, value = item.partition("=")
        command += [f"--{name.lstrip('-')}", value]
    return command


def is_trained(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished training run."""
    summary_file = run_dir / "train_summary.json"
    return summary_file.is_file() and json.loads(summary_file.read_text()).get("status") == "completed"


def heldout_summaries(*, num_tokens: int, validation_fraction: float, max_validation_rows: int | None) -> list[str]:
    """The Wikipedia summaries no training row contains, in corpus order.

    The tiny-wiki runs pack the stripped summaries, ``[SEP]`` between them, into rows of ``num_tokens``
    bert-base-uncased tokens and train on the rows before the validation tail (the last ``validation_fraction`` of
    the rows); a summary that starts at or after the first token of that tail was never trained on. The row cache
    of the runs gives the stream's length, so only the last summaries are tokenised here.
    """
    from bitstream_diffusion.offline import load_bert_uncased_tokenizer, load_wiki_summaries
    from bitstream_diffusion.training.data import DataRecipe, TextSource, prepare_token_rows, split_train_validation

    tokenizer = load_bert_uncased_tokenizer()
    rows = prepare_token_rows(TextSource(dataset_name="builtin:wiki_summaries"),
                              DataRecipe("lm1b", num_tokens=int(num_tokens)), tokenizer, show_progress=False)
    (_, train_end), _ = split_train_validation(len(rows), validation_fraction=validation_fraction,
                                               max_validation_rows=max_validation_rows)
    first_unseen, end, heldout = train_end * int(num_tokens), int(rows.meta["total_stream_tokens"]), []
    for text in reversed([t for t in (text.strip() for text in load_wiki_summaries()) if t]):
        start = end - len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if start < first_unseen:
            break
        heldout.append(text)
        end = start - 1  # the [SEP] before it
    return heldout[::-1]


def write_reference(output_dir: Path) -> tuple[Path, int]:
    """The held-out summaries of the tiny-wiki runs as ``reference.jsonl``; returns the file and the text count."""
    from bitstream_diffusion.utils.atomic_io import write_text_atomic

    flags = _config_values(MODELS["cobit"])
    texts = heldout_summaries(num_tokens=flags["num_tokens"], validation_fraction=flags["validation_fraction"],
                              max_validation_rows=flags.get("max_validation_rows"))
    path = output_dir / "reference.jsonl"
    write_text_atomic(path, "".join(json.dumps(text, ensure_ascii=False) + "\n" for text in texts))
    return path, len(texts)


def _config_values(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def evaluate_command(kind: str, folder: Path, output_dir: Path, setting: Setting, *, evaluator: str, device: str,
                     reference: Path, vlb: bool) -> list[str]:
    """The protocol command of one model: CoBit's gamma specs or the baseline's temperature specs, the same
    samples, seeds, evaluator and reference for both."""
    if kind == "cobit":
        specs = [f"gamma={g},steps={setting.inference_steps}" for g in setting.gammas]
    else:
        specs = [f"temperature={t}" for t in setting.temperatures]
    command = [sys.executable, "-m", "bitstream_diffusion.evaluation.run_protocol", "--pipeline", str(folder),
               *[item for spec in specs for item in ("--spec", spec)], "--num-samples", str(setting.num_samples),
               "--seeds", *map(str, setting.seeds), "--batch-size", str(min(64, setting.num_samples)),
               "--evaluator", evaluator, "--evaluator-dtype", "float32" if device == "cpu" else "bfloat16",
               "--reference-texts", str(reference), "--reference-packing", "packed", "--device", device,
               "--output-dir", str(output_dir / "eval" / kind), "--no-plot"]
    if vlb:
        command += ["--vlb", "--vlb-num-mc-samples", str(setting.vlb_num_mc_samples)]
    return command


# ---------------------------------------------------------------------------------------------------- summary

_LIKELIHOOD = ("likelihood", "vlb_bpd", "vlb_bpd_stderr", "bits_per_token", "bits_per_token_stderr", "ppl_bound")


def _row_type(row: dict[str, Any]) -> str:
    return row.get("row_type") or ("reference" if row.get("spec") == "reference" else "samples")


def gap_rows(kind: str, protocol_summary: dict[str, Any], record: dict[str, Any]) -> tuple[list[dict], dict | None]:
    """The rows of one model from the protocol's ``summary.json`` and the exported folder's ``train_summary.json``;
    also the protocol's reference row."""
    rows, reference, likelihood = [], None, {}
    for row in protocol_summary["summary"]:
        if _row_type(row) == "model":
            likelihood = {name: row.get(name) for name in _LIKELIHOOD if row.get(name) is not None}
    for row in protocol_summary["summary"]:
        kind_of_row = _row_type(row)
        if kind_of_row == "reference":
            reference = {"model": "reference", "setting": "held-out rows", "params": None, "train_tokens": None,
                         "gen_ppl": row["gen_ppl_mean"], "gen_ppl_std": None, "entropy": row["entropy_mean"],
                         "entropy_std": None, "nfe": None, "num_samples": row["num_samples"]}
        elif kind_of_row == "samples":
            rows.append({
                "model": kind, "setting": row["spec"], "gamma": row.get("gamma"),
                "temperature": row.get("temperature"), "params": record["num_parameters"],
                "train_tokens": record["train_tokens"], "gen_ppl": row["gen_ppl_mean"],
                "gen_ppl_std": row["gen_ppl_std"], "entropy": row["entropy_mean"], "entropy_std": row["entropy_std"],
                "nfe": row["nfe"], "num_seeds": row["num_seeds"], "num_samples": row["num_samples"], **likelihood,
                "validation": record.get("final_validation"),
            })
    return rows, reference


def format_table(rows: list[dict[str, Any]]) -> str:
    def number(value, digits=2):
        return "" if value is None else f"{value:,.{digits}f}"

    def with_std(value, std):
        return number(value) + ("" if std is None else f" ± {std:.2f}")

    lines = ["| model | setting | params | train tokens | NFE | GenPPL | entropy | bits/token (held-out) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        bits = row.get("bits_per_token")
        if bits is not None:
            stderr = row.get("bits_per_token_stderr")
            bits = f"{bits:.2f}" + ("" if stderr is None else f" ± {stderr:.2f}")
            bits += " (exact)" if row["model"] == "ar" else " (bound)"
        cells = [row["model"], row["setting"], "" if row["params"] is None else f"{row['params']:,}",
                 "" if row["train_tokens"] is None else f"{row['train_tokens']:,}",
                 "" if row["nfe"] is None else str(row["nfe"]), with_std(row["gen_ppl"], row.get("gen_ppl_std")),
                 with_std(row["entropy"], row.get("entropy_std")), bits or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """GenPPL against entropy: CoBit's gamma frontier, the baseline's temperature frontier, the reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bitstream_diffusion.utils.atomic_io import atomic_write

    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = {"cobit": ("o-", "CoBit (gamma)", "gamma"), "ar": ("s--", "autoregressive (temperature T)", "temperature")}
    for kind, (style, label, knob) in styles.items():
        points = sorted((r for r in rows if r["model"] == kind), key=lambda r: r["entropy"])
        if not points:
            continue
        x, y = [r["entropy"] for r in points], [r["gen_ppl"] for r in points]
        line = axes.errorbar(x, y, xerr=[r["entropy_std"] or 0 for r in points],
                             yerr=[r["gen_ppl_std"] or 0 for r in points], fmt=style, capsize=3, label=label)
        for r in points:
            name = "T" if knob == "temperature" else "γ"
            axes.annotate(f"{name}={r[knob]}", (r["entropy"], r["gen_ppl"]), textcoords="offset points", xytext=(4, 4),
                          fontsize="x-small", color=line[0].get_color())
    for r in rows:
        if r["model"] == "reference":
            axes.plot(r["entropy"], r["gen_ppl"], "k*", markersize=14, label="held-out reference")
    axes.set_xlabel("token entropy (nats, mean over samples)")
    axes.set_ylabel("GenPPL")
    axes.set_yscale("log")
    axes.set_title("CoBit vs an autoregressive baseline of the same size and budget")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_write(path, "wb") as file:
        figure.savefig(file, format="png", dpi=120)


def write_summary(output_dir: Path, eval_dirs: dict[str, Path], folders: dict[str, Path], setting: Setting,
                  evaluator: str, times: dict[str, dict[str, float]], wall_s: float, quick: bool) -> dict[str, Any]:
    from bitstream_diffusion.utils.atomic_io import write_json_atomic, write_text_atomic

    rows, reference = [], None
    for kind in ("cobit", "ar"):
        protocol_summary = json.loads((eval_dirs[kind] / "summary.json").read_text(encoding="utf-8"))
        record = json.loads((folders[kind] / "train_summary.json").read_text(encoding="utf-8"))
        model_rows, model_reference = gap_rows(kind, protocol_summary, record)
        rows += model_rows
        reference = reference or model_reference
    if rows[0]["train_tokens"] != rows[-1]["train_tokens"]:
        raise RuntimeError(f"The two runs saw different token counts ({rows[0]['train_tokens']} and "
                           f"{rows[-1]['train_tokens']}): the budget must be the same.")
    if reference is not None:
        rows.append(reference)
    summary = {
        "rows": rows,
        "evaluator": evaluator,
        "num_samples": setting.num_samples,
        "seeds": list(setting.seeds),
        "setting": "quick" if quick else "full",
        "settings": setting.__dict__ | {"gammas": list(setting.gammas), "temperatures": list(setting.temperatures),
                                        "seeds": list(setting.seeds)},
        "times": times,
        "wall_s": wall_s,
        "cpu_s": round(sum(step["cpu_s"] for step in times.values()) + _own_cpu_seconds(), 1),
    }
    write_json_atomic(output_dir / "summary.json", summary)
    table = format_table(rows)
    notes = (
        f"\n\nEvaluator: {evaluator}; {setting.num_samples} samples per setting and seed; seeds {list(setting.seeds)}; "
        f"mean ± std over seeds. CoBit: {setting.inference_steps} noise levels, NFE = denoiser calls; baseline: one "
        "forward pass per generated token. Held-out bits per token: CoBit's variational bound (an upper bound) and "
        "the baseline's exact value, on the reference rows, per bert-base-uncased token. Wall "
        f"{summary['wall_s']} s, CPU {summary['cpu_s']} s (this process and its commands): "
        + ", ".join(f"{name} {t['wall_s']} s / {t['cpu_s']} s" for name, t in times.items()) + ".\n"
    )
    write_text_atomic(output_dir / "summary.md", table + notes)
    try:
        plot(rows, output_dir / "genppl_vs_entropy.png")
    except ImportError:
        logger.warning("matplotlib is not installed; no plot (pip install matplotlib).")
    print(table + notes)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    setting = resolve_setting(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if _cuda_available() else "cpu")
    began = time.perf_counter()
    evaluator = resolve_evaluator(args.evaluator)
    reference, _ = write_reference(output_dir)  # also prepares the rows both runs read
    folders = {kind: output_dir / kind / EXPORTS[kind] for kind in EXPORTS}
    lanes = {}
    for kind in ("cobit", "ar"):  # each model: train (unless already trained), then evaluate
        steps = []
        if args.retrain or not is_trained(output_dir / kind):
            steps.append((f"train {kind}", train_command(kind, output_dir, setting, args.train_arg),
                          output_dir / f"train-{kind}.log"))
        else:
            logger.info(f"{kind}: reusing the finished run in {output_dir / kind}")
        steps.append((f"evaluate {kind}", evaluate_command(kind, folders[kind], output_dir, setting,
                                                           evaluator=evaluator, device=device, reference=reference,
                                                           vlb=not args.no_vlb), output_dir / f"eval-{kind}.log"))
        for name, command, _ in steps:
            logger.info(f"{name}: {' '.join(command[1:])}")
        lanes[kind] = steps
    times = run_lanes(lanes, args.jobs)
    eval_dirs = {kind: output_dir / "eval" / kind for kind in EXPORTS}
    wall = round(time.perf_counter() - began, 1)
    return write_summary(output_dir, eval_dirs, folders, setting, evaluator, times, wall, args.quick)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
