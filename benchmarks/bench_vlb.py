#!/usr/bin/env python
"""How the standard error of the variational bound falls with K (draws per row) and N (rows): prints one JSON object.

    python benchmarks/bench_vlb.py [--rows 8 16 32 64] [--ks 1 2 4 8 16] [--tokens 32] [--train-steps 200] \
        [--sigma-sampling log-uniform|log-normal] [--repeats 3] [--seed 0] [--threads N] [--device cpu|cuda]

The data are real LM1B-format rows: Wikipedia summaries (the offline ``wiki-summaries`` asset) packed with the LM1B
recipe (bert-base-uncased, lines joined by ``[SEP]``, ``--tokens`` tokens per row, 15 bits per token). A tiny SDT is
trained for ``--train-steps`` steps on the first rows (the CoBit loss, no self-conditioning), so its denoising error
has a realistic shape; the bound is then estimated on the last rows, held out. With ``--train-steps 0`` the model is
the official initialisation, the matched filter alone.

For each K and each N (the first N held-out rows) the bound is computed ``--repeats`` times with different seeds.
Reported per (K, N): ``vlb_bpd`` (mean over repeats), ``stderr`` (the reported ``vlb_bpd_stderr``: rows and
Monte-Carlo noise together), ``mc_stderr`` (the reported Monte-Carlo part, K >= 2), ``observed_std_over_seeds``
(the spread of ``vlb_bpd`` between seeds on the same rows: the Monte-Carlo error actually seen), ``model_rows``
(the rows the denoiser processed: N * (K + 1)) and ``seconds``. ``variance_split`` estimates, per row and in
(bits per bit)^2, the spread between rows (``between_rows``) and the Monte-Carlo variance of one draw
(``one_draw``), from the largest K and N; ``recommended_k`` is ``sqrt(one_draw / between_rows)`` (``null`` when no
spread between rows is measurable, i.e. the Monte-Carlo noise dominates).

Which K to pick. With N rows and K draws, ``stderr^2 ~ (between_rows + one_draw / K) / N`` and the cost is
``N * (K + 1)`` denoiser rows (one reconstruction call per row, K diffusion draws). Two cases:

* held-out rows are plentiful (the usual case): for a fixed cost the error is smallest at
  ``K ~ sqrt(one_draw / between_rows)`` (``recommended_k``), but the gain over K = 1 (the official default) is at
  most a factor sqrt(2) in standard error, because the reconstruction call is the only per-row overhead. Keep K
  small (1 to 4) and add rows;
* rows are few (a small validation split): the error falls as ``1 / sqrt(K)`` until it reaches the floor
  ``sqrt(between_rows / N)`` set by the rows themselves; raise K until ``mc_stderr`` is well below that floor.

On short rows and a lightly trained model (the defaults) the Monte-Carlo noise of one draw is far larger than the
spread between rows, so ``stderr`` falls like ``1 / sqrt(K * N)``. To compare two checkpoints, use the same rows
and the same seed for both and look at the per-row differences (``VLBOutput.vlb_bpd_per_row``).

The log-uniform sampling (official) puts as many draws at sigma = 50 as at sigma = 0.1, where little happens; the
log-normal one concentrates them where the denoising error is large and usually has a smaller ``one_draw``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import PRESETS  # noqa: E402

#: The tiny model of `bench_sampling.py`, its position table sized per run below.
TINY_CONFIG = {key: value for key, value in PRESETS["tiny"]["config"].items() if key != "max_position_embeddings"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64], help="held-out row counts N")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="draws per row K")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per row (LM1B uses 128)")
    parser.add_argument("--train-steps", type=int, default=100, help="training steps before measuring (0: none)")
    parser.add_argument("--sigma-sampling", choices=["log-uniform", "log-normal"], default="log-uniform")
    parser.add_argument("--repeats", type=int, default=3, help="seeds per (K, N)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per batch of compute_vlb")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def lm1b_rows(num_tokens: int) -> torch.Tensor:
    """Real LM1B-format bit rows ``[R, num_tokens * 15]`` from the packaged Wikipedia summaries."""
    from bitstream_diffusion.codecs import TextBitCodec, pack_lm1b_lines
    from bitstream_diffusion.offline import load_bert_uncased_tokenizer, load_wiki_summaries

    tokenizer = load_bert_uncased_tokenizer()
    codec = TextBitCodec(tokenizer, layout="lm1b", num_tokens=num_tokens)
    rows = pack_lm1b_lines(load_wiki_summaries(), tokenizer, seq_len=num_tokens).rows
    return codec.ids_to_bits(rows)


def train_tiny_sdt(bits: torch.Tensor, steps: int, num_tokens: int, device: str, seed: int):
    """A tiny SDT after ``steps`` Adam steps of the CoBit loss (log-normal sigma, EDM weight) on ``bits``."""
    from bitstream_diffusion import SDTConfig, SDTModel
    from bitstream_diffusion.training import bitstream_loss
    from bitstream_diffusion.training.sigma_sampling import sample_lognormal_sigma

    torch.manual_seed(seed)
    model = SDTModel(SDTConfig(**TINY_CONFIG, max_position_embeddings=num_tokens)).to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        x0 = bits[torch.randint(0, bits.shape[0], (32,), generator=generator)].float()
        sigma = sample_lognormal_sigma(32, generator=generator)
        noisy = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
        x0, sigma, noisy = x0.to(device), sigma.to(device), noisy.to(device)
        loss, _ = bitstream_loss(model(noisy, sigma, self_cond=torch.zeros_like(noisy)).logits, x0, sigma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def variance_split(model, bits: torch.Tensor, k: int, args) -> dict[str, float]:
    """Per-row spread between rows and Monte-Carlo variance of one draw, in (bits per bit)^2."""
    from bitstream_diffusion.evaluation import compute_vlb

    out = compute_vlb(model, bits, batch_size=args.batch_size, num_mc_samples=k, sigma_sampling=args.sigma_sampling,
                      generator=torch.Generator().manual_seed(args.seed + 999), show_progress=False)
    n = out.num_examples
    mc_of_mean = out.mc_stderr**2  # = sum_i var_i / (K N^2)
    one_draw = mc_of_mean * k * n  # mean over rows of one draw's variance
    between_rows = max(out.vlb_bpd_per_row.var().item() - one_draw / k, 0.0)
    return {"between_rows": between_rows, "one_draw": one_draw, "floor_stderr": math.sqrt(between_rows / n),
            "k": k, "rows": n}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bitstream_diffusion.evaluation import compute_vlb

    bits = lm1b_rows(args.tokens)
    heldout_rows = max(args.rows)
    if bits.shape[0] < heldout_rows + 32:
        raise SystemExit(f"only {bits.shape[0]} rows of {args.tokens} tokens; ask for fewer rows or tokens")
    train_bits, heldout = bits[:-heldout_rows], bits[-heldout_rows:]
    started = time.perf_counter()
    model = train_tiny_sdt(train_bits, args.train_steps, args.tokens, args.device, args.seed)
    training_seconds = time.perf_counter() - started

    results = []
    for k in args.ks:
        for n in args.rows:
            runs, seconds = [], 0.0
            for repeat in range(args.repeats):
                generator = torch.Generator().manual_seed(args.seed + 1000 * repeat + 1)
                start = time.perf_counter()
                runs.append(compute_vlb(model, heldout[:n], batch_size=args.batch_size, num_mc_samples=k,
                                        sigma_sampling=args.sigma_sampling, generator=generator,
                                        show_progress=False))
                seconds += time.perf_counter() - start
            values = [run.vlb_bpd for run in runs]
            results.append({
                "k": k,
                "rows": n,
                "vlb_bpd": statistics.fmean(values),
                "stderr": statistics.fmean(run.vlb_bpd_stderr for run in runs),
                "mc_stderr": statistics.fmean(run.mc_stderr for run in runs) if k > 1 else None,
                "observed_std_over_seeds": statistics.stdev(values) if len(values) > 1 else None,
                "bits_per_token_bound": statistics.fmean(run.bits_per_token_bound for run in runs),
                "model_rows": n * (k + 1),
                "seconds": seconds / args.repeats,
            })
    split = variance_split(model, heldout, max(max(args.ks), 2), args)
    # None: no spread between rows was measurable, the Monte-Carlo noise dominates (raise K while rows are few)
    recommended = math.sqrt(split["one_draw"] / split["between_rows"]) if split["between_rows"] > 0 else None
    report = {
        "benchmark": "vlb_stderr",
        "settings": {**vars(args), "bits_per_row": args.tokens * 15, "train_rows": int(train_bits.shape[0])},
        "training_seconds": training_seconds,
        "results": results,
        "variance_split": split,
        "recommended_k": recommended,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
