"""The CoBit text pipeline (diffusers) and the transformers `pipeline()` task `"bitstream-text-generation"`.

* `pipeline_bitstream_diffusion`: [`BitstreamDiffusionPipeline`], noise -> bits -> text (diffusers);
* `pipeline_output`: its output; `pipeline_inputs`: the checks of its arguments; `known_bits`: the prompt /
  infilling bits it clamps at every step; `codec_mixin`: its text <-> bits codec;
* `batching`: a large batch split into chunks that fit in memory; `random_streams`: one generator per sample,
  derived from one seed (the pipeline's chunks and the task's prompts);
* `pipeline_folder`: the saved folder's root `config.json`, through which transformers finds the SDT;
* `remote_code`: the code a saved folder carries (written from the package's modules) so that diffusers and
  transformers load it without this package;
* `bitstream_text_generation`: the transformers task (no diffusers import until a task pipeline is built).

Attributes load lazily: `register_bitstream_text_generation_task` (called at `import bitstream_diffusion`) must not
pay for the diffusers import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy_exports import lazy_exports

_LAZY_ATTRIBUTES: dict[str, str] = {
    "BitstreamDiffusionPipeline": ".pipeline_bitstream_diffusion",
    "BitstreamDiffusionPipelineOutput": ".pipeline_output",
    "DEFAULT_NUM_INFERENCE_STEPS": ".pipeline_bitstream_diffusion",
    "LogLikelihoodOutput": ".likelihood",
    "TASK_NAME": ".bitstream_text_generation",
    "BitstreamPipelineFolderConfig": ".pipeline_folder",
    "BitstreamPipelineDenoiserLoader": ".pipeline_folder",
    "write_transformers_entry_point": ".pipeline_folder",
    "check_remote_code": ".remote_code",
    "remote_code_files": ".remote_code",
    "write_remote_code": ".remote_code",
    "BitstreamPipelineModelLoader": ".bitstream_text_generation",
    "BitstreamTextGenerationPipeline": ".bitstream_text_generation",
    "register_bitstream_text_generation_task": ".bitstream_text_generation",
}

__all__ = [  # the keys of `_LAZY_ATTRIBUTES`, spelled out for linters and readers
    "BitstreamDiffusionPipeline",
    "BitstreamDiffusionPipelineOutput",
    "DEFAULT_NUM_INFERENCE_STEPS",
    "LogLikelihoodOutput",
    "TASK_NAME",
    "BitstreamPipelineFolderConfig",
    "BitstreamPipelineDenoiserLoader",
    "write_transformers_entry_point",
    "check_remote_code",
    "remote_code_files",
    "write_remote_code",
    "BitstreamPipelineModelLoader",
    "BitstreamTextGenerationPipeline",
    "register_bitstream_text_generation_task",
]

if TYPE_CHECKING:
    from .bitstream_text_generation import (
        TASK_NAME,
        BitstreamPipelineModelLoader,
        BitstreamTextGenerationPipeline,
        register_bitstream_text_generation_task,
    )
    from .likelihood import LogLikelihoodOutput
    from .pipeline_bitstream_diffusion import (
        DEFAULT_NUM_INFERENCE_STEPS,
        BitstreamDiffusionPipeline,
    )
    from .pipeline_folder import (
        BitstreamPipelineDenoiserLoader,
        BitstreamPipelineFolderConfig,
        write_transformers_entry_point,
    )
    from .pipeline_output import BitstreamDiffusionPipelineOutput
    from .remote_code import check_remote_code, remote_code_files, write_remote_code


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)
