"""The CoBit Sequence Diffusion Transformer as a transformers model (registered with AutoConfig/AutoModel)."""

from .configuration_sdt import SDT_PRESETS, SDTConfig
from .modeling_sdt import SDTFoldedWeights, SDTModel, SDTOutput, SDTPreTrainedModel, matched_filter_logits

__all__ = [
    "SDTConfig",
    "SDT_PRESETS",
    "SDTFoldedWeights",
    "SDTModel",
    "SDTOutput",
    "SDTPreTrainedModel",
    "matched_filter_logits",
    "register_with_transformers",
]


def register_with_transformers() -> None:
    """Make `AutoConfig`/`AutoModel` resolve `"bitstream_sdt"`, and saved folders carry an `auto_map` for
    `trust_remote_code` loading without this package."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register(SDTConfig.model_type, SDTConfig)
        AutoModel.register(SDTConfig, SDTModel)
    except ValueError:  # already registered
        pass
    SDTConfig.register_for_auto_class()
    SDTModel.register_for_auto_class("AutoModel")


register_with_transformers()
