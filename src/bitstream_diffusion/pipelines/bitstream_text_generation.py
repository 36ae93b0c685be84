"""The transformers `pipeline()` task `"bitstream-text-generation"`, backed by [`BitstreamDiffusionPipeline`].

```py
>>> import bitstream_diffusion  # registers the task
>>> from transformers import pipeline
>>> generator = pipeline("bitstream-text-generation", model="path/to/cobit-s-lm1b")  # a pipeline folder
>>> generator(num_return_sequences=2, num_inference_steps=64, seed=0)        # unconditional
[{'generated_text': '...'}, {'generated_text': '...'}]
>>> generator("the city council voted", max_new_tokens=32, num_inference_steps=64, seed=0)  # a clamped prefix
[{'generated_text': 'the city council voted ...'}]
>>> generator(["a", "a"], seed=0, batch_size=2, return_full_text=False)   # every sample its own noise
[[{'generated_text': '...'}], [{'generated_text': '...'}]]
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

import numbers
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import PretrainedConfig
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline

from .pipeline_folder import BitstreamPipelineFolderConfig, pipeline_folder_of, write_transformers_entry_point
from .random_streams import sample_generators

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
        if getattr(config, "model_type", None) == BitstreamPipelineFolderConfig.model_type:
            # also the folder's own copy of the config class (`trust_remote_code=True` loads that one)
            kwargs.setdefault("subfolder", config.model_subfolder)
        elif config is not None:
            kwargs["config"] = config
        model = SDTModel.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return model.eval()


class BitstreamTextGenerationPipeline(Pipeline):
    """
    `transformers.pipeline("bitstream-text-generation", model=...)`: CoBit text generation through transformers,
    with the output format of transformers' `text-generation` task.

    Call it with nothing (unconditional samples), a prompt string (a text prefix clamped at every step) or a list
    (or dataset) of prompts:

    * `generator(num_return_sequences=4)` -> `[{"generated_text": str}, ...]` (4 samples);
    * `generator("prefix", num_return_sequences=2)` -> 2 samples, each starting with the prefix;
    * `generator(["a", "b"])` -> one list of samples per prompt (`[[{...}], [{...}]]`).

    Keyword arguments (at construction or per call):

    * the `text-generation` ones that mean something here: `num_return_sequences` (samples per input, default 1),
      `max_new_tokens` (tokens generated after each prompt: the sample is the prompt's tokens plus these),
      `return_full_text` (default `True`: the prompt followed by the generated text; `False`: the generated text
      only), `batch_size` (inputs sampled together in one diffusion batch; the samples do not depend on it) and
      `return_tensors` (`True` adds `"generated_token_ids"`, the ids of the whole sample);
    * the sampler's: `num_inference_steps`, `gamma`, `sequence_length` (tokens per sample, prompt included; not
      with `max_new_tokens`), `autocast_dtype`, `max_batch_size` (see [`BitstreamDiffusionPipeline.__call__`]);
    * the noise: `seed` (an int) or `generator`.

    Tokens are the model's positions: BERT ids for LM1B, codes of the code tokenizer for OWT (whose row starts with
    `[EOS]`). Other keywords (`temperature`, `do_sample`, `max_length`, ...) are refused with the list above.

    Noise. With `seed=s`, sample `j` of input `i` (counted from 0 over the call) draws all its noise from its own
    CPU generator, seeded `random_streams.sample_seed(s, (i, j))`: different prompts, and equal prompts at different
    positions, get different noise, and the samples do not depend on `batch_size` or `max_batch_size`. A
    `torch.Generator` gives the call's seed by one draw from it (see `random_streams.derive_sample_generators`); a
    list of generators (one per sample) is taken as it is, for a single input only. Without either, the noise comes
    from torch's global generator.

    The wrapped diffusers pipeline is `.diffusion_pipeline`.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    #: Keywords passed on to [`BitstreamDiffusionPipeline.__call__`] as they are.
    _sampler_keys = ("num_inference_steps", "gamma", "sequence_length", "autocast_dtype", "max_batch_size")
    #: Every keyword a call accepts.
    supported_keywords = (
        "num_return_sequences",
        "max_new_tokens",
        "return_full_text",
        "return_tensors",
        "batch_size",
        *_sampler_keys,
        "seed",
        "generator",
    )

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
        _check_positive("batch_size", self._batch_size, allow_none=True)

    def __call__(
        self, inputs: str | Iterable[str] | None = None, batch_size: int | None = None, **kwargs
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]] | Iterator[list[dict[str, Any]]]:
        """
        Generate texts.

        Args:
            inputs (`str`, `list[str]`, a dataset of strings, or `None`): a prompt (a text prefix clamped at every
                step), several prompts, or nothing for unconditional samples.
            batch_size (`int`, *optional*, defaults to 1): inputs sampled together in one diffusion batch.
            kwargs: see the class documentation.

        Returns:
            For one prompt or none, a list of `num_return_sequences` dicts `{"generated_text": str}` (plus
            `"generated_token_ids"` with `return_tensors=True`); for a list of prompts, one such list per prompt (an
            iterator of them for a dataset or generator).
        """
        batch_size = self._batch_size if batch_size is None else batch_size
        batch_size = 1 if batch_size is None else batch_size
        _check_positive("batch_size", batch_size)
        _, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        forward_params = {**self._forward_params, **forward_params}
        postprocess_params = {**self._postprocess_params, **postprocess_params}
        single = inputs is None or isinstance(inputs, str)
        forward_params = self._resolve_noise(forward_params, single)
        if single:
            return next(self._iterate([inputs], 1, forward_params, postprocess_params))
        if isinstance(inputs, (list, tuple)):
            return list(self._iterate(inputs, batch_size, forward_params, postprocess_params))
        return self._iterate(inputs, batch_size, forward_params, postprocess_params)

    def _sanitize_parameters(
        self,
        num_return_sequences: int | None = None,
        max_new_tokens: int | None = None,
        return_full_text: bool | None = None,
        return_tensors: bool | None = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        unknown = sorted(set(kwargs) - set(self._sampler_keys) - {"seed", "generator"})
        if unknown:
            raise TypeError(
                f"Unknown arguments {unknown} for the {TASK_NAME!r} task. Supported: {list(self.supported_keywords)} "
                "(`max_new_tokens` counts the tokens after the prompt, `sequence_length` the whole sample)."
            )
        _check_positive("num_return_sequences", num_return_sequences, allow_none=True)
        _check_positive("max_new_tokens", max_new_tokens, allow_none=True)
        forward_params = dict(kwargs)
        if num_return_sequences is not None:
            forward_params["num_return_sequences"] = num_return_sequences
        if max_new_tokens is not None:
            forward_params["max_new_tokens"] = max_new_tokens
        postprocess_params = {}
        if return_full_text is not None:
            postprocess_params["return_full_text"] = bool(return_full_text)
        if return_tensors is not None:
            postprocess_params["return_tensors"] = bool(return_tensors)
        return {}, forward_params, postprocess_params

    @staticmethod
    def _resolve_noise(forward_params: dict[str, Any], single: bool) -> dict[str, Any]:
        """The call's noise: `seed`, a generator turned into a seed by one draw, or a list for a single input."""
        params = dict(forward_params)
        seed, generator = params.pop("seed", None), params.pop("generator", None)
        if seed is not None and generator is not None:
            raise ValueError("Pass either `seed` or `generator`, not both.")
        if isinstance(generator, torch.Generator):
            seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device).item())
        elif isinstance(generator, (list, tuple)):
            if not single:
                raise ValueError(
                    "A list of generators (one per sample) works for a single input only; for several prompts pass "
                    "`seed=` or one `torch.Generator`, which give every sample its own stream."
                )
            params["generators"] = list(generator)
        elif generator is not None:
            raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}.")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
            params["seed"] = int(seed)
        return params

    def _iterate(
        self, inputs: Iterable[str | None], batch_size: int, forward_params: dict, postprocess_params: dict
    ) -> Iterator[list[dict[str, Any]]]:
        """Sample the inputs `batch_size` at a time; yield each input's records, in order."""
        group: list[str | None] = []
        first_index = 0
        for item in inputs:
            group.append(self.preprocess(item)["prompt"])
            if len(group) == batch_size:
                yield from self._run_group(group, first_index, forward_params, postprocess_params)
                first_index, group = first_index + len(group), []
        if group:
            yield from self._run_group(group, first_index, forward_params, postprocess_params)

    def _run_group(
        self, prompts: list[str | None], first_index: int, forward_params: dict, postprocess_params: dict
    ) -> Iterator[list[dict[str, Any]]]:
        model_outputs = self.forward({"prompts": prompts, "first_index": first_index}, **forward_params)
        for per_input in model_outputs["inputs"]:
            yield self.postprocess(per_input, **postprocess_params)

    def preprocess(self, inputs: str | None) -> dict[str, Any]:
        if inputs is not None and not isinstance(inputs, str):
            raise TypeError(f"Inputs must be a prompt string, a list of them, or None; got {type(inputs).__name__}.")
        return {"prompt": inputs}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        num_return_sequences: int = 1,
        max_new_tokens: int | None = None,
        sequence_length: int | None = None,
        seed: int | None = None,
        generators: list[torch.Generator] | None = None,
        **sampler_kwargs,
    ) -> dict[str, Any]:
        """
        Sample `num_return_sequences` rows per prompt of `model_inputs["prompts"]`, one diffusion call per sample
        length, and return per input: the prompt, its length in tokens, and its samples' texts and ids.
        """
        if max_new_tokens is not None and sequence_length is not None:
            raise ValueError(
                "Pass either `max_new_tokens` (tokens after the prompt) or `sequence_length` (tokens per sample, the "
                "prompt included), not both."
            )
        codec = self.diffusion_pipeline.codec
        prompts, first_index = model_inputs["prompts"], model_inputs["first_index"]
        prompt_lengths = [len(codec.prompt_ids(p, num_tokens=sys.maxsize)[0]) if p else 0 for p in prompts]
        rows = [(i, j) for i in range(len(prompts)) for j in range(num_return_sequences)]
        if generators is None and seed is not None:
            generators = sample_generators(seed, [(first_index + i, j) for i, j in rows])
        lengths = [None if max_new_tokens is None else prompt_lengths[i] + max_new_tokens for i, _ in rows]
        texts: list[str | None] = [None] * len(rows)
        token_ids: list[list[int] | None] = [None] * len(rows)
        for length in dict.fromkeys(lengths):  # one diffusion batch per sample length, in order
            members = [r for r, row_length in enumerate(lengths) if row_length == length]
            row_prompts = [prompts[rows[r][0]] or "" for r in members]
            output = self.diffusion_pipeline(
                batch_size=len(members),
                prompt=row_prompts if any(row_prompts) else None,
                generator=None if generators is None else [generators[r] for r in members],
                sequence_length=length if length is not None else sequence_length,
                output_type="text",
                **sampler_kwargs,
            )
            for r, text, ids in zip(members, output.texts, output.token_ids.tolist(), strict=True):
                texts[r], token_ids[r] = text, ids
        per_input = [
            {
                "prompt": prompt,
                "prompt_length": prompt_lengths[i],
                "texts": texts[i * num_return_sequences : (i + 1) * num_return_sequences],
                "token_ids": token_ids[i * num_return_sequences : (i + 1) * num_return_sequences],
            }
            for i, prompt in enumerate(prompts)
        ]
        return {"inputs": per_input}

    def postprocess(
        self, model_outputs: dict[str, Any], return_full_text: bool = True, return_tensors: bool = False
    ) -> list[dict[str, Any]]:
        """
        One input's records. `generated_text` is the prompt followed by the generated text (`return_full_text=True`,
        as transformers writes it: the prompt as given), or the generated text alone: the sample's decoded text after
        the decoded prompt tokens (the decoded tokens after the prompt where the decoder merges across the border).
        """
        prompt, length = model_outputs["prompt"] or "", model_outputs["prompt_length"]
        codec = self.diffusion_pipeline.codec
        records = []
        for text, ids in zip(model_outputs["texts"], model_outputs["token_ids"], strict=True):
            if length:
                decoded_prompt = codec.decode_ids([ids[:length]])[0]
                if text.startswith(decoded_prompt):
                    new_text = text[len(decoded_prompt) :]
                else:
                    new_text = codec.decode_ids([ids[length:]])[0] if len(ids) > length else ""
                text = prompt + new_text if return_full_text else new_text
            record = {"generated_text": text}
            if return_tensors:
                record["generated_token_ids"] = ids
            records.append(record)
        return records

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the wrapped [`BitstreamDiffusionPipeline`] folder (loadable by diffusers and by this task)."""
        self.diffusion_pipeline.save_pretrained(save_directory, **kwargs)


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


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
