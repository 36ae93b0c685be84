"""Text generation with CoBit: noise -> bits -> token ids -> text, with the entropy-rate scheduler."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from ..codecs import CodeTokenizer
from ..modeling.modeling_sdt import SDTModel
from ..schedulers.scheduling_entropy_rate import BIT_CENTER, EntropyRateScheduler
from .codec_mixin import TextBitCodecMixin
from .known_bits import KnownBits
from .pipeline_folder import write_transformers_entry_point
from .pipeline_output import BitstreamDiffusionPipelineOutput

__all__ = ["BitstreamDiffusionPipeline", "BitstreamDiffusionPipelineOutput", "DEFAULT_NUM_INFERENCE_STEPS"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

OutputType = Literal["text", "token_ids", "bits", "probs"]
_OUTPUT_TYPES = ("text", "token_ids", "bits", "probs")
#: The paper's operating point: "256 NFE" is 255 noise levels = 255 denoiser calls (the official evaluation asks
#: for `nfe - 1` levels; see docs/design.md#nfe-is-counted-as-model-calls).
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


class BitstreamDiffusionPipeline(TextBitCodecMixin, DiffusionPipeline):
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
    reports the calls made. The paper's "256 NFE" is `num_inference_steps=255`
    (docs/design.md#nfe-is-counted-as-model-calls).

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
            The codec (`pipe.codec`) follows these settings and the components ([`TextBitCodecMixin`]).
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
        self._codec = self._build_codec()  # a codec that cannot hold the vocabulary fails here, not at the first call

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

    def prepare_known_bits(
        self,
        batch_size: int,
        sequence_length: int,
        prompt: str | list[str] | None = None,
        known_bits: torch.Tensor | None = None,
        known_mask: torch.Tensor | None = None,
    ) -> KnownBits | None:
        """
        The bits clamped at every step: each prompt's bits at the start of its row, or the infilling bits; `None`
        when nothing is known. See [`~pipelines.known_bits.KnownBits`] for the accepted shapes.
        """
        if prompt is not None:
            prompts = [prompt] * batch_size if isinstance(prompt, str) else prompt
            return KnownBits.from_prompts(self.codec, prompts, sequence_length)
        if known_bits is not None:
            return KnownBits.from_infill(known_bits, known_mask, batch_size, sequence_length, self.bits_per_token)
        return None

    def prepare_latents(
        self,
        batch_size: int,
        num_bits: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """
        The initial state `0.5 + init_noise_sigma * noise`, float32 `[batch_size, num_bits]` on `device`.

        The noise is the run's first draw: one `[batch_size, num_bits]` `torch.randn` draw from `generator` (or a
        `[1, num_bits]` slice from each generator of a list), float32 on the generator's device (CPU without one), as
        the official sampler draws it (docs/design.md#random-draws). Call `scheduler.set_timesteps` first.
        """
        first_generator = generator[0] if isinstance(generator, list) else generator
        noise_device = first_generator.device if first_generator is not None else torch.device("cpu")
        noise = randn_tensor((batch_size, num_bits), generator=generator, device=noise_device, dtype=torch.float32)
        return (noise * self.scheduler.init_noise_sigma + BIT_CENTER).to(device)

    def _denoise(
        self, sample: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None, autocast
    ) -> torch.Tensor:
        """One model call: `D(x, sigma) = sigmoid(network + matched filter)`, float32 bit probabilities `[B, S]`."""
        with autocast:
            logits = self.model(sample, sigma.to(sample.device).expand(sample.shape[0]), self_cond).logits
        return torch.sigmoid(logits.float())

    def _denoising_loop(
        self,
        sample: torch.Tensor,
        known: KnownBits | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        autocast_dtype: torch.dtype | None,
        callback_on_step_end: Callable | None,
        callback_inputs: list[str],
    ) -> tuple[torch.Tensor, int]:
        """
        Run the scheduler's levels from `sample` (`prepare_latents`): churn -> model call -> scheduler step (->
        refining call). Known bits are clamped in the state, the model's estimate and the self-conditioning input.

        Returns the last model call's probabilities `[B, S]` (at `terminal_sigma`) and the number of model calls.
        """
        scheduler = self.scheduler
        autocast = (
            contextlib.nullcontext()
            if autocast_dtype is None
            else torch.autocast(device_type=sample.device.type, dtype=autocast_dtype)
        )

        def clamp(bits: torch.Tensor | None) -> torch.Tensor | None:
            return bits if known is None or bits is None else known.clamp(bits)

        # The official sampler's first self-conditioning input is all zeros, not "no estimate"
        # (docs/design.md#self-conditioning-none-versus-zeros).
        self_cond = torch.zeros_like(sample) if scheduler.config.self_conditioning != "none" else None
        sample, self_cond = clamp(sample), clamp(self_cond)
        nfe = 0
        denoised = sample
        with self.progress_bar(total=scheduler.num_model_calls(num_inference_steps)) as progress_bar:
            for i in range(len(scheduler.timesteps)):
                sample_hat, sigma_hat = scheduler.churn(sample, generator=generator)
                sample_hat = clamp(sample_hat)
                denoised = clamp(self._denoise(sample_hat, sigma_hat, self_cond, autocast))
                nfe += 1
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
                    self_cond = clamp(self_cond)

                if callback_on_step_end is not None:
                    local = {"sample": sample, "denoised": denoised, "self_cond": self_cond}
                    callback_kwargs = {name: local[name] for name in callback_inputs}
                    callback_outputs = callback_on_step_end(self, i, sigma_hat, callback_kwargs) or {}
                    sample = callback_outputs.pop("sample", sample)
                    self_cond = callback_outputs.pop("self_cond", self_cond)
                progress_bar.update()
        return denoised, nfe

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
                A text prefix per sample: its bits are clamped at every step, the way the official sampler
                conditions on a prefix. The released models are unconditional, so the continuation is best effort.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                The noise source (CPU float32, `torch.randn` semantics). One generator draws the initial `[B, S]`
                noise, then one `[B, S]` draw per churned step, which reproduces the official sampler sample for
                sample. A list (one per sample) draws each sample's `[1, S]` slices from its own generator, so a
                sample does not depend on the batch it runs in (docs/design.md#random-draws).
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

        # 2. Known bits (a prompt or infilling), clamped at every step
        known = self.prepare_known_bits(batch_size, sequence_length, prompt, known_bits, known_mask)

        # 3. Noise levels
        self.scheduler.set_timesteps(num_inference_steps, gamma=gamma)
        self._num_timesteps = len(self.scheduler.timesteps)

        # 4. Initial state (the first noise draw)
        device = self.model.device if not hasattr(self.model, "_hf_hook") else self._execution_device
        sample = self.prepare_latents(batch_size, sequence_length * self.bits_per_token, device, generator)
        if known is not None:
            known = known.to(device)

        # 5. Denoising loop (one noise draw per churned step)
        denoised, nfe = self._denoising_loop(
            sample, known, num_inference_steps, generator, autocast_dtype, callback_on_step_end, callback_inputs
        )

        # 6. Bits -> ids -> text
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
