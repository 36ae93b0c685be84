"""The transformers `pipeline()` task `"bitstream-text-generation"`, backed by [`BitstreamDiffusionPipeline`].

```py
>>> import bitstream_diffusion  # registers the task
>>> from transformers import pipeline
>>> generator = pipeline("bitstream-text-generation", model="path/to/cobit-s-lm1b")  # a pipeline folder
>>> generator(num_return_sequences=2, num_inference_steps=64, seed=0)        # unconditional
[{'generated_text': '...'}, {'generated_text': '...'}]
>>> generator("the city council voted", num_inference_steps=64, seed=0)      # a clamped text prefix
[{'generated_text': 'the city council voted ...'}]
```

How `model=` resolves. `transformers.pipeline` reads `config.json` at the root of `model` (`AutoConfig`), then calls
the task's `pt_model.from_pretrained(model)` (without that config). A saved pipeline folder has a root `config.json`
of model type `"bitstream_diffusion_pipeline"` that points at its SDT in `model/` (see `.pipeline_folder`), and the
task's `pt_model`, [`BitstreamPipelineModelLoader`], loads the SDT from there (or from `model` itself when it is an
SDT folder). [`BitstreamTextGenerationPipeline`] then loads the scheduler, tokenizer and code tokenizer from the folder
the SDT came from (`BitstreamDiffusionPipeline.from_pretrained(folder, model=sdt)`). `model=` may also be a
`BitstreamDiffusionPipeline` instance, or the `model/` subfolder of a pipeline folder.

Nothing here imports diffusers at import time: registering the task at `import bitstream_diffusion` costs only
transformers imports. The diffusers pipeline is imported when a task pipeline is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from transformers import PretrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .pipeline_folder import (
    BitstreamPipelineFolderConfig,
    pipeline_folder_of,
    write_transformers_entry_point,
)

if TYPE_CHECKING:
    from ..modeling.modeling_sdt import SDTModel
    from .pipeline_bitstream_diffusion import BitstreamDiffusionPipeline

__all__ = [  # the folder-config names are re-exported from `.pipeline_folder`, where they live
    "TASK_NAME",
    "BitstreamPipelineFolderConfig",
    "BitstreamPipelineModelLoader",
    "BitstreamTextGenerationPipeline",
    "register_bitstream_text_generation_task",
    "write_transformers_entry_point",
]

TASK_NAME = "bitstream-text-generation"


class BitstreamPipelineModelLoader:
    """
    The task's `pt_model`: `from_pretrained(path_or_repo, config=...)` returns the [`SDTModel`] of a
    [`BitstreamDiffusionPipeline`] folder (from its `model/` subfolder) or of an SDT folder.

    It is no model class; `transformers.pipeline` only calls `from_pretrained` on it. The SDT keeps the folder in
    `name_or_path`, from which [`BitstreamTextGenerationPipeline`] loads the remaining components.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs) -> SDTModel:
        from ..modeling.modeling_sdt import SDTModel

        kwargs.pop("trust_remote_code", None)  # our own code; nothing remote runs
        kwargs.pop("code_revision", None)
        config = kwargs.pop("config", None)
        if config is None and "subfolder" not in kwargs:
            # `transformers.pipeline` read the root config.json but does not pass it on: read it again (cached).
            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "local_files_only", "cache_dir") if k in kwargs}
            config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            config = config_dict if config_dict.get("model_type") == BitstreamPipelineFolderConfig.model_type else None
        if isinstance(config, dict):
            config = BitstreamPipelineFolderConfig(**config)
        if isinstance(config, BitstreamPipelineFolderConfig):
            kwargs.setdefault("subfolder", config.model_subfolder)
        elif config is not None:
            kwargs["config"] = config
        model = SDTModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return model.eval()


