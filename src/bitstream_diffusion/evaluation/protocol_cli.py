"""The command line of the evaluation protocol (``python -m bitstream_diffusion.evaluation.run_protocol``).

It imports nothing heavy, so that ``--help`` answers at once; :func:`protocol_kwargs` turns the parsed flags into the
keyword arguments of :func:`~bitstream_diffusion.evaluation.run_protocol.run_protocol`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .causal_lm_text import AR_TEXT_LAYOUTS
from .generation import AUTOCAST_DTYPES
from .protocol_likelihood import DEFAULT_HELDOUT_SIGMAS
from .reference import PACKING_CHOICES

__all__ = ["PAPER_EVALUATOR", "build_parser", "parse_max_batch_size", "protocol_kwargs"]

PAPER_EVALUATOR = "openai-community/gpt2-large"  # gen_ppl.DEFAULT_EVALUATOR, named here for --help without torch


def parse_max_batch_size(text: str | int | None) -> int | str | None:
    """``"auto"`` -> ``"auto"``, ``"none"`` -> ``None`` (the whole batch at once), ``"16"`` -> ``16``."""
    if text is None or isinstance(text, int):
        return text
    lowered = str(text).strip().lower()
    if lowered == "auto":
        return "auto"
    if lowered == "none":
        return None
    try:
        value = int(lowered)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a positive integer, got {text!r}")
    return value


def _num_buckets(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 2, got {text!r}")
    return value


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline",
        required=True,
        help="a BitstreamDiffusionPipeline folder (model_index.json) or a causal-LM folder (config.json of an "
        "AutoModelForCausalLM, with its tokenizer); or a hub id",
    )
    parser.add_argument(
        "--spec",
        action="append",
        default=None,
        metavar="SPEC",
        help="sampler spec, repeatable. CoBit: gamma=G,nfe=N (paper notation: N-1 levels) or gamma=G,steps=K "
        "(per-step gamma, K levels); optional solver=euler|heun, self_conditioning=carry|refined|none. Causal LM: "
        "temperature=T[,top_p=P] (default temperature=1, ancestral sampling)",
    )
    parser.add_argument("--num-samples", type=int, default=1024, help="samples per spec and seed (default 1024)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="evaluation seeds (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per cached batch (default 64)")
    parser.add_argument(
        "--max-batch-size",
        type=parse_max_batch_size,
        default="auto",
        help="the most samples one model call runs: an integer, 'auto' (from the free CUDA memory; the whole batch "
        "on CPU) or 'none'; does not change the samples (default auto)",
    )
    parser.add_argument(
        "--num-tokens",
        type=int,
        help="causal LM: tokens per generated row and per reference row (default: the training run's row length, "
        "read from training_config.yaml beside the folder)",
    )
    parser.add_argument(
        "--ar-layout",
        choices=AR_TEXT_LAYOUTS,
        default="auto",
        help="causal LM: how its rows are packed and decoded: lm1b (BERT rows, decoded like the LM1B codec), owt "
        "(GPT-2 windows), generic; auto: the recorded data recipe, else lm1b for a BERT tokenizer, else generic",
    )
    parser.add_argument("--output-dir", required=True, help="results, plot and the resumable sample cache")
    parser.add_argument(
        "--autocast-dtype",
        choices=AUTOCAST_DTYPES,
        default="none",
        help="model autocast (the official runs used bfloat16; default none = float32)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the accelerate process's device)")


def _add_scoring_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluator",
        help=f"GenPPL causal LM: hub id or folder (default {PAPER_EVALUATOR}); 'smollm2' or a .gguf file for an "
        "offline evaluator",
    )
    parser.add_argument(
        "--evaluator-dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="evaluator weights and logits dtype (default bfloat16, the paper's)",
    )
    parser.add_argument("--evaluator-batch-size", type=int, default=16, help="windows per evaluator call")
    mauve = parser.add_argument_group("MAUVE of the samples against the reference texts")
    mauve.add_argument("--mauve", action="store_true", help="add the mauve column (needs a reference)")
    mauve.add_argument(
        "--mauve-featurizer",
        help="feature LM: hub id or folder, 'smollm2' offline (default: the --evaluator, i.e. gpt2-large)",
    )
    mauve.add_argument(
        "--mauve-num-buckets", type=_num_buckets, default="auto", help="k-means clusters: auto or N (paper: 25)"
    )
    mauve.add_argument(
        "--mauve-max-text-length",
        type=int,
        help="featuriser tokens per text (default: the row length in tokens; 1024 for CoBit OWT)",
    )


def _add_likelihood_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("likelihood of the held-out reference rows (one model row)")
    group.add_argument(
        "--vlb",
        action="store_true",
        help="CoBit: the variational bound (vlb_bpd, bits_per_token, ppl_bound); causal LM: the exact NLL in the "
        "same columns",
    )
    group.add_argument("--vlb-num-mc-samples", type=int, default=1, help="K, log-sigma draws per row (default 1)")
    group.add_argument("--vlb-batch-size", type=int, default=16, help="rows per batch (default 16)")
    group.add_argument(
        "--likelihood-seed", type=int, default=0, help="seeds the bound's draws and the held-out loss (default 0)"
    )
    group.add_argument("--heldout-loss", action="store_true", help="CoBit: the training loss at fixed noise levels")
    group.add_argument(
        "--heldout-loss-sigmas",
        type=float,
        nargs="+",
        default=list(DEFAULT_HELDOUT_SIGMAS),
        help=f"noise levels of --heldout-loss (default {' '.join(map(str, DEFAULT_HELDOUT_SIGMAS))})",
    )


def _add_reference_flags(parser: argparse.ArgumentParser) -> None:
    reference = parser.add_argument_group("real-data reference (the first --num-samples rows)")
    source = reference.add_mutually_exclusive_group()
    source.add_argument("--reference-texts", metavar="FILE", help=".jsonl (strings or objects) or one text per line")
    source.add_argument("--reference-dataset", metavar="NAME", help="datasets.load_dataset name, e.g. lm1b")
    reference.add_argument("--reference-dataset-config", metavar="CONFIG", help="dataset configuration name")
    reference.add_argument("--reference-split", default="test", help="split, slicing allowed (default test)")
    reference.add_argument("--reference-column", default="text", help="text column / jsonl field (default text)")
    reference.add_argument(
        "--reference-packing",
        choices=PACKING_CHOICES,
        default="auto",
        help="packed: rows as the official caches (LM1B/OWT); rows: one text per row",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bitstream_diffusion.evaluation.run_protocol",
        description="The CoBit evaluation protocol, for CoBit pipelines and causal LMs: GenPPL, token entropy and "
        "MAUVE per sampler spec (mean ± std over seeds), and the model's likelihood of the held-out reference rows.",
        epilog="Several processes: accelerate launch --multi_gpu --num_processes N -m "
        "bitstream_diffusion.evaluation.run_protocol ... (add --device cpu for CPU processes).",
    )
    _add_generation_flags(parser)
    _add_scoring_flags(parser)
    _add_likelihood_flags(parser)
    _add_reference_flags(parser)
    parser.add_argument("--no-plot", action="store_true", help="skip genppl_vs_entropy.png")
    return parser


def protocol_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as keyword arguments of ``run_protocol`` (``pipeline`` and ``specs`` included)."""
    return {
        "pipeline": args.pipeline,
        "specs": list(args.spec or []),
        "num_samples": args.num_samples,
        "output_dir": args.output_dir,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "max_batch_size": args.max_batch_size,
        "num_tokens": args.num_tokens,
        "ar_layout": args.ar_layout,
        "evaluator": args.evaluator,
        "evaluator_dtype": args.evaluator_dtype,
        "evaluator_batch_size": args.evaluator_batch_size,
        "autocast_dtype": args.autocast_dtype,
        "device": args.device,
        "reference_texts": args.reference_texts,
        "reference_dataset": args.reference_dataset,
        "reference_dataset_config": args.reference_dataset_config,
        "reference_split": args.reference_split,
        "reference_column": args.reference_column,
        "reference_packing": args.reference_packing,
        "vlb": args.vlb,
        "vlb_num_mc_samples": args.vlb_num_mc_samples,
        "vlb_batch_size": args.vlb_batch_size,
        "likelihood_seed": args.likelihood_seed,
        "heldout_loss": args.heldout_loss,
        "heldout_loss_sigmas": tuple(args.heldout_loss_sigmas),
        "mauve": args.mauve,
        "mauve_featurizer": args.mauve_featurizer,
        "mauve_num_buckets": args.mauve_num_buckets,
        "mauve_max_text_length": args.mauve_max_text_length,
        "plot": not args.no_plot,
    }
