#!/usr/bin/env python
"""One command that checks the GPU path and measures it, in under 8 minutes on one GPU; writes one JSON file.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--golden-dir ../shared/golden] [--budget-seconds 450]
    python benchmarks/gpu_check.py --dry-run [--out dry.json]   # the same code paths on the CPU, tiny, ~1 minute

Sections of the JSON (every number says its unit in its name; `status` is `ok`, `skipped`, `oom`, `timed_out` or
`error` for every setting, with the reason):

* `environment`: torch/CUDA versions, the GPU, whether flash-attn is installed, the data-sheet dense bf16 peak of
  the GPU (`known_bf16_peak_tflops`, from a table of common GPUs) and the measured peak of a large bf16 `torch.mm`
  (`measured_bf16_matmul_tflops`). MFU below divides by the data-sheet peak when the GPU is in the table, else by
  the measured one (`mfu_peak_source` says which).
* `golden_bf16_vs_fp32`: the golden tiny models (`--golden-dir`: `model/lm1b_tiny`, `model/owt_tiny` and the official
  sampler runs `sampler/*.json`), sampled with the golden sampler settings on the GPU in float32 and in bf16
  (autocast over float32 weights, and bf16 weights), same seeds: the share of equal bits and tokens. Also
  `fp32_reproduces_golden_bits`: the GPU's float32 run of each golden LM1B run against the official CPU bits.
* `throughput`: CoBit-S LM1B (128 tokens) and CoBit-S OWT (1024 tokens) with random weights in bf16 (the matched
  filter, sigmoid and sampler stay float32), at batch 64/256/512, `eager`, `compiled`
  (`pipe.model.compile(fullgraph=True, dynamic=False)`) and `reduce-overhead` (the same with CUDA graphs):
  `samples_per_s`, `tokens_per_s` (whole pipeline call of `--steps` levels, to token ids), `ms_per_model_call`,
  `tflops` and `mfu` (denoiser FLOPs from `torch.utils.flop_counter` x calls / wall time / peak), `peak_memory_gib`
  (`torch.cuda.max_memory_allocated`), `first_call_seconds`/`compile_seconds`, `speedup_vs_eager`.
* `attention`: sdpa against flash-attention-2 (when `flash_attn` is installed) on CoBit-S LM1B at batch 64 in bf16:
  the largest logit difference of one forward, the share of equal bits of a sampler run, and the forward time of each.
* `targets`: the issue's GPU targets read off the measurements (LM1B batch 512: MFU >= 0.45 and >= 1.5x the eager
  bf16 throughput).

Time: every setting runs under its own cap (`--setting-cap-seconds`; a compilation that runs past it is abandoned
and recorded as `timed_out`) and the whole run under `--budget-seconds`; settings that no longer fit are recorded as
skipped. Settings run in order of importance: the golden check, attention, then both models at batch 512 (the
target), 64 and 256. An out-of-memory error is caught per setting, recorded, and the next setting runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _golden_sampling as golden_sampling  # noqa: E402
from _flops import MatmulPeak, count_flops, known_bf16_peak_tflops, synchronize  # noqa: E402
from bench_sampling import PRESETS, build_model, default_tables_dir, set_compile_mode  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_PLAN = dict(
    presets=("cobit-s-lm1b", "cobit-s-owt"),
    batches=(512, 64, 256),  # 512 first: the target setting
    modes=("eager", "compiled", "reduce-overhead"),
    steps=8,
    repeats=2,
    golden_seeds=4,
    golden_batch=64,
    golden_runs=golden_sampling.GOLDEN_RUNS,
    attention_batch=64,
    peak_size=8192,
)
DRY_RUN_PLAN = dict(
    presets=("tiny",),
    batches=(2,),
    modes=("eager", "compiled", "reduce-overhead"),
    steps=2,
    repeats=1,
    golden_seeds=1,
    golden_batch=2,
    golden_runs=("ddim_stoch_carry",),
    attention_batch=2,
    peak_size=256,
)
TARGET_MFU, TARGET_SPEEDUP = 0.45, 1.5
#: This check's modes -> `bench_sampling.COMPILE_MODES` (compiled = one graph, static shapes; then with CUDA graphs).
COMPILE_MODE_OF = {"eager": "eager", "compiled": "compiled-fullgraph", "reduce-overhead": "reduce-overhead"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file to write")
    parser.add_argument("--golden-dir", type=Path, default=REPO_ROOT.parent / "shared" / "golden")
    parser.add_argument(
        "--entropy-tables-dir", type=Path, default=None, help="official entropy tables (default: next to golden)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="the whole run (default 7.5 minutes)")
    parser.add_argument("--setting-cap-seconds", type=float, default=75.0, help="one setting, compilation included")
    parser.add_argument("--steps", type=int, default=None, help="noise levels per timed pipeline call")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, one batch, on any device (CPU: ~1 min)")
    return parser.parse_args(argv)


class SettingTimeout(BaseException):
    """A setting ran past its cap (a `BaseException`, so that no `except Exception` inside torch swallows it)."""


class SettingSkipped(Exception):
    """A setting that cannot run here (the message says why)."""


class Budget:
    """The whole run's time budget and the cap of each setting."""

    def __init__(self, total_seconds: float, setting_seconds: float):
        self.start, self.total, self.setting = time.monotonic(), total_seconds, setting_seconds

    def remaining(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def run(self, fn: Callable[[], dict], cap: float | None = None) -> dict:
        """`fn()` with `status` added, under a cap of `min(cap or setting cap, remaining budget)` seconds."""
        if self.remaining() < 1:
            return {"status": "skipped", "reason": f"out of the {self.total:.0f} s budget"}
        cap = min(cap or self.setting, self.remaining())
        alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        if alarm:
            previous = signal.signal(signal.SIGALRM, _raise_timeout)
            signal.setitimer(signal.ITIMER_REAL, cap)
        start = time.monotonic()
        try:
            result = {"status": "ok", **fn()}
        except SettingSkipped as reason:
            result = {"status": "skipped", "reason": str(reason)}
        except SettingTimeout:
            torch._dynamo.reset()  # a compilation cut short leaves nothing half-built behind
            result = {"status": "timed_out", "reason": f"ran past its {cap:.0f} s cap"}
        except torch.OutOfMemoryError as error:
            result = {"status": "oom", "reason": str(error).splitlines()[0][:300]}
        except Exception as error:  # recorded, so that one failure does not cost the other settings
            result = {"status": "error", "reason": f"{type(error).__name__}: {error}"[:500]}
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        if result["status"] != "ok":
            free_memory()
        result["elapsed_seconds"] = round(time.monotonic() - start, 3)
        return result


def _raise_timeout(signum, frame):
    raise SettingTimeout()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def flash_attn_version() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    import flash_attn

    return getattr(flash_attn, "__version__", "unknown")


# ------------------------------------------------------------------------------------------------ environment
def environment(device: torch.device, plan: dict) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": str(device),
        "flash_attn": flash_attn_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            compute_capability=f"{properties.major}.{properties.minor}",
            memory_gib=round(properties.total_memory / 2**30, 2),
            bf16_supported=torch.cuda.is_bf16_supported(),
            known_bf16_peak_tflops=known_bf16_peak_tflops(properties.name),
        )
    peak = MatmulPeak(plan["peak_size"], torch.bfloat16, device)
    peak.sample(3 if device.type == "cuda" else 1)
    info["measured_bf16_matmul_tflops"] = peak.best_gflops / 1e3
    return info


