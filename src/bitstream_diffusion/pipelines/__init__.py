"""The CoBit text pipeline (diffusers) and the transformers `pipeline()` task `"bitstream-text-generation"`.

Attributes load lazily: `register_bitstream_text_generation_task` (called at `import bitstream_diffusion`) must not
pay for the diffusers import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_ATTRIBUTES: dict[str, str] = {
    "BitstreamDiffusionPipeline": ".pipeline_bitstream_diffusion",
    "BitstreamDiffusionPipelineOutput": ".pipeline_bitstream_diffusion",
    "DEFAULT_NUM_INFERENCE_STEPS": ".pipeline_bitstream_diffusion",
    "TASK_NAME": ".bitstream_text_generation",
    "BitstreamPipelineFolderConfig": ".bitstream_text_generation",
    "BitstreamPipelineModelLoader": ".bitstream_text_generation",
    "BitstreamTextGenerationPipeline": ".bitstream_text_generation",
    "register_bitstream_text_generation_task": ".bitstream_text_generation",
}

__all__ = list(_LAZY_ATTRIBUTES)

if TYPE_CHECKING:
    from .bitstream_text_generation import (
        TASK_NAME,
        BitstreamPipelineFolderConfig,
        BitstreamPipelineModelLoader,
        BitstreamTextGenerationPipeline,
        register_bitstream_text_generation_task,
    )
    from .pipeline_bitstream_diffusion import (
        DEFAULT_NUM_INFERENCE_STEPS,
        BitstreamDiffusionPipeline,
        BitstreamDiffusionPipelineOutput,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
