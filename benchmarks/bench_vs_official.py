#!/usr/bin/env python
"""The pipeline against the official CoBit sampler: the same weights, seed and settings, both timed in one process;
prints one JSON object with both times, their ratio and whether the bits are identical.

    git clone https://github.com/GBATZOLIS/BitstreamDiffusion official && git -C official checkout 7c93d1d
    pip install ml-collections  # the official model's config type
    python benchmarks/bench_vs_official.py --official-repo official [--config e384-l6] [--batch-size 4] \
        [--tokens 128] [--steps 16] [--gamma 0.2] [--modes eager compiled-fullgraph] [--repeats 5] [--threads N]

The official code is imported from `--official-repo` at run time (its `DDIMSampler`, its SDT and its LM1B run
config); nothing of it is part of this repository. The run:

1. builds the official LM1B model from the repository's `configs/lm1b/continuous/rate_bits_1M_edm_weight.py` with the
   trunk of `--config` (e.g. `e384-l6`: width 384, 6 blocks, 6 heads, feed-forward 1536), draws every parameter from
   N(0, 0.02) (the adaLN layers too, so the network is not the identity) and loads the same weights into an
   `SDTModel` through `SDTModel.from_official_checkpoint` (the released-checkpoint route);
2. samples with the official `DDIMSampler` as the official evaluation calls it (entropic schedule of the repository's
   LM1B table, terminal sigma 0.08, EDM churn `S_churn = gamma * (steps - 1)` over the whole entropy window,
   `S_noise = 1.003`, the carried self-conditioning, `return_probs=True`, the global generator seeded right before
   the call), and with `BitstreamDiffusionPipeline` (the same table and churn, a `torch.Generator` with the same seed,
   `output_type="bits"`): both in float32, on the same threads;
3. times them alternately (official, then ours in each of `--modes`), so that both see the same load from other
   processes, and reports the minimum over `--repeats` rounds.

Reported: `official.seconds_min` (and `cpu_seconds_min`, the process CPU time) over all rounds; per mode
`seconds_min`, `official_seconds_min` (the official runs of the same rounds), `ratio_to_official` (ours / official in
those rounds, wall; `ratio_to_official_cpu` in CPU time), `bits_identical` (every run of the mode gave the official
bits, seed for seed), `max_abs_prob_difference`, and for compiled modes `compile_seconds` (the first call's time minus
a steady call). On a machine whose cores other processes also use, run with `--threads 1`: on a 2-core machine shared
with other jobs, the compiled model with 2 threads ran 3.8x slower than eager, with 1 thread faster.
`--official-compile` also compiles the official model the way the official evaluation does (`torch.compile(model)`)
and reports it as `official_compiled`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import COMPILE_MODES, compiling, set_compile_mode  # noqa: E402

#: Trunk sizes of the compared model: (width, blocks, heads, official feed-forward width dim_ff).
CONFIGS = {
    "tiny": (64, 2, 2, 192),
    "e384-l6": (384, 6, 6, 1536),
    "cobit-s-lm1b": (768, 12, 12, 3072),
}
OFFICIAL_CONFIG_FILE = Path("configs/lm1b/continuous/rate_bits_1M_edm_weight.py")
OFFICIAL_TABLES = Path("assets/entropy_tables/lm1b")
TERMINAL_SIGMA, S_NOISE = 0.08, 1.003


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", type=Path, required=True, help="a checkout of GBATZOLIS/BitstreamDiffusion")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="e384-l6")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="noise levels (grid points): model calls with carry")
    parser.add_argument("--gamma", type=float, default=0.2, help="per-step churn; 0 = the deterministic sampler")
    parser.add_argument("--self-conditioning", choices=["carry", "refined"], default="carry")
    parser.add_argument("--modes", nargs="+", choices=list(COMPILE_MODES), default=["eager", "compiled-fullgraph"])
    parser.add_argument("--official-compile", action="store_true", help="also time the official model compiled")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Official:
    """The official model and `DDIMSampler`, imported from a checkout of the official repository."""

    def __init__(self, repo: Path, args: argparse.Namespace):
        repo = repo.resolve()
        missing = [p for p in (OFFICIAL_CONFIG_FILE, OFFICIAL_TABLES, Path("diffusion/continuous/samplers.py"))]
        missing = [str(p) for p in missing if not (repo / p).exists()]
        if missing:
            raise SystemExit(f"--official-repo {repo} lacks {missing}; pass a BitstreamDiffusion checkout at 7c93d1d.")
        sys.path.insert(0, str(repo))
        from diffusion.continuous.processes import ContinuousForwardProcess
        from diffusion.continuous.samplers import DDIMSampler
        from ml_collections import config_dict

        # the model file alone: the `models` package also imports optional baselines this benchmark does not need
        sdt = _import_file("official_sdt", repo / "models" / "sdt.py")
        cfg = _import_file("official_lm1b_config", repo / OFFICIAL_CONFIG_FILE).get_config()
        width, blocks, heads, dim_ff = CONFIGS[args.config]
        cfg.model.embed_dim, cfg.model.n_blocks, cfg.model.n_heads, cfg.model.dim_ff = width, blocks, heads, dim_ff
        cfg.device = "cpu"
        cfg.evaluation.stochastic = config_dict.ConfigDict(
            dict(
                enabled=args.gamma > 0,
                s_churn=args.gamma * (args.steps - 1),
                s_noise=S_NOISE,
                window_mode="entropy_cdf",
                entropy_quantile_lo=0.0,
                entropy_quantile_hi=1.0,
                entropy_fallback="deterministic",
            )
        )
        self.cfg, self.tables = cfg, repo / OFFICIAL_TABLES
        self.model = sdt.SequenceVDTContinuousModel(cfg).eval()
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for parameter in self.model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        self.sampler = DDIMSampler(self.model, ContinuousForwardProcess(cfg), cfg)
        self.args = args

    def sample(self, seed: int) -> torch.Tensor:
        """Final probabilities `[B, bits]` of one official run seeded with `seed`."""
        args = self.args
        num_bits = args.tokens * int(self.cfg.data.bits_per_token)
        no_prefix = torch.zeros(args.batch_size, num_bits)
        torch.manual_seed(seed)
        _, probs = self.sampler.sample(
            args.batch_size,
            num_bits,
            conditioning_prefix_full=no_prefix,
            cond_prefix_mask=no_prefix.bool(),
            guidance_scale=0.0,
            schedule="entropic",
            num_steps=args.steps,
            entropic_blend_alpha=0.0,
            entropy_run_dir=self.tables,
            sigma_min_override=TERMINAL_SIGMA,
            sigma_max_override=None,
            sc_refresh_mode=args.self_conditioning,
            ati_eta=0.0,
            return_probs=True,
            progress=False,
        )
        return probs


def build_pipeline(official: Official, args: argparse.Namespace):
    """Our pipeline with the official model's weights (through the checkpoint converter) and the same sampler."""
    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTModel
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "release.pt"
        torch.save({"model": official.model.state_dict()}, checkpoint)
        model = SDTModel.from_official_checkpoint(checkpoint, config=official.cfg.to_dict())
    scheduler = EntropyRateScheduler.from_entropy_tables(
        official.tables,
        gamma=args.gamma,
        s_noise=S_NOISE if args.gamma > 0 else 1.0,
        terminal_sigma=TERMINAL_SIGMA,
        self_conditioning=args.self_conditioning,
    )
    pipe = BitstreamDiffusionPipeline(
        model=model, scheduler=scheduler, tokenizer=load_bert_uncased_tokenizer(), codec_layout="lm1b"
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    official = Official(args.official_repo, args)
    pipe = build_pipeline(official, args)

    def ours(seed: int) -> torch.Tensor:
        out = pipe(
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            sequence_length=args.tokens,
            generator=torch.Generator().manual_seed(seed),
            output_type="bits",
            return_probs=True,
        )
        return out.probs

    seeds = [args.seed + i for i in range(args.repeats)]
    official_probs, official_walls, official_cpus = {}, [], []
    with torch.no_grad():
        for i in range(args.warmup):
            official.sample(args.seed + 1000 + i)

    def run_official(seed: int) -> tuple[float, float]:
        probs, wall, cpu = timed(official.sample, seed)
        official_probs.setdefault(seed, probs)
        official_walls.append(wall)
        official_cpus.append(cpu)
        return wall, cpu

    modes = {}
    for mode in args.modes:
        set_compile_mode(pipe.model, mode)
        with compiling(mode):
            _, first_call, _ = timed(ours, args.seed + 1000)
        for i in range(1, args.warmup):
            ours(args.seed + 1000 + i)
        walls, cpus, same, max_diff, official_times = [], [], [], 0.0, []
        for seed in seeds:
            official_times.append(run_official(seed))
            probs, wall, cpu = timed(ours, seed)
            walls.append(wall)
            cpus.append(cpu)
            same.append(torch.equal(probs > 0.5, official_probs[seed] > 0.5))
            max_diff = max(max_diff, (probs - official_probs[seed]).abs().max().item())
        modes[mode] = {
            "seconds_min": min(walls),
            "cpu_seconds_min": min(cpus),
            "official_seconds_min": min(wall for wall, _ in official_times),  # in the same rounds
            "official_cpu_seconds_min": min(cpu for _, cpu in official_times),
            "bits_identical": all(same),
            "max_abs_prob_difference": max_diff,
            "first_call_seconds": first_call,
        }
        if COMPILE_MODES[mode] is not None:
            modes[mode]["compile_seconds"] = first_call - min(walls)
    set_compile_mode(pipe.model, "eager")

    official_entry = {"seconds_min": min(official_walls), "cpu_seconds_min": min(official_cpus)}
    for entry in modes.values():  # against the official runs of the same rounds, which saw the same load
        entry["ratio_to_official"] = entry["seconds_min"] / entry["official_seconds_min"]
        entry["ratio_to_official_cpu"] = entry["cpu_seconds_min"] / entry["official_cpu_seconds_min"]

    result = {
        "config": args.config,
        "trunk": dict(zip(("width", "blocks", "heads", "official_dim_ff"), CONFIGS[args.config])),
        "batch_size": args.batch_size,
        "tokens": args.tokens,
        "num_bits": args.tokens * pipe.bits_per_token,
        "steps": args.steps,
        "model_calls": pipe.scheduler.num_model_calls(args.steps),
        "gamma": args.gamma,
        "self_conditioning": args.self_conditioning,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "official": official_entry,
        "modes": modes,
    }
    if args.official_compile:
        torch._dynamo.reset()
        official.sampler.model = torch.compile(official.model)
        _, first_call, _ = timed(official.sample, args.seed + 1000)
        walls = [timed(official.sample, seed)[1] for seed in seeds]
        result["official_compiled"] = {"seconds_min": min(walls), "compile_seconds": first_call - min(walls)}
        official.sampler.model = official.model
    result.update(torch=torch.__version__, python=platform.python_version(), machine=platform.machine())
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(0 if main() else 1)