def mfu_peak(env: dict) -> tuple[float, str]:
    """The peak MFU divides by (TFLOP/s) and where it comes from."""
    if env.get("known_bf16_peak_tflops"):
        return env["known_bf16_peak_tflops"], "data sheet"
    return env["measured_bf16_matmul_tflops"], "measured bf16 matmul"


# ------------------------------------------------------------------------------------------------ golden models
def golden_check(args: argparse.Namespace, plan: dict, device: torch.device, budget: Budget) -> dict:
    golden_dir, tables_dir = args.golden_dir, args.entropy_tables_dir or args.golden_dir.parent / "entropy_tables"
    if not (golden_dir / "model").is_dir() or not tables_dir.is_dir():
        return {"status": "skipped", "reason": f"no golden data at {golden_dir} (or tables at {tables_dir})"}
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

    tokenizers = {"lm1b_tiny": load_bert_uncased_tokenizer(), "owt_tiny": load_gpt2_tokenizer()}
    results = {"golden_dir": str(golden_dir), "seeds": plan["golden_seeds"], "batch_size": plan["golden_batch"]}
    for run_name in plan["golden_runs"]:
        run = golden_sampling.golden_run_settings(golden_dir, run_name)
        for model_name in golden_sampling.GOLDEN_MODELS:
            pipe = golden_sampling.golden_pipeline(golden_dir, tables_dir, model_name, run, tokenizers[model_name])
            for precision in golden_sampling.PRECISIONS[1:]:
                seeds = range(run["seed"], run["seed"] + plan["golden_seeds"])
                results[f"{model_name}/{run_name}/{precision}"] = budget.run(
                    lambda: golden_sampling.agreement(
                        pipe, run, precision, seeds, plan["golden_batch"], run["tokens"], device
                    )
                )
            if model_name == "lm1b_tiny":
                key = f"{model_name}/{run_name}/fp32_reproduces_golden_bits"
                results[key] = budget.run(lambda: reproduces_golden(pipe, golden_dir, run_name, run, device))
    return results


