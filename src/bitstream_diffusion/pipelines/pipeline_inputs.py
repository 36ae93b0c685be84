"""Validation of [`BitstreamDiffusionPipeline.__call__`]'s arguments, before anything runs, and of the scheduler it is
given (a scheduler the pipeline cannot drive is refused when it is set)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils import logging

from .batching import MaxBatchSize, check_max_batch_size
from .pipeline_output import OUTPUT_TYPES

__all__ = ["HALF_DTYPES", "SCHEDULER_API", "PipelineInputsMixin", "check_scheduler"]

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

#: The `autocast_dtype`s the pipeline accepts (and the model dtypes that turn autocast on).
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: What the pipeline uses of its scheduler: the `churn` loop of `EntropyRateScheduler` (churn before every model call,
#: a step on bit probabilities, self-conditioning outputs, outputs checked once per run).
SCHEDULER_API = (
    "set_timesteps",
    "churn",
    "step",
    "num_model_calls",
    "record_model_output",
    "init_noise_sigma",
    "init_sample_mean",
)


def check_scheduler(scheduler: Any) -> None:
    """Raise `TypeError` unless the pipeline can drive `scheduler` (it has [`SCHEDULER_API`] and a
    `self_conditioning` policy in its config)."""
    missing = [name for name in SCHEDULER_API if not hasattr(scheduler, name)]
    config = getattr(scheduler, "config", None)
    if not missing and (not hasattr(config, "get") or config.get("self_conditioning") is None):
        missing.append("config.self_conditioning")
    if missing:
        raise TypeError(
            f"BitstreamDiffusionPipeline cannot drive a {type(scheduler).__name__}: it lacks {missing}. The pipeline "
            "churns before every model call (`churn`), steps on bit probabilities and carries self-conditioning; use "
            "an EntropyRateScheduler, e.g. `EntropyRateScheduler.from_config(pipe.scheduler.config, solver=\"heun\")`."
        )


class PipelineInputsMixin:
    """`check_inputs` of [`BitstreamDiffusionPipeline`]: every argument of a call checked up front; a scheduler the
    pipeline cannot drive is refused when it is set (`pipe.scheduler = ...`, `register_modules`, loading)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scheduler" and value is not None:
            check_scheduler(value)
        super().__setattr__(name, value)

    def register_modules(self, **kwargs) -> None:
        if kwargs.get("scheduler") is not None:
            check_scheduler(kwargs["scheduler"])  # before diffusers records it in the config
        super().register_modules(**kwargs)

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
        max_batch_size: MaxBatchSize = None,
    ) -> None:
        """Validate every argument of `__call__` up front; raises `ValueError`/`TypeError` saying what to pass."""
        check_scheduler(self.scheduler)
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
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"`output_type` must be one of {list(OUTPUT_TYPES)}, got {output_type!r} (\"latent\" returns the "
                "sampler's final state, the other values name the output field)."
            )
        check_max_batch_size(max_batch_size)
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
        if autocast_dtype is not None and autocast_dtype not in HALF_DTYPES:
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
