#!/usr/bin/env python
"""Prepare CoBit training rows ahead of a run, or train the OWT code tokenizer.

Two commands:

* ``prepare``: build (or reuse) the token-row cache of one split with a data recipe (``lm1b``, ``owt`` or
  ``generic``), exactly as the training script would at its start. Useful before a multi-node job: the script then
  finds the cache and skips the work. Prints one JSON line with the cache folder and its size.
* ``train-code-tokenizer``: train the OWT second-stage code tokenizer (``gpt2id_bpe16``) on the GPT-2 windows of a
  corpus and write it both as a transformers folder and as the official ``tokenizer_gpt2id_bpe16_{V}_base{L}.json`` +
  ``.meta.json`` pair.

Examples::

    python examples/prepare_data/prepare_data.py prepare --recipe lm1b \\
        --dataset_name billion-word-benchmark/lm1b --dataset_revision refs/convert/parquet --tokenizer bert-base-uncased
    python examples/prepare_data/prepare_data.py train-code-tokenizer --dataset_name Skylion007/openwebtext \\
        --dataset_split "train[:-100000]" --tokenizer gpt2 --code_vocab_size 65536 --output_dir owt-code-tokenizer

Everything runs offline on the built-in corpus too (``--dataset_name builtin:wiki_summaries --tokenizer
packaged:bert-base-uncased``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from bitstream_diffusion.training.data import (
    DATA_RECIPES,
    DataRecipe,
    TextSource,
    default_cache_dir,
    load_code_tokenizer,
    load_text_tokenizer,
    prepare_token_rows,
    train_code_tokenizer,
)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The flags that describe where the text comes from (the same names as the training script's)."""
    parser.add_argument("--dataset_name", default=None, help="hub dataset, local folder, or builtin:wiki_summaries")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--dataset_revision", default=None, help="pin it: the cache key includes it")
    parser.add_argument("--dataset_split", default="train", help='split, e.g. "train" or "train[:-100000]"')
    parser.add_argument("--train_files", nargs="+", default=None, help="local .txt/.json/.jsonl/.csv/.parquet files")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--sample_by", default="line", choices=["line", "paragraph", "document"])
    parser.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    parser.add_argument("--max_documents", type=int, default=None)
    parser.add_argument("--cache_dir", default=None, help=f"cache root (default {default_cache_dir()})")
    parser.add_argument("--preprocessing_batch_size", type=int, default=1000)


def source_from_args(args: argparse.Namespace) -> TextSource:
    return TextSource(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.dataset_split,
        data_files=args.train_files,
        text_column=args.text_column,
        sample_by=args.sample_by,
        streaming=args.streaming,
        max_documents=args.max_documents,
        revision=args.dataset_revision,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="prepare (or reuse) the token-row cache of one split")
    add_source_args(prepare)
    prepare.add_argument("--recipe", default="lm1b", choices=list(DATA_RECIPES))
    prepare.add_argument("--tokenizer", default="bert-base-uncased", help="folder, hub id, or packaged:NAME")
    prepare.add_argument("--code_tokenizer", default=None, help="OWT code tokenizer folder or official JSON")
    prepare.add_argument("--num_tokens", type=int, default=None, help="tokens per row (128 LM1B, 1024 OWT)")
    prepare.add_argument("--bits_per_token", type=int, default=None)
    prepare.add_argument("--boundary", default="auto", choices=["auto", "eos", "sep", "none"])
    prepare.add_argument("--base_seq_len", type=int, default=1024, help="OWT: GPT-2 window length with BOS/EOS")

    train = sub.add_parser("train-code-tokenizer", help="train the OWT second-stage code tokenizer")
    add_source_args(train)
    train.add_argument("--tokenizer", default="gpt2", help="the GPT-2 tokenizer: folder, hub id, or packaged:gpt2")
    train.add_argument("--code_vocab_size", type=int, default=65536)
    train.add_argument("--min_frequency", type=int, default=2)
    train.add_argument("--base_seq_len", type=int, default=1024)
    train.add_argument("--max_windows", type=int, default=None)
    train.add_argument("--output_dir", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = source_from_args(args)
    tokenizer = load_text_tokenizer(args.tokenizer)
    if args.command == "prepare":
        num_tokens = args.num_tokens or (1024 if args.recipe == "owt" else 128)
        recipe = DataRecipe(args.recipe, num_tokens=num_tokens, bits_per_token=args.bits_per_token,
                            boundary=args.boundary, base_seq_len=args.base_seq_len)
        rows = prepare_token_rows(source, recipe, tokenizer, load_code_tokenizer(args.code_tokenizer),
                                  cache_dir=args.cache_dir, batch_size=args.preprocessing_batch_size)
        print(json.dumps({"cache": str(rows.path), "num_rows": len(rows), "num_tokens": rows.num_tokens}))
    else:
        code_tokenizer = train_code_tokenizer(
            source, tokenizer, code_vocab_size=args.code_vocab_size, min_frequency=args.min_frequency,
            base_seq_len=args.base_seq_len, max_windows=args.max_windows, cache_dir=args.cache_dir,
            output_dir=args.output_dir, batch_size=args.preprocessing_batch_size,
        )
        print(json.dumps({"output_dir": args.output_dir, "codes": code_tokenizer.vocab_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
