"""The CoBit Sequence Diffusion Transformer as a transformers model."""

from .configuration_sdt import SDT_PRESETS, SDTConfig
from .modeling_sdt import SDTModel, SDTOutput, SDTPreTrainedModel, matched_filter_logits

__all__ = ["SDTConfig", "SDT_PRESETS", "SDTModel", "SDTOutput", "SDTPreTrainedModel", "matched_filter_logits"]
