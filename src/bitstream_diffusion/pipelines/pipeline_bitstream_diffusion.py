"""Text generation with CoBit: noise -> bits -> token ids -> text, with the entropy-rate scheduler."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel

from ..codecs.code_tokenizer import CodeTokenizer
from .batching import MaxBatchSize, auto_max_batch_size, batch_chunks
from .codec_mixin import TextBitCodecMixin
from .known_bits import KnownBits
from .likelihood import LikelihoodMixin
from .pipeline_inputs import HALF_DTYPES, PipelineInputsMixin
from .pipeline_output import BitstreamDiffusionPipelineOutput, OutputType
from .random_streams import derive_sample_generators
from .remote_code import RemoteCodeMixin

if TYPE_CHECKING:
    from ..modeling.modeling_sdt import SDTModel
    from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler

__all__ = ["BitstreamDiffusionPipeline", "BitstreamDiffusionPipelineOutput", "DEFAULT_NUM_INFERENCE_STEPS"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The paper's operating point: "256 NFE" is 255 noise levels = 255 denoiser calls (the official evaluation asks
#: for `nfe - 1` levels; see docs/design.md#nfe-is-counted-as-model-calls).
DEFAULT_NUM_INFERENCE_STEPS = 255

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler

        >>> pipe = BitstreamDiffusionPipeline.from_pretrained("path/to/cobit-s-lm1b")  # a converted or trained folder
        >>> gamma = EntropyRateScheduler.gamma_from_paper(0.2, nfe=256)  # the paper's gamma 0.2 at "256 NFE"
        >>> out = pipe(batch_size=4, num_inference_steps=255, gamma=gamma, generator=torch.Generator().manual_seed(0))
        >>> out.texts[0], out.nfe  # 255 noise levels -> 255 denoiser calls ("256 NFE" in the paper)
        >>> texts = pipe(batch_size=4, num_inference_steps=255, return_dict=False)[0]  # element 0: the output_type

        >>> # a text prefix, clamped at every step (the released models are unconditional: best effort)
        >>> out = pipe(prompt="the city council", num_inference_steps=64, generator=torch.Generator().manual_seed(0))

        >>> # 1024 samples in chunks that fit in memory; one generator per sample gives the bits of one big batch
        >>> generators = [torch.Generator().manual_seed(i) for i in range(1024)]
        >>> out = pipe(batch_size=1024, generator=generators, max_batch_size="auto", output_type="token_ids")
        ```
"""


