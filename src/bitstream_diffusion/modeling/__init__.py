"""The CoBit Sequence Diffusion Transformer as a transformers model.

`AutoConfig`/`AutoModel` learn `"bitstream_sdt"` as soon as both they and these classes are loaded
(`bitstream_diffusion._auto_registration`); saved folders name the classes in their `auto_map`, for
`trust_remote_code` loading without this package. Names load on first access, so that importing the configuration
does not import the model (and torch's model code).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..utils.lazy_exports import lazy_exports

_LAZY_ATTRIBUTES: dict[str, str] = {
    "SDTConfig": ".configuration_sdt",
    "SDT_PRESETS": ".configuration_sdt",
    "SDTFoldedWeights": ".modeling_sdt",
    "SDTModel": ".modeling_sdt",
    "SDTOutput": ".modeling_sdt",
    "SDTPreTrainedModel": ".modeling_sdt",
    "matched_filter_logits": ".modeling_sdt",
}

__all__ = [
    "matched_filter_logits",
    "register_with_transformers",
    "SDT_PRESETS",
    "SDTConfig",
    "SDTFoldedWeights",
    "SDTModel",
    "SDTOutput",
    "SDTPreTrainedModel",
]

if TYPE_CHECKING:
    from .configuration_sdt import SDT_PRESETS, SDTConfig
    from .modeling_sdt import SDTFoldedWeights, SDTModel, SDTOutput, SDTPreTrainedModel, matched_filter_logits


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRIBUTES)


def register_with_transformers() -> None:
    """Make `AutoConfig`/`AutoModel` resolve `"bitstream_sdt"` now. Normally automatic (any import order); kept for
    code that called it explicitly. Idempotent."""
    from transformers import AutoConfig, AutoModel  # noqa: F401  (loading them registers what is loaded)

    from .._auto_registration import register_when_loaded

    for module in (".configuration_sdt", ".modeling_sdt"):
        register_when_loaded(importlib.import_module(module, __name__).__name__)
