"""bitstream-diffusion: CoBit continuous bitstream diffusion language models (arXiv 2605.07013) for Hugging Face.

Importing the package registers `SDTConfig`/`SDTModel` with transformers' `AutoConfig`/`AutoModel` (model type
`"bitstream_sdt"`) and the transformers `pipeline()` task `"bitstream-text-generation"`; both need the modeling code
(torch + transformers), which is therefore imported eagerly. The diffusers-based components (scheduler, pipeline)
and the codecs load on first access, so `import bitstream_diffusion` does not pay for diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .modeling import SDT_PRESETS, SDTConfig, SDTModel, SDTOutput
from .pipelines.bitstream_text_generation import register_bitstream_text_generation_task

__version__ = "0.1.0"

_LAZY_ATTRIBUTES: dict[str, str] = {
    "EntropyRateScheduler": "bitstream_diffusion.schedulers.scheduling_entropy_rate",
    "BitstreamDiffusionPipeline": "bitstream_diffusion.pipelines.pipeline_bitstream_diffusion",
    "BitstreamDiffusionPipelineOutput": "bitstream_diffusion.pipelines.pipeline_bitstream_diffusion",
    "TextBitCodec": "bitstream_diffusion.codecs.text_codec",
    "CodeTokenizer": "bitstream_diffusion.codecs.code_tokenizer",
}

__all__ = ["SDT_PRESETS", "SDTConfig", "SDTModel", "SDTOutput", "__version__", *_LAZY_ATTRIBUTES]

if TYPE_CHECKING:
    from .codecs.code_tokenizer import CodeTokenizer
    from .codecs.text_codec import TextBitCodec
    from .pipelines.pipeline_bitstream_diffusion import BitstreamDiffusionPipeline, BitstreamDiffusionPipelineOutput
    from .schedulers.scheduling_entropy_rate import EntropyRateScheduler


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitstream_diffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


register_bitstream_text_generation_task()