class BitstreamDiffusionPipeline(
    RemoteCodeMixin, PipelineInputsMixin, TextBitCodecMixin, LikelihoodMixin, DiffusionPipeline
):
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
    reports the calls made per sample. The paper's "256 NFE" is `num_inference_steps=255`
    (docs/design.md#nfe-is-counted-as-model-calls).

    Memory: `max_batch_size` (an int, or `"auto"` from the free CUDA memory) runs a large batch as chunks, one after
    another; with one generator per sample the bits are those of one big batch.

    Folders: `save_pretrained` writes, besides the components, the code of the pipeline, its codec and its scheduler
    (from this package's modules, see [`~pipelines.remote_code`]), so `diffusers.DiffusionPipeline.from_pretrained(
    folder, trust_remote_code=True)` loads a folder without this package and gives the same bits for the same seed;
    `BitstreamDiffusionPipeline.from_pretrained(folder)` loads it with this package's classes.

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
    _callback_tensor_inputs = ["sample", "latents", "denoised", "self_cond"]

    model: SDTModel
    scheduler: EntropyRateScheduler

    def __init__(
        self,
        model: PreTrainedModel,  # an SDTModel; annotated with its base classes, which resolve wherever this file runs
        scheduler: SchedulerMixin,  # an EntropyRateScheduler (or any scheduler with its `churn` loop)
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
        code_tokenizer = _as_code_tokenizer(code_tokenizer)
        self.register_modules(model=model, scheduler=scheduler, tokenizer=tokenizer, code_tokenizer=code_tokenizer)
        self.register_to_config(
            codec_layout=codec_layout,
            codec_num_tokens=codec_num_tokens,
            codec_invalid_id_policy=codec_invalid_id_policy,
            codec_skip_special_tokens=codec_skip_special_tokens,
            codec_clean_up_tokenization_spaces=codec_clean_up_tokenization_spaces,
        )
        self._codec = self._build_codec()  # a codec that cannot hold the vocabulary fails here, not at the first call
        self._model_call_kwargs: dict[str, Any] = {}  # set per run by `_denoising_loop`

    # ------------------------------------------------------------------------------------------------ inputs
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
        return (noise * self.scheduler.init_noise_sigma + self.scheduler.init_sample_mean).to(device)

    def _denoise(
        self, sample: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None, autocast
    ) -> torch.Tensor:
        """One model call: `D(x, sigma) = sigmoid(network + matched filter)`, float32 bit probabilities `[B, S]`."""
        with autocast:
            sigma = sigma.to(sample.device).expand(sample.shape[0])
            logits = self.model(sample, sigma, self_cond, **self._model_call_kwargs).logits
        return torch.sigmoid(logits.float())

    def _loop_model_call_kwargs(self) -> dict[str, Any]:
        """
        Keywords of every model call in the loop. A model that offers it (`check_values`) skips its per-call value
        checks, each a host sync: the pipeline made the inputs itself (noise, scheduler levels, validated known bits)
        and the scheduler checks every output once per run.
        """
        try:
            parameters = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):  # a wrapped model without a readable signature
            return {}
        return {"check_values": False} if "check_values" in parameters else {}

    def _denoising_loop(
        self,
        sample: torch.Tensor,
        known: KnownBits | None,
        generator: torch.Generator | list[torch.Generator] | None,
        autocast_dtype: torch.dtype | None,
        callback_on_step_end: Callable | None,
        callback_inputs: list[str],
        progress_bar,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """
        Run the scheduler's levels from `sample` (`prepare_latents`; call `scheduler.set_timesteps` first): churn ->
        model call -> scheduler step (-> refining call). Known bits are clamped in the state, the model's estimate
        and the self-conditioning input. Nothing is read back from the device per step: the model skips its per-call
        value checks when it can, and the scheduler checks every model output once, at the final call.

        Returns the final state `[B, S]`, the last model call's probabilities `[B, S]` (at `terminal_sigma`) and the
        number of model calls.
        """
        scheduler = self.scheduler
        self._model_call_kwargs = self._loop_model_call_kwargs()
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
                scheduler.record_model_output(self_cond, step.refine_sigma)  # checked with the run, no sync here
                self_cond = clamp(self_cond)

            if callback_on_step_end is not None:
                sample, self_cond = self._run_callback(
                    callback_on_step_end, callback_inputs, i, sigma_hat, sample, denoised, self_cond
                )
            progress_bar.update()
        return sample, denoised, nfe

    def _run_callback(
        self,
        callback_on_step_end: Callable,
        callback_inputs: list[str],
        step_index: int,
        sigma: torch.Tensor,
        sample: torch.Tensor,
        denoised: torch.Tensor,
        self_cond: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Call `callback_on_step_end(self, step_index, sigma, callback_kwargs)` and take back the state and the
        self-conditioning input it returns. `"latents"` (the diffusers name) and `"sample"` are the same tensor; a
        callback may return either (both only if they are the same tensor).
        """
        local = {"sample": sample, "latents": sample, "denoised": denoised, "self_cond": self_cond}
        callback_outputs = callback_on_step_end(self, step_index, sigma, {k: local[k] for k in callback_inputs}) or {}
        replacements = [
            callback_outputs[name] for name in ("sample", "latents") if callback_outputs.get(name) is not None
        ]
        replacements = [tensor for tensor in replacements if tensor is not sample]
        if len(replacements) == 2 and replacements[0] is not replacements[1]:
            raise ValueError(
                "The callback returned different tensors as `sample` and `latents`, which name the same state; "
                "return one of them."
            )
        return (replacements[0] if replacements else sample), callback_outputs.get("self_cond", self_cond)

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
        max_batch_size: MaxBatchSize = None,
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
                The noise source (float32, `torch.randn` semantics). One generator draws the initial `[B, S]`
                noise, then one `[B, S]` draw per churned step, which reproduces the official sampler sample for
                sample. A list (one per sample) draws each sample's `[1, S]` slices from its own generator, so a
                sample does not depend on the batch it runs in (docs/design.md#random-draws). With `max_batch_size`
                set, a single generator is first turned into one generator per sample (see `max_batch_size`).
            output_type (`str`, defaults to `"text"`):
                The primary output, element 0 of the output as a tuple: `"text"` (decoded `texts`), `"token_ids"`,
                `"bits"` (no decoding), `"probs"` (the final probabilities), or `"latent"` (the sampler's final state
                on the model's device, as diffusers returns latents). `token_ids` and `bits` are always returned.
            return_dict (`bool`, defaults to `True`):
                Return a [`BitstreamDiffusionPipelineOutput`], else its tuple `(primary, token_ids, bits, probs,
                nfe)`, where `primary` is the output of `output_type` (`texts` for "text") and `probs` is `None`
                unless asked for; `pipe(..., return_dict=False)[0]` equals `pipe(...)[0]`.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*):
                `fn(pipe, step_index, sigma, callback_kwargs) -> dict` called after every scheduler step, with the
                tensors named in `callback_on_step_end_tensor_inputs`; a returned `"sample"` (or `"latents"`) or
                `"self_cond"` replaces the pipeline's. `step_index` counts the scheduler steps of one run
                (`0 .. pipe.num_timesteps - 1`); a batch split into chunks runs the steps once per chunk, and the
                callback sees the rows `pipe.chunk_rows` of the batch.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["sample", "latents"]`):
                Tensors for the callback: `"sample"` (the state after the step) or its diffusers name `"latents"`,
                `"denoised"` (this call's `D`), `"self_cond"` (the next call's self-conditioning input).
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
            max_batch_size (`int` or `"auto"`, *optional*):
                The most samples run at once: a larger `batch_size` runs as chunks of this size, one after another,
                with one progress bar over all of them. `"auto"` sizes the chunks from the free CUDA memory and the
                model config (on other devices the batch runs whole). With one generator per sample (a list) the
                bits are those of one big batch. A single generator cannot be split that way (it draws the whole
                batch at once), so with `max_batch_size` set it is turned into one generator per sample, derived from
                one draw of it (`random_streams.derive_sample_generators`): the samples then depend on the seed only,
                not on the chunk size, the free memory or the machine, but they differ from a run without
                `max_batch_size`. Without a generator the chunks draw from torch's global generator in turn.

        Examples:

        Returns:
            [`BitstreamDiffusionPipelineOutput`] or `tuple` `(primary, token_ids, bits, probs, nfe)`.
        """
        # 0. Defaults
        num_inference_steps = DEFAULT_NUM_INFERENCE_STEPS if num_inference_steps is None else num_inference_steps
        sequence_length = self.codec.num_tokens if sequence_length is None else sequence_length
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_inputs = callback_on_step_end_tensor_inputs or ["sample", "latents"]
        if batch_size == 1 and isinstance(prompt, list):
            batch_size = len(prompt)
        if batch_size == 1 and known_bits is not None and torch.as_tensor(known_bits).dim() == 2:
            batch_size = torch.as_tensor(known_bits).shape[0]
        if autocast_dtype is None and self.model.dtype in HALF_DTYPES:
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
            max_batch_size,
        )

        # 2. Known bits (a prompt or infilling), clamped at every step
        known = self.prepare_known_bits(batch_size, sequence_length, prompt, known_bits, known_mask)

        # 3. Chunks of the batch, each with its own generators
        device = self.model.device if not hasattr(self.model, "_hf_hook") else self._execution_device
        if max_batch_size is not None and isinstance(generator, torch.Generator):  # "auto" too: machine-independent
            generator = derive_sample_generators(generator, batch_size)
        if max_batch_size == "auto":
            max_batch_size = auto_max_batch_size(self.model.config, sequence_length, device)
        chunks = batch_chunks(batch_size, max_batch_size)

        finals, probs = [], []
        calls_per_run = self.scheduler.num_model_calls(num_inference_steps)
        with self.progress_bar(total=len(chunks) * calls_per_run) as progress_bar:
            for rows in chunks:
                self._chunk_rows = rows
                chunk_generator = generator[rows] if isinstance(generator, list) else generator
                chunk_known = None if known is None else known.select(rows).to(device)

                # 4. Noise levels, then the initial state (the first noise draw)
                self.scheduler.set_timesteps(num_inference_steps, device=device, gamma=gamma)
                self._num_timesteps = len(self.scheduler.timesteps)
                num_bits = sequence_length * self.bits_per_token
                sample = self.prepare_latents(rows.stop - rows.start, num_bits, device, chunk_generator)

                # 5. Denoising loop (one noise draw per churned step)
                final, denoised, nfe = self._denoising_loop(
                    sample,
                    chunk_known,
                    chunk_generator,
                    autocast_dtype,
                    callback_on_step_end,
                    callback_inputs,
                    progress_bar,
                )
                probs.append(denoised.float().cpu())
                if output_type == "latent":
                    finals.append(final.float())

        # 6. Bits -> ids -> text
        probs = probs[0] if len(probs) == 1 else torch.cat(probs)
        bits = (probs > 0.5).to(torch.uint8)
        token_ids = self.codec.bits_to_ids(bits)
        texts = self.codec.decode_ids(token_ids) if output_type == "text" else None
        latents = (finals[0] if len(finals) == 1 else torch.cat(finals)) if finals else None
        if not return_probs and output_type != "probs":
            probs = None
        if getattr(self, "_all_hooks", None):  # only offloading installs hooks; skip the component walk otherwise
            self.maybe_free_model_hooks()

        output = BitstreamDiffusionPipelineOutput(
            texts=texts, token_ids=token_ids, bits=bits, probs=probs, nfe=nfe, latents=latents, output_type=output_type
        )
        return output if return_dict else output.to_tuple()

    @property
    def num_timesteps(self) -> int:
        """Scheduler calls of the last run (Heun counts its correction calls); a chunked batch runs them per chunk."""
        return self._num_timesteps

    @property
    def chunk_rows(self) -> slice | None:
        """The rows of the batch that the running (or last) chunk holds: what a callback's tensors are."""
        return getattr(self, "_chunk_rows", None)


def _as_code_tokenizer(tokenizer) -> CodeTokenizer | None:
    """
    The pipeline's `CodeTokenizer`: `tokenizer` itself, or rebuilt from its backend and meta when it comes from
    another copy of the code tokenizer module (a folder's remote code loads the module once per folder that carries
    it, which makes distinct classes of the same code), or converted from the plain fast tokenizer of a folder saved
    by version 0.1.
    """
    if tokenizer is None or isinstance(tokenizer, CodeTokenizer):
        return tokenizer
    meta = getattr(tokenizer, "meta", None)
    if type(tokenizer).__name__ == CodeTokenizer.__name__ and hasattr(meta, "to_init_kwargs"):
        return CodeTokenizer(tokenizer_object=tokenizer.backend_tokenizer, **meta.to_init_kwargs())
    return CodeTokenizer.from_legacy_tokenizer(tokenizer)
