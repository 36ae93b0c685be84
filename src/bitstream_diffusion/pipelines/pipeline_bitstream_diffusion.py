"""Text generation with CoBit: noise -> bits -> token ids -> text, with the entropy-rate scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ..codecs import CodeTokenizer, TextBitCodec
from ..modeling.modeling_sdt import SDTModel
from ..schedulers.scheduling_entropy_rate import BIT_CENTER, EntropyRateScheduler
from .bitstream_text_generation import write_transformers_entry_point

__all__ = ["BitstreamDiffusionPipeline", "BitstreamDiffusionPipelineOutput", "DEFAULT_NUM_INFERENCE_STEPS"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

OutputType = Literal["text", "token_ids", "bits", "probs"]
_OUTPUT_TYPES = ("text", "token_ids", "bits", "probs")
#: The paper's operating point: "256 NFE" is 255 noise levels = 255 denoiser calls (DESIGN §5.3).
DEFAULT_NUM_INFERENCE_STEPS = 255
_HALF_DTYPES = (torch.float16, torch.bfloat16)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler

        >>> pipe = BitstreamDiffusionPipeline.from_pretrained("path/to/cobit-s-lm1b")  # a converted or trained folder
        >>> gamma = EntropyRateScheduler.gamma_from_paper(0.2, nfe=256)  # the paper's gamma 0.2 at "256 NFE"
        >>> out = pipe(batch_size=4, num_inference_steps=255, gamma=gamma, generator=torch.Generator().manual_seed(0))
        >>> out.texts[0], out.nfe  # 255 noise levels -> 255 denoiser calls ("256 NFE" in the paper)

        >>> # a text prefix, clamped at every step (the released models are unconditional: best effort)
        >>> out = pipe(prompt="the city council", num_inference_steps=64, generator=torch.Generator().manual_seed(0))
        ```
"""


@dataclass
class BitstreamDiffusionPipelineOutput(BaseOutput):
    """
    Output of [`BitstreamDiffusionPipeline`].

    Args:
        texts (`list[str]` or `None`):
            Decoded samples with the layout's official rules (with `output_type="text"`).
        token_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token (LM1B, generic) or code (OWT) ids: the MSB-first readings of `bits`, before the decoder's invalid-id
            policy (LM1B wraps ids >= 30522 modulo 30522 only when decoding).
        bits (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)`, `uint8`):
            The final bits, `probs > 0.5`.
        probs (`torch.Tensor` of shape `(batch_size, sequence_length * bits_per_token)` or `None`):
            The final denoiser probabilities `D(x, terminal_sigma)`, float32 (with `output_type="probs"` or
            `return_probs=True`).
        nfe (`int`):
            Denoiser (model) calls actually made.
    """

    texts: list[str] | None
    token_ids: torch.LongTensor
    bits: torch.Tensor
    probs: torch.Tensor | None
    nfe: int


