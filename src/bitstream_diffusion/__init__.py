"""bitstream-diffusion: CoBit continuous bitstream diffusion language models (arXiv 2605.07013) for Hugging Face.

Importing the package registers `SDTConfig`/`SDTModel` with transformers' `AutoConfig`/`AutoModel` (model type
`"bitstream_sdt"`). The other components (scheduler, pipeline, codecs, training, evaluation) load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY_ATTRIBUTES: dict[str, str] = {
    "SDTConfig": "bitstream_diffusion.modeling.configuration_sdt",
    "SDT_PRESETS": "bitstream_diffusion.modeling.configuration_sdt",
    "SDTModel": "bitstream_diffusion.modeling.modeling_sdt",
    "SDTOutput": "bitstream_diffusion.modeling.modeling_sdt",
    "EntropyRateScheduler": "bitstream_diffusion.schedulers.scheduling_entropy_rate",
    "BitstreamDiffusionPipeline": "bitstream_diffusion.pipelines.pipeline_bitstream_diffusion",
    "BitstreamDiffusionPipelineOutput": "bitstream_diffusion.pipelines.pipeline_bitstream_diffusion",
    "TextBitCodec": "bitstream_diffusion.codecs.text_codec",
    "CodeTokenizer": "bitstream_diffusion.codecs.code_tokenizer",
}

__all__ = ["__version__", *_LAZY_ATTRIBUTES]

if TYPE_CHECKING:
    from .codecs.code_tokenizer import CodeTokenizer
    from .codecs.text_codec import TextBitCodec
    from .modeling.configuration_sdt import SDT_PRESETS, SDTConfig
    from .modeling.modeling_sdt import SDTModel, SDTOutput
    from .pipelines.pipeline_bitstream_diffusion import (
        BitstreamDiffusionPipeline,
        BitstreamDiffusionPipelineOutput,
    )
    from .schedulers.scheduling_entropy_rate import EntropyRateScheduler


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitstream_diffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


# Registering with AutoConfig/AutoModel needs the modeling code (torch + transformers, a few seconds). An import
# hook that defers it until transformers' auto classes load was tried and breaks on some import orders
# (e.g. `from transformers import pipeline`), so the registration is done eagerly and robustly here.
importlib.import_module("bitstream_diffusion.modeling")

# The transformers `pipeline()` task "bitstream-text-generation" (imports transformers.pipelines only; no diffusers).
from .pipelines.bitstream_text_generation import register_bitstream_text_generation_task  # noqa: E402

register_bitstream_text_generation_task()
