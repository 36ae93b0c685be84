"""The layout of a saved [`BitstreamDiffusionPipeline`] folder, as transformers and this package find it.

A pipeline folder is a diffusers folder (`model_index.json`, with the SDT in `model/`, plus `scheduler/`,
`tokenizer/` and, for OWT, `code_tokenizer/`) with one extra file: a root `config.json` of model type
`"bitstream_diffusion_pipeline"` ([`BitstreamPipelineFolderConfig`]). `transformers.pipeline(task, model=folder)`
reads `config.json` at the root before anything else; this one points it at the SDT in `model/`. diffusers ignores it.

Both the diffusers pipeline (which writes the entry point when saving) and the transformers task (which follows it)
import this module; it imports neither of them, nor diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path

import transformers
from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..utils.atomic_io import write_json_atomic

__all__ = [
    "MODEL_SUBFOLDER",
    "PIPELINE_INDEX_NAME",
    "BitstreamPipelineFolderConfig",
    "is_pipeline_folder",
    "pipeline_folder_of",
    "write_transformers_entry_point",
]

#: The diffusers index of a pipeline folder (components and codec settings).
PIPELINE_INDEX_NAME = "model_index.json"
#: The subfolder of the SDT (the pipeline's `model` component).
MODEL_SUBFOLDER = "model"


@strict(accept_kwargs=True)
class BitstreamPipelineFolderConfig(PretrainedConfig):
    r"""
    The root `config.json` of a [`BitstreamDiffusionPipeline`] folder: a pointer for transformers, which reads
    `config.json` before anything else, to the SDT of the folder. It holds no model settings.

    Args:
        model_subfolder (`str`, defaults to `"model"`): the folder of the SDT (the pipeline's `model` component).
    """

    model_type = "bitstream_diffusion_pipeline"

    model_subfolder: str = MODEL_SUBFOLDER


def write_transformers_entry_point(save_directory: str | os.PathLike) -> Path:
    """Write the root `config.json` of a pipeline folder ([`BitstreamPipelineFolderConfig`]); returns its path."""
    entry = {
        "model_type": BitstreamPipelineFolderConfig.model_type,
        "model_subfolder": MODEL_SUBFOLDER,
        "transformers_version": transformers.__version__,
    }
    return write_json_atomic(Path(save_directory) / "config.json", entry)


def is_pipeline_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a local pipeline folder (it holds `model_index.json`)."""
    return os.path.isfile(os.path.join(path, PIPELINE_INDEX_NAME))


def pipeline_folder_of(model) -> str:
    """
    The pipeline folder (or hub repo id) an SDT was loaded from: its `name_or_path`, or the parent folder when the
    SDT came from the `model/` subfolder of a local pipeline folder.

    Raises:
        `ValueError`: the model has no `name_or_path`, or it names a local folder that belongs to no pipeline folder.
    """
    source = str(getattr(model, "name_or_path", "") or "")
    if not source:
        raise ValueError(
            "Cannot find the pipeline folder of this model (it has no `name_or_path`). Pass the folder of a saved "
            "BitstreamDiffusionPipeline as `model=`, or a BitstreamDiffusionPipeline instance."
        )
    if os.path.isdir(source) and not is_pipeline_folder(source):
        parent = os.path.dirname(os.path.normpath(source))
        if is_pipeline_folder(parent):
            return parent
        raise ValueError(
            f"{source} is not a BitstreamDiffusionPipeline folder (no {PIPELINE_INDEX_NAME}, nor in its parent). The "
            "task needs the scheduler and tokenizer too: pass a folder written by `BitstreamDiffusionPipeline."
            "save_pretrained`, or a BitstreamDiffusionPipeline instance."
        )
    return source


from .._auto_registration import register_when_loaded  # noqa: E402

register_when_loaded(__name__)