class BitstreamDiffusionPipeline(DiffusionPipeline):
    r"""
    Text generation with a CoBit continuous bitstream diffusion model (arXiv 2605.07013): unconditional, or with a
    text prefix (`prompt`) or known bits (`known_bits` / `known_mask`) clamped at every step.

    Each token is `bits_per_token` bits (MSB first); a sample of `sequence_length` tokens is a flat row of
    `sequence_length * bits_per_token` bits. The sampler starts from `0.5 + init_noise_sigma * noise`, runs the
    [`EntropyRateScheduler`] (Euler or Heun steps on the probability-flow ODE, EDM churn `gamma`, self-conditioning),
    thresholds the final denoiser probabilities at 0.5 and decodes the bits with the official codec of the layout.

    Cost: `num_inference_steps` noise levels are `num_inference_steps` denoiser calls with the Euler solver and carried
    self-conditioning (the paper's sampler; the last level is the final denoise at `terminal_sigma`). "refined"
    self-conditioning and the Heun solver each add one call per step (`scheduler.num_model_calls(n)`); `output.nfe`
    reports the calls made. The paper's "256 NFE" is `num_inference_steps=255` (DESIGN §5.3).

    Components:
        model ([`SDTModel`]): the Sequence Diffusion Transformer denoiser.
        scheduler ([`EntropyRateScheduler`]): the entropy-rate noise grid and the EDM churn sampler.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): bert-base-uncased (LM1B), GPT-2 (OWT) or any tokenizer.
        code_tokenizer ([`~bitstream_diffusion.codecs.CodeTokenizer`], *optional*): the OWT second-stage code tokenizer
            (a fast tokenizer with its meta in its config); only the `"owt"` layout uses it.

    Codec settings (stored in `model_index.json`):
        codec_layout (`str`): `"lm1b"`, `"owt"` or `"generic"` (default: `"owt"` with a code tokenizer, else
            `"generic"`); see [`~bitstream_diffusion.codecs.TextBitCodec`].
        codec_num_tokens (`int`, *optional*): tokens per row, the default `sequence_length` (default: the model's
            `max_position_embeddings`).
        codec_invalid_id_policy (`str`, *optional*), codec_skip_special_tokens (`bool`, *optional*),
        codec_clean_up_tokenization_spaces (`bool`, *optional*): decode rules; `None` keeps the layout's official
            default (LM1B: wrap ids modulo 30522 and keep special tokens; OWT: the official stop/skip/strip rules).
    """

    model_cpu_offload_seq = "model"
    _optional_components = ["code_tokenizer"]
    _callback_tensor_inputs = ["sample", "denoised", "self_cond"]

    model: SDTModel
    scheduler: EntropyRateScheduler

    def __init__(
        self,
        model: SDTModel,
        scheduler: EntropyRateScheduler,
        tokenizer,
        code_tokenizer=None,
        codec_layout: str | None = None,
        codec_num_tokens: int | None = None,
        codec_invalid_id_policy: str | None = None,
        codec_skip_special_tokens: bool | None = None,
        codec_clean_up_tokenization_spaces: bool | None = None,
    ):
        super().__init__()
        if codec_layout is None:
            codec_layout = "owt" if code_tokenizer is not None else "generic"
        if code_tokenizer is not None:  # folders saved by version 0.1 hold a plain fast tokenizer
            code_tokenizer = CodeTokenizer.from_legacy_tokenizer(code_tokenizer)
        self.register_modules(model=model, scheduler=scheduler, tokenizer=tokenizer, code_tokenizer=code_tokenizer)
        self.register_to_config(
            codec_layout=codec_layout,
            codec_num_tokens=codec_num_tokens,
            codec_invalid_id_policy=codec_invalid_id_policy,
            codec_skip_special_tokens=codec_skip_special_tokens,
            codec_clean_up_tokenization_spaces=codec_clean_up_tokenization_spaces,
        )
        self._codec: TextBitCodec | None = None
        self._codec_key: tuple | None = None
        if model is not None and tokenizer is not None:
            self.codec  # noqa: B018 -- validate the codec settings against the components now, not at the first call

    # ------------------------------------------------------------------------------------------------ the codec
    @property
    def codec(self) -> TextBitCodec:
        """The text <-> bits codec: the tokenizers, the model's `bits_per_token` and the codec settings."""
        config = self.config
        key = (
            id(self.tokenizer),
            id(self.code_tokenizer),
            self.model.config.bits_per_token,
            self.model.config.max_position_embeddings,
            config.codec_layout,
            config.codec_num_tokens,
            config.codec_invalid_id_policy,
            config.codec_skip_special_tokens,
            config.codec_clean_up_tokenization_spaces,
        )
        if self._codec is None or self._codec_key != key:
            self._codec = TextBitCodec(
                self.tokenizer,
                self.code_tokenizer if config.codec_layout == "owt" else None,
                layout=config.codec_layout,
                bits_per_token=self.model.config.bits_per_token,
                num_tokens=config.codec_num_tokens or self.model.config.max_position_embeddings,
                invalid_id_policy=config.codec_invalid_id_policy,
                skip_special_tokens=config.codec_skip_special_tokens,
                clean_up_tokenization_spaces=config.codec_clean_up_tokenization_spaces,
            )
            self._codec_key = key
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

    # ------------------------------------------------------------------------------------------------ inputs
    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        gamma: float | None,
        sequence_length: int,
        prompt: str | list[str] | None,
        known_bits: torch.Tensor | None,
        known_mask: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        autocast_dtype: torch.dtype | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> None:
        """Validate every argument of `__call__` up front; raises `ValueError`/`TypeError` saying what to pass."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` (number of samples) must be a positive integer, got {batch_size!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 2:
            raise ValueError(
                "`num_inference_steps` (noise levels, the last one being the final denoise at terminal_sigma; the "
                f"paper's '256 NFE' is 255) must be an integer >= 2, got {num_inference_steps!r}."
            )
        if gamma is not None and (
            isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < float("inf")
        ):
            raise ValueError(
                f"`gamma` (EDM per-step churn; 0 = deterministic) must be a finite number >= 0, got {gamma!r}. "
                "Convert the paper's value with `EntropyRateScheduler.gamma_from_paper(gamma, nfe)`."
            )
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
            raise ValueError(
                f"`sequence_length` (tokens per sample; bits = tokens x {self.bits_per_token}) must be a positive "
                f"integer, got {sequence_length!r}."
            )
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {list(_OUTPUT_TYPES)}, got {output_type!r}.")
        if isinstance(generator, list):
            if len(generator) != batch_size:
                raise ValueError(
                    f"Got a list of {len(generator)} generators for batch_size={batch_size}; pass one generator per "
                    "sample (or a single generator)."
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise TypeError("`generator` must be a `torch.Generator` or a list of them.")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a `torch.Generator` or a list of them, got {type(generator).__name__}."
            )
        if prompt is not None:
            if not isinstance(prompt, (str, list)) or (
                isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt)
            ):
                raise TypeError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}.")
            if isinstance(prompt, list) and len(prompt) != batch_size:
                raise ValueError(
                    f"Got {len(prompt)} prompts for batch_size={batch_size}; pass one prompt per sample or one string."
                )
        if (known_bits is None) != (known_mask is None):
            raise ValueError("Infilling needs both `known_bits` and `known_mask` (True = clamp this bit), or neither.")
        if known_bits is not None and prompt is not None:
            raise ValueError("Pass either `prompt` or `known_bits`/`known_mask`, not both.")
        if autocast_dtype is not None and autocast_dtype not in _HALF_DTYPES:
            raise ValueError(f"`autocast_dtype` must be torch.bfloat16, torch.float16 or None, got {autocast_dtype!r}.")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"`callback_on_step_end_tensor_inputs` has unknown entries {unknown}; choose from "
                    f"{self._callback_tensor_inputs}."
                )
        if sequence_length > self.model.config.max_position_embeddings:
            logger.warning(
                f"sequence_length={sequence_length} tokens is longer than the model's training rows "
                f"({self.model.config.max_position_embeddings}); RoPE accepts it, but quality is untested."
            )

    def _prompt_known_bits(self, prompts: list[str], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Clamp the bits of each prompt's ids (the layout's row prefix) at the start of its row."""
        num_bits = num_tokens * self.bits_per_token
        id_rows = self.codec.prompt_ids(prompts, num_tokens=num_tokens + 1)  # one more, to see a cut
        values = torch.zeros(len(prompts), num_bits)
        mask = torch.zeros(len(prompts), num_bits, dtype=torch.bool)
        for row, ids in enumerate(id_rows):
            if len(ids) > num_tokens:
                logger.warning(
                    f"Prompt {row} is longer than a sample ({num_tokens} tokens); it is cut to the sample length and "
                    "nothing is left to generate in that row."
                )
                ids = ids[:num_tokens]
            if not ids:
                continue
            prefix = self.codec.ids_to_bits(torch.tensor([ids], dtype=torch.long))[0]
            values[row, : prefix.numel()] = prefix.float()
            mask[row, : prefix.numel()] = True
        return (values, mask) if bool(mask.any()) else None

    def _infill_known_bits(
        self, known_bits: torch.Tensor, known_mask: torch.Tensor, batch_size: int, num_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Validate `known_bits`/`known_mask` and bring them to `[B, S]` (a per-token mask covers all its bits)."""
        num_bits = num_tokens * self.bits_per_token
        mask = torch.as_tensor(known_mask)
        values = torch.as_tensor(known_bits)
        if mask.dtype != torch.bool:
            raise TypeError(f"`known_mask` must be a bool tensor (True = clamp this bit), got {mask.dtype}.")
        if mask.dim() not in (1, 2) or values.dim() not in (1, 2):
            raise ValueError(
                f"`known_bits`/`known_mask` must be [num_bits] or [batch_size, num_bits], got "
                f"{tuple(values.shape)} and {tuple(mask.shape)}."
            )
        if mask.shape[-1] == num_tokens and num_tokens != num_bits:
            mask = mask.repeat_interleave(self.bits_per_token, dim=-1)  # a per-token mask
        values, mask = values.cpu().float(), mask.cpu()
        values = values.expand(batch_size, -1) if values.dim() == 1 else values
        mask = mask.expand(batch_size, -1) if mask.dim() == 1 else mask
        expected = (batch_size, num_bits)
        if tuple(values.shape) != expected or tuple(mask.shape) != expected:
            raise ValueError(
                f"`known_bits` must have shape [{num_bits}] or [{batch_size}, {num_bits}] "
                f"(sequence_length={num_tokens} tokens x {self.bits_per_token} bits) and `known_mask` the same or per "
                f"token [{num_tokens}] / [{batch_size}, {num_tokens}]; got {tuple(values.shape)} and "
                f"{tuple(mask.shape)}."
            )
        known = values[mask]
        if not bool(((known == 0) | (known == 1)).all()):
            raise ValueError(
                "`known_bits` must be 0 or 1 wherever `known_mask` is True (e.g. from `pipe.text_to_bits`)."
            )
        return (values.contiguous(), mask.contiguous()) if bool(mask.any()) else None

    # ------------------------------------------------------------------------------------------------ denoiser
    def _autocast(self, device: torch.device, autocast_dtype: torch.dtype | None):
        """bf16/fp16 autocast for the network (its matched filter stays float32); a null context in float32."""
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    def denoise(
        self,
        sample: torch.Tensor,
        sigma: torch.Tensor | float,
        self_cond: torch.Tensor | None,
        autocast_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """
        The denoiser `D(x, sigma) = sigmoid(network + matched filter)`: float32 bit probabilities `[B, S]`.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, num_bits)`): the noisy bits.
            sigma (`torch.Tensor` or `float`): the noise level, 0-d or one per row.
            self_cond (`torch.Tensor`, *optional*): the previous estimate (`None` = the official "no estimate").
            autocast_dtype (`torch.dtype`, *optional*): run the network under this autocast dtype.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        return self._denoise(sample, sigma, self_cond, self._autocast(sample.device, autocast_dtype))

    def _denoise(
        self, sample: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None, autocast
    ) -> torch.Tensor:
        with autocast:
            logits = self.model(sample, sigma.to(sample.device).expand(sample.shape[0]), self_cond).logits
        return torch.sigmoid(logits.float())

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        gamma: float | None = None,
        sequence_length: int | None = None,
        prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: OutputType = "text",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        known_bits: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
        return_probs: bool = False,
        autocast_dtype: torch.dtype | None = None,
    ) -> BitstreamDiffusionPipelineOutput | tuple:
        r"""
        Generate text.

        Args:
            batch_size (`int`, defaults to 1):
                Number of samples. With a list of prompts or `[B, S]` known bits it defaults to their number of rows.
            num_inference_steps (`int`, *optional*, defaults to 255):
                Noise levels of the grid, from the start sigma down to `terminal_sigma`: the denoiser calls with Euler
                and carried self-conditioning (Heun and "refined" add one call per step, see `output.nfe`). The
                paper's "256 NFE" is 255.
            gamma (`float`, *optional*):
                EDM per-step churn factor inside the scheduler's churn window (default: the scheduler's `gamma`; 0 is
                the deterministic sampler). The paper's "gamma 0.2 at 256 NFE" is
                `EntropyRateScheduler.gamma_from_paper(0.2, 256)` = 0.20079 per step on 255 levels.
            sequence_length (`int`, *optional*):
                Tokens per sample; bits = tokens x `bits_per_token`. Defaults to the codec's row length
                (`codec_num_tokens`, else the model's `max_position_embeddings`: 128 for LM1B, 1024 for OWT).
            prompt (`str` or `list[str]`, *optional*):
                A text prefix per sample, clamped at every step (the official prefix mechanism, REFERENCE_SAMPLING
                §3.8). The released models are unconditional, so the continuation is best effort.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                The noise source (CPU float32, `torch.randn` semantics). One generator draws the initial `[B, S]`
                noise, then one `[B, S]` draw per churned step, which reproduces the official sampler sample for
                sample. A list (one per sample) draws each sample's `[1, S]` slices from its own generator, so a
                sample does not depend on the batch it runs in.
            output_type (`str`, defaults to `"text"`):
                `"text"` decodes texts; `"token_ids"` and `"bits"` skip decoding; `"probs"` also returns the final
                probabilities. `token_ids` and `bits` are always returned.
            return_dict (`bool`, defaults to `True`):
                Return a [`BitstreamDiffusionPipelineOutput`], else the tuple `(texts, token_ids, bits, probs, nfe)`.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*):
                `fn(pipe, step_index, sigma, callback_kwargs) -> dict` called after every scheduler step, with the
                tensors named in `callback_on_step_end_tensor_inputs`; a returned `"sample"` or `"self_cond"` replaces
                the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["sample"]`):
                Tensors for the callback: `"sample"` (the state after the step), `"denoised"` (this call's `D`),
                `"self_cond"` (the next call's self-conditioning input).
            known_bits (`torch.Tensor` of shape `(num_bits,)` or `(batch_size, num_bits)`, *optional*):
                Infilling: the values (0/1) of the known bits, e.g. from `pipe.text_to_bits(text)`.
            known_mask (`torch.BoolTensor`, *optional*):
                Which bits are known (True = clamped at every step), the shape of `known_bits`, or per token
                (`(sequence_length,)` or `(batch_size, sequence_length)`).
            return_probs (`bool`, defaults to `False`):
                Also return the final probabilities.
            autocast_dtype (`torch.dtype`, *optional*):
                `torch.bfloat16` (or `torch.float16`) runs the network under autocast, as the official evaluation
                does; the matched filter, sigmoid and sampler stay float32. Defaults to the model's dtype when the
                model is in half precision, else float32 without autocast.

        Examples:

        Returns:
            [`BitstreamDiffusionPipelineOutput`] or `tuple`: `texts`, `token_ids`, `bits`, `probs`, `nfe`.
        """
        # 0. Defaults
        num_inference_steps = DEFAULT_NUM_INFERENCE_STEPS if num_inference_steps is None else num_inference_steps
        sequence_length = self.codec.num_tokens if sequence_length is None else sequence_length
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_inputs = callback_on_step_end_tensor_inputs or ["sample"]
        if batch_size == 1 and isinstance(prompt, list):
            batch_size = len(prompt)
        if batch_size == 1 and known_bits is not None and torch.as_tensor(known_bits).dim() == 2:
            batch_size = torch.as_tensor(known_bits).shape[0]
        if autocast_dtype is None and self.model.dtype in _HALF_DTYPES:
            autocast_dtype = self.model.dtype

        # 1. Check inputs
        self.check_inputs(
            batch_size,
            num_inference_steps,
            gamma,
            sequence_length,
            prompt,
            known_bits,
            known_mask,
            generator,
            output_type,
            autocast_dtype,
            callback_inputs,
        )
        num_bits = sequence_length * self.bits_per_token
        if prompt is not None:
            prompts = [prompt] * batch_size if isinstance(prompt, str) else prompt
            known = self._prompt_known_bits(prompts, sequence_length)
        elif known_bits is not None:
            known = self._infill_known_bits(known_bits, known_mask, batch_size, sequence_length)
        else:
            known = None

        # 2. Noise levels
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, gamma=gamma)
        use_self_cond = scheduler.config.self_conditioning != "none"

        # 3. Initial state: x = 0.5 + sigma_0 * n0, with n0 the first [B, S] draw (CPU float32 unless the generator
        # lives elsewhere), and the all-zeros self-conditioning estimate of the official sampler.
        device = self.model.device if not hasattr(self.model, "_hf_hook") else self._execution_device
        first_generator = generator[0] if isinstance(generator, list) else generator
        noise_device = first_generator.device if first_generator is not None else torch.device("cpu")
        noise = randn_tensor((batch_size, num_bits), generator=generator, device=noise_device, dtype=torch.float32)
        sample = (noise * scheduler.init_noise_sigma + BIT_CENTER).to(device)
        self_cond = torch.zeros_like(sample) if use_self_cond else None
        if known is not None:
            values, mask = (t.to(device) for t in known)
            sample = torch.where(mask, values, sample)
            if self_cond is not None:
                self_cond = torch.where(mask, values, self_cond)

        # 4. Denoising loop: churn -> model call -> scheduler step (-> refining call)
        autocast = self._autocast(device, autocast_dtype)
        nfe = 0
        denoised = sample
        self._num_timesteps = len(scheduler.timesteps)
        with self.progress_bar(total=scheduler.num_model_calls(num_inference_steps)) as progress_bar:
            for i in range(len(scheduler.timesteps)):
                sample_hat, sigma_hat = scheduler.churn(sample, generator=generator)
                if known is not None:
                    sample_hat = torch.where(mask, values, sample_hat)
                denoised = self._denoise(sample_hat, sigma_hat, self_cond, autocast)
                nfe += 1
                if known is not None:
                    denoised = torch.where(mask, values, denoised)
                step = scheduler.step(denoised, sigma_hat, sample_hat)
                sample = step.prev_sample
                self_cond = step.self_cond
                if step.refine_sigma is not None:  # "refined" self-conditioning: D(x_next, sigma_next, D)
                    progress_bar.update()
                    self_cond = self._denoise(sample, step.refine_sigma, self_cond, autocast)
                    nfe += 1
                    if not bool(torch.isfinite(self_cond.sum(dtype=torch.float32))):  # as the scheduler checks D
                        raise ValueError(
                            f"The model output of the refining call at sigma={step.refine_sigma.item():.6g} contains "
                            "NaN or infinite values; check the model's weights and precision."
                        )
                    if known is not None:
                        self_cond = torch.where(mask, values, self_cond)

                if callback_on_step_end is not None:
                    local = {"sample": sample, "denoised": denoised, "self_cond": self_cond}
                    callback_kwargs = {name: local[name] for name in callback_inputs}
                    callback_outputs = callback_on_step_end(self, i, sigma_hat, callback_kwargs) or {}
                    sample = callback_outputs.pop("sample", sample)
                    self_cond = callback_outputs.pop("self_cond", self_cond)
                progress_bar.update()

        # 5. Bits -> ids -> text
        probs = denoised.float().cpu()
        bits = (probs > 0.5).to(torch.uint8)
        token_ids = self.codec.bits_to_ids(bits)
        texts = self.codec.decode_ids(token_ids) if output_type == "text" else None
        if not return_probs and output_type != "probs":
            probs = None
        if getattr(self, "_all_hooks", None):  # only offloading installs hooks; skip the component walk otherwise
            self.maybe_free_model_hooks()

        if not return_dict:
            return (texts, token_ids, bits, probs, nfe)
        return BitstreamDiffusionPipelineOutput(texts=texts, token_ids=token_ids, bits=bits, probs=probs, nfe=nfe)

    @property
    def num_timesteps(self) -> int:
        """Scheduler calls of the last run (Heun counts its correction calls)."""
        return self._num_timesteps

    # ------------------------------------------------------------------------------------------------ saving
    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """
        Write `model_index.json` and, next to it, the `config.json` through which
        `transformers.pipeline("bitstream-text-generation", model=folder)` finds this folder (it points at the SDT in
        `model/`; diffusers ignores it).
        """
        os.makedirs(save_directory, exist_ok=True)
        write_transformers_entry_point(save_directory)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
