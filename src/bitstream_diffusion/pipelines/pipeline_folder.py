"""The layout of a saved [`BitstreamDiffusionPipeline`] folder, as transformers and this package find it.

A pipeline folder is a diffusers folder (`model_index.json`, with the SDT in `model/`, plus `scheduler/`,
`tokenizer/` and, for OWT, `code_tokenizer/`, and the code it needs, see `remote_code`) with one extra file: a root
`config.json` of model type `"bitstream_diffusion_pipeline"` ([`BitstreamPipelineFolderConfig`]). transformers reads
`config.json` at the root before anything else; this one points it at the SDT in `model/`, and its `auto_map` names
this file (which the folder carries), so that without this package

```py
>>> from transformers import AutoModel
>>> denoiser = AutoModel.from_pretrained(folder_or_repo, trust_remote_code=True)  # the SDT of `model/`
```

loads the denoiser ([`BitstreamPipelineDenoiserLoader`]). With the package, `transformers.pipeline(
"bitstream-text-generation", model=folder)` follows the same config to the SDT. diffusers ignores the file.

Both the diffusers pipeline (which writes the entry point when saving) and the transformers task (which follows it)
import this module; it imports neither of them, nor diffusers.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import transformers
from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..utils.atomic_io import write_json_atomic

__all__ = [
    "MODEL_SUBFOLDER",
    "PIPELINE_INDEX_NAME",
    "BitstreamPipelineDenoiserLoader",
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


class BitstreamPipelineDenoiserLoader:
    """
    The `AutoModel` of a pipeline folder's root `config.json`: `AutoModel.from_pretrained(folder_or_repo,
    trust_remote_code=True)` returns the folder's SDT denoiser, loaded from `model/` with the code stored there (a hub
    repo's `model/` is downloaded first). It is no model class: transformers only calls `from_pretrained` on it.
    Model keywords (`dtype`, `device_map`, `attn_implementation`, ...) are passed on.
    """

    config_class = BitstreamPipelineFolderConfig

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """Nothing to register (transformers calls this on every class it loads from remote code)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, config=None, **kwargs):
        from transformers import AutoModel

        subfolder = getattr(config, "model_subfolder", None) or MODEL_SUBFOLDER
        hub_keys = ("revision", "token", "cache_dir", "local_files_only", "force_download")
        hub = {key: kwargs.pop(key) for key in hub_keys if kwargs.get(key) is not None}
        for key in ("adapter_kwargs", "_from_auto", "subfolder", "code_revision"):
            kwargs.pop(key, None)
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(path, allow_patterns=[f"{subfolder}/*"], **hub)
        return AutoModel.from_pretrained(os.path.join(path, subfolder), *model_args, **kwargs)


def write_transformers_entry_point(save_directory: str | os.PathLike) -> Path:
    """
    Write the root `config.json` of a pipeline folder ([`BitstreamPipelineFolderConfig`], with the `auto_map` of
    this file and [`BitstreamPipelineDenoiserLoader`]); returns its path.
    """
    module = __name__.rsplit(".", 1)[-1]
    entry = {
        "auto_map": {
            "AutoConfig": f"{module}.{BitstreamPipelineFolderConfig.__name__}",
            "AutoModel": f"{module}.{BitstreamPipelineDenoiserLoader.__name__}",
        },
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


if __package__ == "bitstream_diffusion.pipelines":  # skipped in the copy a saved folder carries (remote code)
    importlib.import_module("bitstream_diffusion._auto_registration").register_when_loaded(__name__)
