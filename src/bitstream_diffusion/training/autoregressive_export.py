"""From an autoregressive baseline run to a standard transformers folder, and back.

The folder (:func:`save_causal_lm_folder`)::

    config.json, model.safetensors, generation_config.json   AutoModelForCausalLM.from_pretrained(folder)
    tokenizer files                                           AutoTokenizer.from_pretrained(folder)
    train_summary.json                                        training tokens, steps, size and the matched SDT's
    training_config.yaml                                      the run's flags (data recipe, row length, ...)
    README.md                                                 the model card

``generation_config.json`` makes ``model.generate()`` an ancestral sample of one training row: after the start token
(``bos_token_id``, :func:`~bitstream_diffusion.training.autoregressive.causal_lm_start_token_id`) it samples ``L``
tokens with temperature 1, no top-k or top-p cut and no early stop. A row becomes text with the rules of the
recorded data recipe (:func:`~bitstream_diffusion.training.autoregressive_data.ar_row_codec`), the same rules as
CoBit's samples of that recipe; :func:`load_causal_lm_folder` rebuilds them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from ..utils.atomic_io import staged_directory, write_json_atomic, write_text_atomic
from .autoregressive_data import ar_row_codec
from .export import ema_state_dict

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .checkpointing import TrainingState
    from .optim import ExponentialMovingAverage

__all__ = [
    "FOLDER_SUMMARY_FILE",
    "TRAINING_CONFIG_FILE",
    "CausalLMFolder",
    "export_causal_lm",
    "folder_summary",
    "generate_texts",
    "load_causal_lm_folder",
    "model_card",
    "row_generation_config",
    "save_causal_lm_folder",
]

FOLDER_SUMMARY_FILE = "train_summary.json"
TRAINING_CONFIG_FILE = "training_config.yaml"


def row_generation_config(config, num_tokens: int):
    """The ``GenerationConfig`` of one ancestral row sample: ``num_tokens`` new tokens after the start token,
    temperature 1, no top-k or top-p cut, no early stop."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id, eos_token_id=None, do_sample=True,
        temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=int(num_tokens),
    )


def folder_summary(
    *,
    model_type: str,
    state: TrainingState,
    num_parameters: int,
    sdt_num_parameters: int,
    data_recipe: str,
    dataset: str,
    num_tokens: int,
) -> dict[str, Any]:
    """The ``train_summary.json`` of an exported folder (a CoBit pipeline's too): what a comparison reports about
    training, ``train_tokens`` (all processes together; ``tokens_seen`` as in the run's own summary) first, and the
    last validation's numbers."""
    history = state.validation_history
    return {
        "model_type": model_type,
        "train_tokens": int(state.tokens_seen),
        "tokens_seen": int(state.tokens_seen),
        "global_step": int(state.global_step),
        "num_parameters": int(num_parameters),
        "sdt_num_parameters": int(sdt_num_parameters),
        "data_recipe": data_recipe,
        "dataset": dataset,
        "num_tokens": int(num_tokens),
        "final_validation": history[-1] if history else None,
    }


def model_card(
    title: str,
    *,
    recipe: str,
    dataset: str,
    global_step: int,
    train_tokens: int,
    num_parameters: int,
    sdt_num_parameters: int,
    validation: dict[str, Any] | None,
) -> str:
    """The README of an exported baseline: hub metadata, how it was trained and sized, the held-out perplexity."""
    held_out = "n/a"
    if validation and validation.get("ppl") is not None:
        held_out = f"{validation['ppl']:.2f} ({validation['bits_per_token']:.4f} bits per token)"
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- bitstream-diffusion\n"
        "- autoregressive-baseline\n---\n\n"
        f"# {title}\n\n"
        "The autoregressive baseline of a CoBit comparison: a `LlamaForCausalLM` of the size of the CoBit SDT "
        f"it is compared with ({num_parameters:,} parameters; the SDT has {sdt_num_parameters:,}), trained with "
        "`examples/train_bitstream_diffusion/train_bitstream_diffusion.py --model_type ar` on the same token rows, "
        f"batch, steps and optimizer ({recipe} recipe on {dataset}, {global_step} optimizer steps, "
        f"{train_tokens:,} training tokens, EMA weights). Exact held-out perplexity per token of the validation "
        f"rows: {held_out}.\n\n"
        "Each row is generated after the start token (`bos_token_id`); `model.generate()` samples one row:\n\n"
        "```python\nimport torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
        "torch.manual_seed(0)\n"
        "print(tokenizer.batch_decode(model.generate(num_return_sequences=2)))\n```\n\n"
        "`bitstream_diffusion.training.autoregressive_export.load_causal_lm_folder` and `generate_texts` decode rows "
        "with the data recipe's rules, as CoBit samples are decoded.\n"
    )


