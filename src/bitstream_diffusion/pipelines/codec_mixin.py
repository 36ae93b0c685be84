"""The text <-> bits codec of a pipeline, kept in step with the pipeline's components and codec settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..codecs.text_codec import TextBitCodec

__all__ = ["TextBitCodecMixin"]

#: What the codec is built from: these components and these settings of `model_index.json`.
_CODEC_COMPONENTS = ("model", "tokenizer", "code_tokenizer")
_CODEC_SETTINGS = (
    "codec_layout",
    "codec_num_tokens",
    "codec_invalid_id_policy",
    "codec_skip_special_tokens",
    "codec_clean_up_tokenization_spaces",
)


class TextBitCodecMixin:
    """
    Gives a diffusers pipeline its [`~bitstream_diffusion.codecs.TextBitCodec`] (`pipe.codec`), `text_to_bits` and
    `bits_to_text`.

    The codec is built from the components `model` (its `bits_per_token`, and `max_position_embeddings` as the default
    row length), `tokenizer` and `code_tokenizer` and from the `codec_*` settings of the pipeline config. The pipeline
    builds it at the end of `__init__` (`self._codec = self._build_codec()`); after that it is rebuilt only when one of
    those inputs changes: a component replaced (`pipe.tokenizer = ...`, or several at once with
    `pipe.register_modules(model=..., tokenizer=...)`) or a setting registered
    (`pipe.register_to_config(codec_num_tokens=...)`). A change the codec cannot take (e.g. a vocabulary wider than
    `bits_per_token` bits) raises before anything is changed.
    """

    def _build_codec(self, **changes) -> TextBitCodec | None:
        """
        The codec of the current components and codec settings with `changes` (components or settings about to be
        set) applied; `None` while the model or the tokenizer is missing. Raises what `TextBitCodec` raises.
        """
        parts = {name: self.__dict__.get(name) for name in _CODEC_COMPONENTS}
        parts.update({name: self.config.get(name) for name in _CODEC_SETTINGS})
        parts.update(changes)
        model, tokenizer, layout = parts["model"], parts["tokenizer"], parts["codec_layout"]
        if model is None or tokenizer is None:
            return None
        return TextBitCodec(
            tokenizer,
            parts["code_tokenizer"] if layout == "owt" else None,
            layout=layout,
            bits_per_token=model.config.bits_per_token,
            num_tokens=parts["codec_num_tokens"] or model.config.max_position_embeddings,
            invalid_id_policy=parts["codec_invalid_id_policy"],
            skip_special_tokens=parts["codec_skip_special_tokens"],
            clean_up_tokenization_spaces=parts["codec_clean_up_tokenization_spaces"],
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # `pipe.tokenizer = ...` lands here: build the new codec first, so that a failure changes nothing.
        if name in _CODEC_COMPONENTS and "_codec" in self.__dict__:
            codec = self._build_codec(**{name: value})
            super().__setattr__(name, value)
            self._codec = codec
        else:
            super().__setattr__(name, value)

    def register_modules(self, **kwargs) -> None:
        changes = {name: value for name, value in kwargs.items() if name in _CODEC_COMPONENTS}
        if not changes or "_codec" not in self.__dict__:  # nothing the codec reads, or still in `__init__`
            super().register_modules(**kwargs)
            return
        codec = self._build_codec(**changes)  # all new components together: one at a time they may not fit
        del self.__dict__["_codec"]  # no rebuild per component while diffusers sets them one by one
        try:
            super().register_modules(**kwargs)
        finally:
            self._codec = codec

    def register_to_config(self, **kwargs) -> None:
        changes = {name: value for name, value in kwargs.items() if name in _CODEC_SETTINGS}
        if not changes or "_codec" not in self.__dict__:
            super().register_to_config(**kwargs)
            return
        codec = self._build_codec(**changes)
        super().register_to_config(**kwargs)
        self._codec = codec

    @property
    def codec(self) -> TextBitCodec:
        """The text <-> bits codec: the tokenizers, the model's `bits_per_token` and the codec settings."""
        if self._codec is None:
            raise ValueError(
                "This pipeline has no codec: it needs a `model` and a `tokenizer`. Set them with "
                "`pipe.register_modules(model=..., tokenizer=...)` or load a complete pipeline folder."
            )
        return self._codec

    @property
    def bits_per_token(self) -> int:
        """Bits per token (the model's patch size): 15 for LM1B, 16 for OWT."""
        return self.model.config.bits_per_token

    def text_to_bits(self, texts: str | Sequence[str], sequence_length: int | None = None) -> torch.Tensor:
        """
        Encode texts as the model's training rows: `[B, sequence_length * bits_per_token]` {0, 1} `uint8`, MSB first,
        exactly the official layout (LM1B: BERT ids, lines joined by `[SEP]`, `[PAD]`-padded; OWT: one window
        `[EOS] + ids + [EOS]` re-coded by the code tokenizer, `[EOSEQ]`, `[PAD]`).

        Args:
            texts (`str` or `list[str]`): the texts.
            sequence_length (`int`, *optional*): tokens per row (default: the codec's row length).
        """
        return self.codec.text_to_bits(texts, sequence_length)

    def bits_to_text(self, bits: torch.Tensor) -> list[str]:
        """Decode `[B, S]` (or `[S]`) bits, or probabilities thresholded at 0.5, with the layout's official rules."""
        return self.codec.bits_to_text(bits)
