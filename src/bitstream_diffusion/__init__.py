"""bitstream-diffusion: CoBit continuous bitstream diffusion language models (arXiv 2605.07013) for Hugging Face.

Importing the package is cheap: every public name loads on first access. It registers `SDTConfig`/`SDTModel`
with transformers' `AutoConfig`/`AutoModel` (model type `"bitstream_sdt"`) and the `pipeline()` task
`"bitstream-text-generation"` as soon as transformers loads those classes (see `_auto_registration`), so
`AutoModel.from_pretrained(folder)` and `pipeline("bitstream-text-generation", model=folder)` work after
`import bitstream_diffusion`, in any import order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._auto_registration import install_auto_registration
from .utils.lazy_exports import lazy_exports

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

__all__ = [
    "__version__",
    "BitstreamDiffusionPipeline",
    "BitstreamDiffusionPipelineOutput",
    "CodeTokenizer",
    "EntropyRateScheduler",
    "SDT_PRESETS",
    "SDTConfig",
    "SDTModel",
    "SDTOutput",
    "TextBitCodec",
]

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)


install_auto_registration()