def save_causal_lm_folder(
    model,
    export_dir: str | os.PathLike,
    *,
    tokenizer: Any,
    num_tokens: int,
    model_card: str,
    training_config: dict[str, Any],
    folder_summary: dict[str, Any],
) -> Path:
    """Write the folder of the module docstring, replacing an existing one only once the new one is complete."""
    export_dir = Path(export_dir)
    model.generation_config = row_generation_config(model.config, num_tokens)
    with staged_directory(export_dir, tag="exporting") as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / FOLDER_SUMMARY_FILE, folder_summary)
        write_text_atomic(staging / TRAINING_CONFIG_FILE, yaml.safe_dump(training_config, sort_keys=True))
        write_text_atomic(staging / "README.md", model_card)
    return export_dir


def export_causal_lm(
    accelerator: Accelerator,
    model: torch.nn.Module,
    ema: ExponentialMovingAverage | None,
    export_dir: str | os.PathLike,
    **folder: Any,
) -> Path | None:
    """Write the EMA weights of the prepared causal LM as a transformers folder (call on every process; the main
    process writes and gets the path, the others ``None``).

    ``folder``: the keywords of :func:`save_causal_lm_folder`."""
    from transformers import AutoModelForCausalLM

    state_dict = ema_state_dict(accelerator, model, ema)
    if not accelerator.is_main_process:
        return None
    export_model = AutoModelForCausalLM.from_config(accelerator.unwrap_model(model).config)
    export_model.load_state_dict(state_dict, strict=True)
    export_model.eval()
    return save_causal_lm_folder(export_model, export_dir, **folder)


@dataclass
class CausalLMFolder:
    """An exported baseline: the model (eval mode), its tokenizer, the decoding rules of its rows
    (:func:`~bitstream_diffusion.training.autoregressive_data.ar_row_codec`), the start token and the training record
    (``train_summary.json``)."""

    model: Any
    tokenizer: Any
    codec: Any
    start_token_id: int
    summary: dict[str, Any]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_causal_lm_folder(folder: str | os.PathLike, *, device: str | torch.device | None = None) -> CausalLMFolder:
    """Load a folder written by :func:`save_causal_lm_folder`.

    Raises:
        FileNotFoundError: ``folder`` lacks the training record (``training_config.yaml`` with the data recipe and
            row length): it was not exported by the training script with ``--model_type ar``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    config_file = folder / TRAINING_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no {TRAINING_CONFIG_FILE}: it is not an autoregressive baseline exported by the training "
            "script (--model_type ar). Load other causal LMs with AutoModelForCausalLM.from_pretrained."
        )
    flags = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    recipe = flags["data_recipe"]
    num_tokens = flags["owt_base_seq_len"] if recipe == "owt" else flags["num_tokens"]
    summary_file = folder / FOLDER_SUMMARY_FILE
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
    return CausalLMFolder(model=model, tokenizer=tokenizer, codec=ar_row_codec(recipe, tokenizer, num_tokens),
                          start_token_id=int(model.config.bos_token_id), summary=summary)


@torch.no_grad()
def generate_texts(
    model,
    codec,
    num_texts: int,
    *,
    start_token_id: int,
    seed: int,
    temperature: float = 1.0,
    top_p: float | None = None,
) -> tuple[list[str], int]:
    """``(texts, nfe)``: ``num_texts`` rows of ``codec.num_tokens`` ids sampled after the start token and decoded by
    ``codec``; ``nfe`` is the number of forward passes, one per generated token.

    The draws come from torch's global generator seeded with ``seed`` inside a forked RNG state, so the caller's
    random state is untouched.
    """
    device = next(model.parameters()).device
    start = torch.full((int(num_texts), 1), int(start_token_id), dtype=torch.long, device=device)
    config = row_generation_config(model.config, codec.num_tokens)
    config.temperature, config.top_p = float(temperature), 1.0 if top_p is None else float(top_p)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        rows = model.generate(start, attention_mask=torch.ones_like(start), generation_config=config)
    model.train(was_training)
    return codec.decode_ids(rows[:, 1:].cpu()), int(codec.num_tokens)