class BitstreamTextGenerationPipeline(Pipeline):
    """
    `transformers.pipeline("bitstream-text-generation", model=...)`: CoBit text generation through transformers.

    Call it with nothing (unconditional samples), a prompt string (a clamped text prefix) or a list of prompts:

    * `generator(num_return_sequences=4)` -> `[{"generated_text": str}, ...]` (4 samples);
    * `generator("prefix", num_return_sequences=2)` -> 2 samples starting with the prefix;
    * `generator(["a", "b"])` -> one list of samples per prompt.

    Keyword arguments (at construction or per call): `num_return_sequences` (samples per input, default 1),
    `num_inference_steps`, `gamma`, `sequence_length` (tokens), `seed` (an int: a fresh CPU generator per call) or
    `generator`, `autocast_dtype`, and `return_tensors=True` to add `"generated_token_ids"`. They go to
    [`BitstreamDiffusionPipeline.__call__`], whose documentation has the details. The wrapped diffusers pipeline is
    `.diffusion_pipeline`.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    _forward_keys = ("num_inference_steps", "gamma", "sequence_length", "autocast_dtype", "generator", "seed")

    def __init__(self, model, *args, diffusion_pipeline: BitstreamDiffusionPipeline | None = None, **kwargs):
        from .pipeline_bitstream_diffusion import BitstreamDiffusionPipeline

        if isinstance(model, BitstreamDiffusionPipeline):
            diffusion_pipeline, model = model, model.model
        super().__init__(model, *args, **kwargs)
        if diffusion_pipeline is None:
            folder = pipeline_folder_of(self.model)
            diffusion_pipeline = BitstreamDiffusionPipeline.from_pretrained(folder, model=self.model)
        elif diffusion_pipeline.model is not self.model:
            raise ValueError("`diffusion_pipeline.model` must be the pipeline's `model`.")
        diffusion_pipeline.set_progress_bar_config(disable=True)
        self.diffusion_pipeline = diffusion_pipeline
        self.tokenizer = diffusion_pipeline.tokenizer

    def __call__(self, inputs: str | list[str] | None = None, **kwargs) -> list[dict[str, Any]] | list[list[dict]]:
        """
        Generate texts.

        Args:
            inputs (`str` or `list[str]`, *optional*): a prompt (clamped text prefix), a list of prompts, or nothing
                for unconditional samples.
            kwargs: see the class documentation.

        Returns:
            A list of `{"generated_text": str}` (plus `"generated_token_ids"` with `return_tensors=True`) per input.
        """
        if kwargs.get("batch_size") not in (None, 1) or self._batch_size not in (None, 1):
            raise ValueError(
                "`batch_size` batches inputs for transformers' DataLoader, which this task does not support; every "
                "input is sampled as one batch of `num_return_sequences` samples."
            )
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self, num_return_sequences: int | None = None, return_tensors: bool | None = None, **kwargs
    ) -> tuple[dict, dict, dict]:
        unknown = sorted(set(kwargs) - set(self._forward_keys))
        if unknown:
            known = ["num_return_sequences", "return_tensors", *self._forward_keys]
            raise TypeError(f"Unknown arguments {unknown} for the {TASK_NAME!r} task; use {known}.")
        forward_params = dict(kwargs)
        if num_return_sequences is not None:
            forward_params["num_return_sequences"] = num_return_sequences
        postprocess_params = {} if return_tensors is None else {"return_tensors": return_tensors}
        return {}, forward_params, postprocess_params

    def preprocess(self, inputs: str | None) -> dict[str, Any]:
        if inputs is not None and not isinstance(inputs, str):
            raise TypeError(f"Inputs must be a prompt string, a list of them, or None; got {type(inputs).__name__}.")
        return {"prompt": inputs}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        num_return_sequences: int = 1,
        seed: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        **call_kwargs,
    ) -> dict[str, Any]:
        if seed is not None:
            if generator is not None:
                raise ValueError("Pass either `seed` or `generator`, not both.")
            generator = torch.Generator().manual_seed(int(seed))
        output = self.diffusion_pipeline(
            batch_size=num_return_sequences,
            prompt=model_inputs["prompt"],
            generator=generator,
            output_type="text",
            **call_kwargs,
        )
        return {"texts": output.texts, "token_ids": output.token_ids}

    def postprocess(self, model_outputs: dict[str, Any], return_tensors: bool = False) -> list[dict[str, Any]]:
        records = [{"generated_text": text} for text in model_outputs["texts"]]
        if return_tensors:
            for record, ids in zip(records, model_outputs["token_ids"], strict=True):
                record["generated_token_ids"] = ids.tolist()
        return records

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the wrapped [`BitstreamDiffusionPipeline`] folder (loadable by diffusers and by this task)."""
        self.diffusion_pipeline.save_pretrained(save_directory, **kwargs)


def register_bitstream_text_generation_task() -> None:
    """
    Register the `"bitstream-text-generation"` task with `transformers.pipeline` and the pipeline folder's root
    config ([`BitstreamPipelineFolderConfig`]) with `AutoConfig`. Idempotent and cheap (no diffusers import).
    """
    from transformers import AutoConfig

    try:
        AutoConfig.register(BitstreamPipelineFolderConfig.model_type, BitstreamPipelineFolderConfig)
    except ValueError:  # already registered
        pass
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK_NAME)
    if registered is not None and registered.get("impl") is BitstreamTextGenerationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK_NAME,
        pipeline_class=BitstreamTextGenerationPipeline,
        pt_model=BitstreamPipelineModelLoader,
        type="text",
    )


from .._auto_registration import register_when_loaded  # noqa: E402

register_when_loaded(__name__)