def reproduces_golden(pipe, golden_dir: Path, run_name: str, run: dict, device: torch.device) -> dict:
    """The device's float32 run of a golden LM1B run against the official CPU run's bits (same seed and batch)."""
    reference = torch.load(golden_dir / "sampler" / f"{run_name}.pt", map_location="cpu", weights_only=True)
    pipe.to(device)
    out = pipe(
        batch_size=run["batch_size"],
        num_inference_steps=run["num_inference_steps"],
        sequence_length=run["tokens"],
        generator=torch.Generator().manual_seed(run["seed"]),
        output_type="probs",
    )
    return {
        "bits_equal": bool(torch.equal(out.bits, reference["final_bits"])),
        "bit_agreement": (out.bits == reference["final_bits"]).float().mean().item(),
        "max_abs_prob_difference": (out.probs - reference["final_probs"]).abs().max().item(),
    }


# ------------------------------------------------------------------------------------------------ throughput
def make_pipeline(preset: str, device: torch.device, dtype: torch.dtype):
    """A pipeline of `preset` with random weights in `dtype` on `device` (gamma 0.2, the layout's entropy table)."""
    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

    layout = PRESETS[preset]["layout"]
    tables = default_tables_dir(layout)
    if tables is not None:
        scheduler = EntropyRateScheduler.from_entropy_tables(tables, gamma=0.2)
    else:
        scheduler = EntropyRateScheduler(
            noise_schedule="karras", churn_window_mode="sigma", churn_window=(0.0, 80.0), gamma=0.2
        )
    tokenizer = load_bert_uncased_tokenizer() if layout == "lm1b" else load_gpt2_tokenizer()
    model = build_model(preset).to(device=device, dtype=dtype)
    pipe = BitstreamDiffusionPipeline(
        model=model, scheduler=scheduler, tokenizer=tokenizer, codec_layout="lm1b" if layout == "lm1b" else "generic"
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure_throughput(
    pipe, flops_per_sample: float, batch: int, mode: str, plan: dict, steps: int, peak_tflops: float, dry_run: bool
) -> dict:
    """One throughput setting: warm up (compiling), then the fastest of `plan["repeats"]` timed pipeline calls."""
    device = pipe.model.device
    if mode == "reduce-overhead" and device.type != "cuda":
        raise SettingSkipped("CUDA graphs need a CUDA device")
    if dry_run and mode != "eager":  # the compile path without inductor's minutes on a CPU
        torch._dynamo.reset()
        pipe.model._compiled_call_impl = None
        pipe.model.compile(backend="eager", fullgraph=True, dynamic=False)
    else:
        set_compile_mode(pipe.model, COMPILE_MODE_OF[mode])
    tokens = pipe.codec.num_tokens

    def run(seed: int):
        return pipe(
            batch_size=batch,
            num_inference_steps=steps,
            sequence_length=tokens,
            generator=torch.Generator(device=device).manual_seed(seed),
            output_type="token_ids",
        )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    output = run(1000)
    synchronize(device)
    first_call = time.perf_counter() - start
    if mode == "reduce-overhead":
        run(1001)  # the first replays record the CUDA graphs
    seconds = []
    for i in range(plan["repeats"]):
        synchronize(device)
        start = time.perf_counter()
        run(i)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    best, nfe = min(seconds), output.nfe
    tflops = flops_per_sample * batch * nfe / best / 1e12
    result = {
        "batch_size": batch,
        "steps": steps,
        "model_calls": nfe,
        "seconds_min": best,
        "samples_per_s": batch / best,
        "tokens_per_s": batch * tokens / best,
        "ms_per_model_call": 1e3 * best / nfe,
        "tflops": tflops,
        "mfu": tflops / peak_tflops,
        "first_call_seconds": first_call,
    }
    if mode != "eager":
        result["compile_seconds"] = first_call - best
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def throughput(plan: dict, device: torch.device, env: dict, budget: Budget, steps: int, dry_run: bool) -> dict:
    """Every preset at every batch size in every mode; the batch sizes in the plan's order (the target one first)."""
    peak_tflops, peak_source = mfu_peak(env)
    results = {"dtype": "bfloat16", "mfu_peak_tflops": peak_tflops, "mfu_peak_source": peak_source}
    setups = {}
    for preset in plan["presets"]:

        def build(preset=preset):
            pipe = make_pipeline(preset, device, torch.bfloat16)
            probe = dict(batch_size=1, num_inference_steps=2, output_type="token_ids")
            flops = count_flops(lambda: pipe(generator=torch.Generator().manual_seed(0), **probe))
            setups[preset] = (pipe, flops / pipe.scheduler.num_model_calls(2))  # FLOPs per sample and call
            return {"gflop_per_sample_per_call": setups[preset][1] / 1e9, "tokens": pipe.codec.num_tokens}

        results[preset] = {"setup": budget.run(build)}
    for batch in plan["batches"]:
        for preset, (pipe, flops) in setups.items():
            measured = results[preset]
            for mode in plan["modes"]:
                measured[f"batch{batch}/{mode}"] = budget.run(
                    lambda: measure_throughput(pipe, flops, batch, mode, plan, steps, peak_tflops, dry_run)
                )
            eager = measured[f"batch{batch}/eager"]
            for mode in plan["modes"][1:]:
                entry = measured[f"batch{batch}/{mode}"]
                if entry["status"] == "ok" and eager["status"] == "ok":
                    entry["speedup_vs_eager"] = entry["samples_per_s"] / eager["samples_per_s"]
            set_compile_mode(pipe.model, "eager")
            free_memory()
    return results


# ------------------------------------------------------------------------------------------------ attention
def attention_check(plan: dict, device: torch.device, budget: Budget, steps: int) -> dict:
    if flash_attn_version() is None or device.type != "cuda":
        return {"status": "skipped", "reason": "flash-attention-2 needs a CUDA GPU and the flash_attn package"}

    def compare() -> dict:
        pipe = make_pipeline("cobit-s-lm1b", device, torch.bfloat16)
        model, batch = pipe.model, plan["attention_batch"]
        generator = torch.Generator(device="cpu").manual_seed(0)
        num_bits = pipe.codec.num_tokens * pipe.bits_per_token
        inputs = (
            (torch.randint(0, 2, (batch, num_bits), generator=generator) + torch.randn(batch, num_bits)).to(device),
            torch.full((batch,), 0.7, device=device),
            torch.rand(batch, num_bits, generator=generator).to(device),
        )
        logits, bits, forward_ms = {}, {}, {}
        for implementation in ("sdpa", "flash_attention_2"):
            model.set_attn_implementation(implementation)
            # bf16 weights take float32 bits under autocast, as the pipeline runs them
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                logits[implementation] = model(*inputs).logits.float()
                times = []
                for _ in range(5):
                    synchronize(device)
                    start = time.perf_counter()
                    model(*inputs)
                    synchronize(device)
                    times.append(time.perf_counter() - start)
            forward_ms[implementation] = 1e3 * min(times)
            run = dict(batch_size=batch, num_inference_steps=steps, output_type="bits")
            bits[implementation] = pipe(generator=torch.Generator().manual_seed(0), **run).bits
        model.set_attn_implementation("sdpa")
        return {
            "batch_size": batch,
            "max_abs_logit_difference": (logits["sdpa"] - logits["flash_attention_2"]).abs().max().item(),
            "bit_agreement_of_a_run": (bits["sdpa"] == bits["flash_attention_2"]).float().mean().item(),
            "forward_ms_sdpa": forward_ms["sdpa"],
            "forward_ms_flash_attention_2": forward_ms["flash_attention_2"],
        }

    return budget.run(compare)


# ------------------------------------------------------------------------------------------------ summary
def targets(results: dict, plan: dict) -> dict:
    """The issue's GPU targets on the first preset at the largest batch (CoBit-S LM1B at 512 in a full run)."""
    preset, batch = plan["presets"][0], max(plan["batches"])
    measured = results.get("throughput", {}).get(preset, {})
    eager = measured.get(f"batch{batch}/eager", {})
    compiled = [measured.get(f"batch{batch}/{mode}", {}) for mode in plan["modes"][1:]]
    compiled = [entry for entry in compiled if entry.get("status") == "ok"]
    if not compiled or eager.get("status") != "ok":
        return {"status": "skipped", "reason": f"{preset} at batch {batch} was not measured eager and compiled"}
    best = max(compiled, key=lambda entry: entry["samples_per_s"])
    speedup = best["samples_per_s"] / eager["samples_per_s"]
    return {
        "status": "ok",
        "preset": preset,
        "batch_size": batch,
        "best_compiled_mfu": best["mfu"],
        "mfu_target": TARGET_MFU,
        "mfu_met": best["mfu"] >= TARGET_MFU,
        "best_compiled_speedup_vs_eager_bf16": speedup,
        "speedup_target": TARGET_SPEEDUP,
        "speedup_met": speedup >= TARGET_SPEEDUP,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    plan = DRY_RUN_PLAN if args.dry_run else FULL_PLAN
    steps = args.steps or plan["steps"]
    device = torch.device(args.device)
    budget = Budget(args.budget_seconds, args.setting_cap_seconds)
    results: dict = {
        "about": __doc__.split("\n\n")[0].strip(),
        "dry_run": args.dry_run,
        "budget_seconds": args.budget_seconds,
        "setting_cap_seconds": args.setting_cap_seconds,
    }
    results["environment"] = budget.run(lambda: environment(device, plan), cap=60)
    results["golden_bf16_vs_fp32"] = golden_check(args, plan, device, budget)
    results["attention"] = attention_check(plan, device, budget, steps)
    if results["environment"]["status"] == "ok":
        results["throughput"] = throughput(plan, device, results["environment"], budget, steps, args.dry_run)
    results["targets"] = targets(results, plan)
    results["elapsed_seconds"] = round(time.monotonic() - budget.start, 1)
    from bitstream_diffusion.utils.atomic_io import write_json_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(0 if main() else 1)
