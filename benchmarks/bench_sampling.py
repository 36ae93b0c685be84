#!/usr/bin/env python
"""Sampling speed of `BitstreamDiffusionPipeline`, eager and compiled: prints one JSON object.

    python benchmarks/bench_sampling.py --preset tiny|e384-l6|cobit-s-lm1b|cobit-s-owt|cobit-m-owt --batch-size 4 \
        --steps 16 [--modes eager compiled compiled-fullgraph] [--dtype float32|bfloat16] [--device cpu|cuda] \
        [--gamma 0.2] [--repeats 5] [--threads N]

The model has random weights (the adaLN-Zero layers randomised too, so the network is not the identity); speed does
not depend on the values. The scheduler uses the official entropy table of the layout when `--entropy-tables` (or
`$BITSTREAM_SHARED_DIR/entropy_tables/<lm1b|owt>`) is found, else the Karras grid: the cost per step is the same.
LM1B presets decode with the real bert-base-uncased tokenizer (`"lm1b"` layout); OWT presets with the real GPT-2
tokenizer, as the `"owt"` layout when `--code-tokenizer X.json` is given, else the `"generic"` layout (16 bits per
GPT-2 id, the same bit width and row length).

Modes (`--modes`): `eager`; `compiled` = `pipe.model.compile()`; `compiled-fullgraph` =
`pipe.model.compile(fullgraph=True, dynamic=False)`; `reduce-overhead` = the same with `mode="reduce-overhead"` (CUDA
graphs; GPU only); `compiled-frozen` = `compiled-fullgraph` with inductor's weight freezing (`TORCHINDUCTOR_FREEZING=1`;
CPU inference). Each mode runs `--warmup` untimed pipeline calls (the first one compiles), then `--repeats` timed
calls with the same seeds in every mode. Reported at the top level:

* `model_gflop_per_call`: FLOPs of one denoiser call (`torch.utils.flop_counter.FlopCounterMode`: matmuls and
  attention, 2 per multiply-add; elementwise work is not counted), and `sampler_gflop` = that x `nfe`.

and per mode (times are minima over the repeats: on a shared machine other processes only ever make a run slower):

* `seconds_min` / `seconds_median`: wall time of one whole pipeline call (noise, every step, decoding);
  `cpu_seconds_min`: CPU time of the process for it (all threads; steadier when other processes share the cores);
* `samples_per_s`, `tokens_per_s`: from `seconds_min`;
* `model_seconds`, `model_ms_per_call`: time inside the denoiser calls of the fastest run, measured around each
  call from outside (around the compiled function in compiled modes); on CUDA from separate runs with a sync
  before and after each call, so that the whole-run times above carry no extra syncs;
* `outside_share`, `outside_ms_per_call`: everything else (scheduler, churn noise, sigmoid, clamping, bits -> ids ->
  text) as a share of the run and per call; `outside_share_cpu` is the same split in CPU time;
* `model_gflops` / `model_fraction_of_matmul_peak`: the FLOP rate of the denoiser calls, and over
  `matmul_peak_gflops`, the best rate of a large square `torch.mm` in the run's dtype on the same threads/device,
  measured between the timed runs of this mode; `sampler_gflops` / `sampler_fraction_of_matmul_peak`: the same for
  the whole run; on the CPU `model_fraction_of_matmul_peak_cpu_time` is the same in CPU time (forward calls and
  peak both timed with the process clock): with `--threads 1` it is the steadier figure where other processes share
  the cores;
* `first_call_seconds` (the first call, which compiles) and `compile_seconds` = `first_call_seconds` - `seconds_min`
  (compiled modes); `graphs_compiled` and `recompiles_during_timed_runs` (from `torch._dynamo`'s counters: 0 means a
  255-step run never recompiles, whatever sigma is);
* `bits_equal_to_eager`: whether every timed run gave the eager run's bits for the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flops import MatmulPeak, ModelCallTimer, count_flops, synchronize  # noqa: E402

PRESETS = {
    "tiny": dict(
        layout="lm1b",
        config=dict(
            bits_per_token=15,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            content_dim=16,
            head_hidden_size=32,
            max_position_embeddings=128,
        ),
    ),
    # The E384/L6 model of the comparison with the official sampler: CoBit-S LM1B with a narrower, shallower trunk.
    "e384-l6": dict(
        layout="lm1b",
        preset="cobit-s-lm1b",
        overrides=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1024),
    ),
    "cobit-s-lm1b": dict(layout="lm1b", preset="cobit-s-lm1b"),
    "cobit-s-owt": dict(layout="owt", preset="cobit-s-owt"),
    "cobit-m-owt": dict(layout="owt", preset="cobit-m-owt"),
}

#: `--modes` -> the keywords of `pipe.model.compile(...)` (None: eager).
COMPILE_MODES: dict[str, dict | None] = {
    "eager": None,
    "compiled": {},
    "compiled-fullgraph": dict(fullgraph=True, dynamic=False),
    "reduce-overhead": dict(mode="reduce-overhead", fullgraph=True, dynamic=False),
    "compiled-frozen": dict(fullgraph=True, dynamic=False),
}
#: `--modes` -> inductor settings in force while the first call compiles. `compiled-frozen` is inductor's weight
#: freezing, what `TORCHINDUCTOR_FREEZING=1` sets for a whole program: the weights become constants of the graph,
#: prepacked for oneDNN's matrix products on CPU (inference only: weights changed afterwards are not seen).
#: `torch.compile(options={"freezing": True})` did not take effect in torch 2.13 (the time of `compiled`), so the
#: setting is patched around the call that compiles.
INDUCTOR_SETTINGS: dict[str, dict] = {"compiled-frozen": {"freezing": True}}


def compiling(mode: str):
    """The context of the first call in `mode`, the one that compiles (see `INDUCTOR_SETTINGS`)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(INDUCTOR_SETTINGS.get(mode, {}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16, help="num_inference_steps (noise levels)")
    parser.add_argument("--sequence-length", type=int, default=None, help="tokens per sample (default: the preset's)")
    parser.add_argument("--gamma", type=float, default=0.2, help="per-step churn (needs the entropy table or Karras)")
    parser.add_argument("--self-conditioning", choices=["carry", "refined", "none"], default="carry")
    parser.add_argument("--solver", choices=["euler", "heun"], default="euler")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16 = autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-type", choices=["text", "token_ids", "bits"], default="text")
    parser.add_argument(
        "--modes", nargs="+", choices=list(COMPILE_MODES), default=["eager", "compiled", "compiled-fullgraph"]
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (the first one compiles)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--peak-size", type=int, default=None, help="side of the peak matmul (CPU 2048, GPU 8192)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entropy-tables", type=Path, default=None, help="an official entropy-table folder")
    parser.add_argument("--code-tokenizer", type=Path, default=None, help="official OWT code tokenizer JSON")
    return parser.parse_args(argv)


def randomize_weights_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Re-draw every parameter from N(0, std) (biases too), so the zero-initialised adaLN layers do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def default_tables_dir(layout: str) -> Path | None:
    shared = Path(os.environ.get("BITSTREAM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    path = shared / "entropy_tables" / ("lm1b" if layout == "lm1b" else "owt")
    return path if (path / "entropy_pdf.pt").is_file() else None


def build_model(preset: str, seed: int = 0):
    """An `SDTModel` of `preset` with random weights (eval mode, on the CPU)."""
    from bitstream_diffusion import SDTConfig, SDTModel

    spec = PRESETS[preset]
    if "preset" in spec:
        config = SDTConfig.from_preset(spec["preset"], **spec.get("overrides", {}))
    else:
        config = SDTConfig(**spec["config"])
    torch.manual_seed(seed)
    model = SDTModel(config).eval()
    randomize_weights_(model, seed=seed)
    return model


def build_pipeline(args: argparse.Namespace):
    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

    spec = PRESETS[args.preset]
    model = build_model(args.preset, args.seed).to(args.device)
    tables = args.entropy_tables or default_tables_dir(spec["layout"])
    scheduler_kwargs = dict(gamma=args.gamma, self_conditioning=args.self_conditioning, solver=args.solver)
    if tables is not None:
        scheduler = EntropyRateScheduler.from_entropy_tables(tables, **scheduler_kwargs)
    else:
        scheduler = EntropyRateScheduler(
            noise_schedule="karras", churn_window_mode="sigma", churn_window=(0.0, 80.0), **scheduler_kwargs
        )

    code_tokenizer = None
    if spec["layout"] == "lm1b":
        tokenizer, layout = load_bert_uncased_tokenizer(), "lm1b"
    elif args.code_tokenizer is not None:
        from bitstream_diffusion.codecs import CodeTokenizer

        tokenizer, layout = load_gpt2_tokenizer(), "owt"
        code_tokenizer = CodeTokenizer.from_official_files(args.code_tokenizer)
    else:
        tokenizer, layout = load_gpt2_tokenizer(), "generic"
    pipe = BitstreamDiffusionPipeline(
        model=model, scheduler=scheduler, tokenizer=tokenizer, code_tokenizer=code_tokenizer, codec_layout=layout
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, ("entropy:" + str(tables)) if tables is not None else "karras"


def dynamo_graphs() -> int:
    """Graphs `torch._dynamo` has compiled in this process (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def set_compile_mode(model: torch.nn.Module, mode: str) -> None:
    """Put `model` in `mode` (see `COMPILE_MODES`), forgetting any earlier compilation."""
    torch._dynamo.reset()
    model._compiled_call_impl = None  # what `model.compile()` sets; None is the eager call
    if COMPILE_MODES[mode] is not None:
        model.compile(**COMPILE_MODES[mode])


def measure_mode(pipe, mode: str, run, args: argparse.Namespace, flops_per_call: int, eager_bits: dict) -> dict:
    """Warm up, then time `args.repeats` runs of `run(seed)` in `mode`; see the module docstring for the fields."""
    device = torch.device(args.device)
    set_compile_mode(pipe.model, mode)
    graphs_before = dynamo_graphs()  # the counters outlive `torch._dynamo.reset()`
    synchronize(device)
    start = time.perf_counter()
    with compiling(mode):
        run(args.seed + 1000)
    synchronize(device)
    first_call = time.perf_counter() - start
    for i in range(1, args.warmup):
        run(args.seed + 1000 + i)
    graphs_after_warmup = dynamo_graphs()

    peak_dtype = torch.bfloat16 if args.dtype == "bfloat16" and device.type == "cuda" else torch.float32
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    peak = MatmulPeak(peak_size, peak_dtype, device)
    peak.sample(2)
    cpu_peak = MatmulPeak(peak_size, peak_dtype, device, clock=time.process_time) if device.type == "cpu" else None
    split_apart = device.type == "cuda"  # the per-call syncs of the split must not slow the whole-run timings
    walls, cpus, model_walls, model_cpus, same_bits = [], [], [], [], []
    with ModelCallTimer(pipe.model) as timer:
        for i in range(args.repeats):
            seed = args.seed + i
            peak.sample()
            if cpu_peak is not None:
                cpu_peak.sample()
            if split_apart:  # a run with a sync around every model call, for the split only
                timer.reset()
                timer.device = device
                run(seed)
                split = (timer.wall_seconds, timer.cpu_seconds)
                timer.device = None
            timer.reset()
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            output = run(seed)
            synchronize(device)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            if not split_apart:
                split = (timer.wall_seconds, timer.cpu_seconds)
            model_walls.append(split[0])
            model_cpus.append(split[1])
            if seed in eager_bits:
                same_bits.append(torch.equal(eager_bits[seed], output.bits))
            if mode == "eager":
                eager_bits[seed] = output.bits

    nfe = output.nfe
    fastest = min(range(len(walls)), key=walls.__getitem__)
    fastest_cpu = min(range(len(cpus)), key=cpus.__getitem__)
    seconds = walls[fastest]
    model_seconds = model_walls[fastest]
    outside = seconds - model_seconds
    batch, tokens = args.batch_size, args.sequence_length
    entry = {
        "seconds_min": seconds,
        "seconds_median": statistics.median(walls),
        "cpu_seconds_min": cpus[fastest_cpu],
        "samples_per_s": batch / seconds,
        "tokens_per_s": batch * tokens / seconds,
        "model_seconds": model_seconds,
        "model_ms_per_call": 1e3 * model_seconds / nfe,
        "outside_seconds": outside,
        "outside_share": outside / seconds,
        "outside_share_median": statistics.median((w - m) / w for w, m in zip(walls, model_walls)),
        "outside_ms_per_call": 1e3 * outside / nfe,
        "outside_share_cpu": (cpus[fastest_cpu] - model_cpus[fastest_cpu]) / cpus[fastest_cpu],
        "model_gflops": flops_per_call * nfe / model_seconds / 1e9,
        "model_fraction_of_matmul_peak": flops_per_call * nfe / model_seconds / 1e9 / peak.best_gflops,
        "sampler_gflops": flops_per_call * nfe / seconds / 1e9,
        "sampler_fraction_of_matmul_peak": flops_per_call * nfe / seconds / 1e9 / peak.best_gflops,
        "matmul_peak_gflops": peak.best_gflops,
        "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."),
        "first_call_seconds": first_call,
        "graphs_compiled": graphs_after_warmup - graphs_before,
        "recompiles_during_timed_runs": dynamo_graphs() - graphs_after_warmup,
        "bits_equal_to_eager": all(same_bits) if same_bits else None,
    }
    if cpu_peak is not None:  # the same in CPU time: steadier where other processes share the cores
        model_cpu = model_cpus[fastest_cpu]
        entry["model_fraction_of_matmul_peak_cpu_time"] = flops_per_call * nfe / model_cpu / 1e9 / cpu_peak.best_gflops
    if COMPILE_MODES[mode] is not None:
        entry["compile_seconds"] = first_call - seconds
    return entry


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipe, schedule = build_pipeline(args)
    args.sequence_length = args.sequence_length or pipe.codec.num_tokens
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None

    def run(seed: int, steps: int = args.steps, output_type: str = args.output_type):
        return pipe(
            batch_size=args.batch_size,
            num_inference_steps=steps,
            sequence_length=args.sequence_length,
            generator=torch.Generator().manual_seed(seed),
            output_type=output_type,
            autocast_dtype=autocast_dtype,
        )

    probe = run(args.seed, steps=2, output_type="bits")
    flops_per_call = count_flops(lambda: run(args.seed, steps=2, output_type="bits")) // probe.nfe
    nfe = pipe.scheduler.num_model_calls(args.steps)
    eager_bits: dict[int, torch.Tensor] = {}
    modes = {mode: measure_mode(pipe, mode, run, args, flops_per_call, eager_bits) for mode in args.modes}
    set_compile_mode(pipe.model, "eager")

    result = {
        "preset": args.preset,
        "num_parameters": sum(p.numel() for p in pipe.model.parameters()),
        "batch_size": args.batch_size,
        "num_inference_steps": args.steps,
        "sequence_length_tokens": args.sequence_length,
        "num_bits": args.sequence_length * pipe.bits_per_token,
        "nfe": nfe,
        "gamma": args.gamma,
        "self_conditioning": args.self_conditioning,
        "solver": args.solver,
        "schedule": schedule,
        "codec_layout": pipe.config.codec_layout,
        "output_type": args.output_type,
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "model_gflop_per_call": flops_per_call / 1e9,
        "sampler_gflop": flops_per_call * nfe / 1e9,
        "modes": modes,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(0 if main() else 1)
