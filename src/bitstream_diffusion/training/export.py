"""From a training run to a ``BitstreamDiffusionPipeline`` folder: the EMA weights, a scheduler that carries the
learned entropy table, the tokenizer(s) and the codec settings.

    export_pipeline(accelerator, model, ema, export_dir, tables=tables, tokenizer=tokenizer, codec=codec,
                    code_tokenizer=None, gamma=gamma, sigma_min=0.002, sigma_max=80.0,
                    model_card=model_card(...), training_config=vars(args))      # every process

:func:`export_pipeline` gathers the EMA weights (:func:`ema_state_dict`), builds the pipeline on a fresh model
(:func:`build_pipeline`) and writes it (:func:`save_pipeline_folder`).

The folder is written next to its final place and swapped in whole, so a reader sees the old folder or the new one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from ..modeling.modeling_sdt import SDTModel
from ..pipelines.pipeline_bitstream_diffusion import BitstreamDiffusionPipeline
from ..schedulers.entropy_tables import save_entropy_tables, tables_to_config
from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler
from ..utils.atomic_io import staged_directory, write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..codecs.text_codec import TextBitCodec
    from .optim import ExponentialMovingAverage

__all__ = [
    "build_pipeline",
    "ema_state_dict",
    "export_pipeline",
    "generate_texts",
    "model_card",
    "save_pipeline_folder",
]

# the paper's sampler settings, stored in the exported scheduler's config
_SAMPLER = dict(s_noise=1.003, terminal_sigma=0.08, churn_window=(0.0, 1.0), solver="euler")


def build_pipeline(
    model: torch.nn.Module,
    tables: dict[str, torch.Tensor],
    tokenizer: Any,
    code_tokenizer: Any,
    codec: TextBitCodec,
    *,
    gamma: float,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> BitstreamDiffusionPipeline:
    """A pipeline around ``model`` (an unwrapped ``SDTModel``) with the paper's sampler on ``tables``.

    Args:
        tables: the entropy table (``pdf``, ``cdf``, ``sigmas``, ``edges``) the scheduler places its levels with.
        tokenizer: the text tokenizer; ``code_tokenizer``: the OWT code tokenizer as a transformers tokenizer, or
            ``None``.
        codec: the training codec; its layout, row length and decode setting go into the pipeline config.
        gamma: the churn stored in the scheduler.
    """
    scheduler = EntropyRateScheduler(
        **tables_to_config(tables), gamma=float(gamma), sigma_min=sigma_min, sigma_max=sigma_max,
        self_conditioning="carry" if model.config.self_conditioning else "none", **_SAMPLER,
    )
    return BitstreamDiffusionPipeline(
        model=model, scheduler=scheduler, tokenizer=tokenizer, code_tokenizer=code_tokenizer,
        codec_layout=codec.layout, codec_num_tokens=codec.num_tokens,
        codec_clean_up_tokenization_spaces=codec.clean_up_tokenization_spaces,
    )


@torch.no_grad()
def generate_texts(
    pipe: BitstreamDiffusionPipeline, num_texts: int, *, num_inference_steps: int, seed: int, gamma: float | None = None
) -> tuple[list[str], int]:
    """``(texts, nfe)``: ``num_texts`` texts of the codec's row length from a seeded CPU generator, no progress bar."""
    pipe.set_progress_bar_config(disable=True)
    kwargs = {} if gamma is None else {"gamma": gamma}
    out = pipe(batch_size=num_texts, num_inference_steps=num_inference_steps, sequence_length=pipe.codec.num_tokens,
               generator=torch.Generator().manual_seed(seed), output_type="text", **kwargs)
    return list(out.texts), out.nfe


def ema_state_dict(
    accelerator: Accelerator, model: torch.nn.Module, ema: ExponentialMovingAverage | None
) -> dict[str, torch.Tensor]:
    """The full EMA weights (the raw weights without ``ema``) as float32 CPU copies; call on every process.

    Under sharding (FSDP) the main process gets the full state dict, the others may get an empty one. The tensors
    are copies: without sharding ``get_state_dict`` returns the live parameters, which the EMA restore overwrites.
    """
    with ema.average_parameters(model) if ema is not None else contextlib.nullcontext():
        full = accelerator.get_state_dict(model)
        state_dict = {name: value.detach().to("cpu", torch.float32, copy=True) for name, value in full.items()}
    return state_dict


def model_card(title: str, *, recipe: str, dataset: str, global_step: int, validation_loss: float | None) -> str:
    """The README of an exported folder: hub metadata, how it was trained, a usage example."""
    loss = "n/a" if validation_loss is None else f"{validation_loss:.4f}"
    return (
        "---\nlibrary_name: diffusers\ntags:\n- bitstream-diffusion\n- cobit\n- text-generation\n---\n\n"
        f"# {title}\n\n"
        "A CoBit bitstream diffusion language model trained with "
        "`examples/train_bitstream_diffusion/train_bitstream_diffusion.py` "
        f"({recipe} recipe on {dataset}, {global_step} optimizer steps, EMA weights). EMA validation loss: {loss}.\n\n"
        "```python\nimport torch\nfrom bitstream_diffusion import BitstreamDiffusionPipeline\n\n"
        'pipe = BitstreamDiffusionPipeline.from_pretrained("path/to/this/folder")\n'
        "print(pipe(batch_size=2, num_inference_steps=128, generator=torch.Generator().manual_seed(0)).texts)\n```\n"
    )


def export_pipeline(
    accelerator: Accelerator,
    model: torch.nn.Module,
    ema: ExponentialMovingAverage | None,
    export_dir: str | os.PathLike,
    *,
    tables: dict[str, torch.Tensor],
    tokenizer: Any,
    code_tokenizer: Any,
    codec: TextBitCodec,
    gamma: float,
    sigma_min: float,
    sigma_max: float,
    model_card: str,
    training_config: dict[str, Any],
) -> Path | None:
    """Write the EMA weights of the prepared ``model`` as a pipeline folder (call on every process; the main process
    writes and gets the path, the others ``None``). See :func:`build_pipeline` and :func:`save_pipeline_folder`."""
    state_dict = ema_state_dict(accelerator, model, ema)
    if not accelerator.is_main_process:
        return None
    export_model = SDTModel(accelerator.unwrap_model(model).config)
    export_model.load_state_dict(state_dict, strict=True)
    export_model.eval()
    pipe = build_pipeline(export_model, tables, tokenizer, code_tokenizer, codec, gamma=gamma, sigma_min=sigma_min,
                          sigma_max=sigma_max)
    return save_pipeline_folder(pipe, tables, export_dir, model_card=model_card, training_config=training_config)


def save_pipeline_folder(
    pipe: BitstreamDiffusionPipeline,
    tables: dict[str, torch.Tensor],
    export_dir: str | os.PathLike,
    *,
    model_card: str,
    training_config: dict[str, Any],
) -> Path:
    """Write ``pipe`` (safetensors), the tables as ``entropy_tables/entropy_*.pt``, ``README.md`` and
    ``training_config.yaml`` into ``export_dir``, replacing an existing folder only once the new one is complete."""
    export_dir = Path(export_dir)
    with staged_directory(export_dir, tag="exporting") as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        save_entropy_tables(tables, staging / "entropy_tables")
        write_text_atomic(staging / "README.md", model_card)
        write_text_atomic(staging / "training_config.yaml", yaml.safe_dump(training_config, sort_keys=True))
    return export_dir
