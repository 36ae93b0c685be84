#!/usr/bin/env python
"""Sampling speed of `BitstreamDiffusionPipeline`: prints one JSON object.

    python benchmarks/bench_sampling.py --preset tiny|cobit-s-lm1b|cobit-s-owt|cobit-m-owt --batch-size 4 --steps 16 \
        [--dtype float32|bfloat16] [--device cpu|cuda] [--gamma 0.2] [--repeats 3] [--threads N]

The model has random weights (the adaLN-Zero layers randomised too, so the network is not the identity); speed does
not depend on the values. The scheduler uses the official entropy table of the layout when `--entropy-tables` (or
`$BITSTREAM_SHARED_DIR/entropy_tables/<lm1b|owt>`) is found, else the Karras grid: the cost per step is the same.
LM1B presets decode with the real bert-base-uncased tokenizer (`"lm1b"` layout); OWT presets with the real GPT-2
tokenizer, as the `"owt"` layout when `--code-tokenizer X.json` is given, else the `"generic"` layout (16 bits per
GPT-2 id, the same bit width and row length).

Reported: `seconds` (mean wall time of one pipeline call, decoding included), `tokens_per_s`, `samples_per_s`, `nfe`,
`model_forward_seconds` (time inside `model(...)`, measured with forward hooks; CUDA synchronised around each call),
`outside_forward_seconds` and `outside_forward_share` (everything else: noise, scheduler, sigmoid, clamping, bits ->
ids -> text).
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
    "cobit-s-lm1b": dict(layout="lm1b", preset="cobit-s-lm1b"),
    "cobit-s-owt": dict(layout="owt", preset="cobit-s-owt"),
    "cobit-m-owt": dict(layout="owt", preset="cobit-m-owt"),
}


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
    parser.add_argument("--output-type", choices=["text", "token_ids"], default="text")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (the mean is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
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


def build_pipeline(args: argparse.Namespace):
    from bitstream_diffusion import (
        BitstreamDiffusionPipeline,
        EntropyRateScheduler,
        SDTConfig,
        SDTModel,
    )
    from bitstream_diffusion.offline.assets import (
        load_bert_uncased_tokenizer,
        load_gpt2_tokenizer,
    )

    spec = PRESETS[args.preset]
    config = SDTConfig.from_preset(spec["preset"]) if "preset" in spec else SDTConfig(**spec["config"])
    torch.manual_seed(args.seed)
    model = SDTModel(config).eval()
    randomize_weights_(model, seed=args.seed)
    model.to(args.device)

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


class ForwardTimer:
    """Accumulates the wall time spent inside `module(...)` with forward pre/post hooks."""

    def __init__(self, module: torch.nn.Module, synchronize: bool):
        self.seconds = 0.0
        self.calls = 0
        self._start = 0.0
        self._sync = torch.cuda.synchronize if synchronize else (lambda: None)
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipe, schedule = build_pipeline(args)
    sequence_length = args.sequence_length or pipe.codec.num_tokens
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    synchronize = device.type == "cuda"

    def run(seed: int):
        return pipe(
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            sequence_length=sequence_length,
            generator=torch.Generator().manual_seed(seed),
            output_type=args.output_type,
            autocast_dtype=autocast_dtype,
        )

    for i in range(args.warmup):
        run(args.seed + 1000 + i)
    timer = ForwardTimer(pipe.model, synchronize)
    walls, forwards = [], []
    for i in range(args.repeats):
        timer.reset()
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = run(args.seed + i)
        if synchronize:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        forwards.append(timer.seconds)
    timer.remove()

    seconds = statistics.fmean(walls)
    forward_seconds = statistics.fmean(forwards)
    outside = seconds - forward_seconds
    result = {
        "preset": args.preset,
        "num_parameters": sum(p.numel() for p in pipe.model.parameters()),
        "batch_size": args.batch_size,
        "num_inference_steps": args.steps,
        "sequence_length_tokens": sequence_length,
        "num_bits": sequence_length * pipe.bits_per_token,
        "nfe": output.nfe,
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
        "seconds": seconds,
        "seconds_min": min(walls),
        "tokens_per_s": args.batch_size * sequence_length / seconds,
        "samples_per_s": args.batch_size / seconds,
        "model_forward_seconds": forward_seconds,
        "model_forward_calls": timer.calls,
        "outside_forward_seconds": outside,
        "outside_forward_share": outside / seconds,
        "outside_forward_ms_per_call": 1e3 * outside / max(output.nfe, 1),
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
