"""The models the protocol evaluates, behind one interface: a CoBit pipeline folder or a causal-LM folder.

``--pipeline DIR`` is told apart by its files: ``model_index.json`` makes a CoBit pipeline folder
(:class:`CoBitProtocolModel`); a ``config.json`` whose ``architectures`` name a causal LM (``...ForCausalLM``,
``...LMHeadModel``; e.g. ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` saved with ``save_pretrained``, with its
tokenizer) makes an autoregressive model (:class:`CausalLMProtocolModel`). Both give the protocol the same things:

* ``kind`` (``"cobit"`` / ``"ar"``), ``folder``, ``fingerprint`` (:func:`~.generation.fingerprint_folder`),
  ``num_parameters`` (distinct parameters of the network), ``train_tokens`` and ``num_tokens`` (tokens per row);
* ``text_rules``: the decoding, token-entropy and reference-packing rules (a :class:`~bitstream_diffusion.
  TextBitCodec`, or :class:`~bitstream_diffusion.codecs.causal_lm_rows.GPT2WindowCodec`);
* :meth:`resolve_specs` and :meth:`generate` (one batch of samples, each sample from its own generator);
* ``likelihood`` (``"bound"``: the CoBit variational bound; ``"exact"``: the AR model's exact NLL) and
  :meth:`likelihood_per_row` (the per-row numbers of a run of whole batches, see :mod:`.protocol_likelihood`).

What the training run recorded is read from the folder or the folder above it (the training script writes
``train_summary.json`` and ``training_config.yaml`` in its output folder and the export one level down):
``train_tokens`` is ``tokens_seen`` of ``train_summary.json`` (else a ``train_tokens``/``training_tokens``/
``tokens_seen`` field of the model's ``config.json``, else ``None``); an AR model's row length is ``--num-tokens``,
else ``num_tokens`` of ``training_config.yaml`` (``owt_base_seq_len`` for the ``owt`` recipe, whose rows are
GPT-2 windows), else a ``num_tokens`` field of its ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_KINDS",
    "CausalLMProtocolModel",
    "CoBitProtocolModel",
    "TrainingRecord",
    "detect_model_kind",
    "load_protocol_model",
    "read_training_record",
]

logger = logging.getLogger(__name__)

MODEL_KINDS: tuple[str, ...] = ("cobit", "ar")
_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKEN_COUNT_FIELDS = ("train_tokens", "training_tokens", "tokens_seen")


# ---------------------------------------------------------------------------------------------------- folders


def detect_model_kind(folder: str | os.PathLike) -> str:
    """``"cobit"`` for a pipeline folder (``model_index.json``), ``"ar"`` for a causal-LM folder (``config.json``).

    Raises:
        ValueError: the folder holds neither.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return "cobit"
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    if any(str(name).endswith(_CAUSAL_LM_SUFFIXES) for name in architectures):
        return "ar"
    raise ValueError(
        f"{folder} is neither a CoBit pipeline folder (no model_index.json) nor a causal-LM folder (config.json "
        f"architectures {architectures or 'missing'}; expected e.g. LlamaForCausalLM or GPT2LMHeadModel). Pass a "
        f"folder written by BitstreamDiffusionPipeline.save_pretrained or AutoModelForCausalLM.save_pretrained."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        logger.warning(f"Could not read {path}; ignoring it.")
        return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        logger.warning(f"Could not read {path}; ignoring it.")
        return {}
    return content if isinstance(content, dict) else {}


@dataclass(frozen=True)
class TrainingRecord:
    """What the training run of a model folder recorded (``None`` where nothing is recorded).

    Attributes:
        train_tokens: training tokens consumed, all processes together.
        num_tokens: tokens per training row.
        data_recipe: ``"lm1b"``, ``"owt"`` or ``"generic"``.
    """

    train_tokens: int | None = None
    num_tokens: int | None = None
    data_recipe: str | None = None


def read_training_record(folder: str | os.PathLike, model_config: dict[str, Any] | None = None) -> TrainingRecord:
    """The :class:`TrainingRecord` of ``folder`` (see the module docstring for where each number comes from)."""
    folder = Path(folder)
    model_config = model_config or {}
    summary, flags = {}, {}
    for place in (folder, folder.parent):
        summary = summary or _read_json(place / "train_summary.json")
        flags = flags or _read_yaml(place / "training_config.yaml")
    tokens = summary.get("tokens_seen")
    if tokens is None:
        tokens = next((model_config[k] for k in _TOKEN_COUNT_FIELDS if model_config.get(k) is not None), None)
    recipe = flags.get("data_recipe")
    num_tokens = flags.get("owt_base_seq_len", 1024) if recipe == "owt" else flags.get("num_tokens")
    if num_tokens is None:
        num_tokens = model_config.get("num_tokens")
    return TrainingRecord(
        train_tokens=None if tokens is None else int(tokens),
        num_tokens=None if num_tokens is None else int(num_tokens),
        data_recipe=None if recipe is None else str(recipe),
    )


def _resolve_folder(name: str | os.PathLike) -> Path:
    """A local folder as it is; a hub id downloaded: a CoBit pipeline repo (it has ``model_index.json``) with
    diffusers' component download, any other repo as a causal LM (configs, weights and tokenizer files)."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        try:
            hf_hub_download(str(name), "model_index.json")
        except EntryNotFoundError:
            patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.yaml", "tokenizer*"]
            return Path(snapshot_download(str(name), allow_patterns=patterns))
        from ..pipelines import BitstreamDiffusionPipeline

        return Path(BitstreamDiffusionPipeline.download(str(name)))
    except Exception as error:  # hub errors come in many types
        raise FileNotFoundError(
            f"The model {str(name)!r} is neither a local folder nor a downloadable hub repo ({error})."
        ) from error


def _count_parameters(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))  # shared (tied) tensors count once


# ---------------------------------------------------------------------------------------------------- CoBit


class CoBitProtocolModel:
    """A :class:`~bitstream_diffusion.BitstreamDiffusionPipeline` as the protocol uses it.

    Args:
        pipe: the pipeline, on its device.
        folder: its folder.
        fingerprint: the folder's content hash.
    """

    kind = "cobit"
    likelihood = "bound"
    supports_heldout_loss = True

    def __init__(self, pipe, folder: Path, fingerprint: str):
        self.pipe, self.folder, self.fingerprint = pipe, Path(folder), fingerprint
        self.text_rules = pipe.codec
        self.num_tokens = int(pipe.codec.num_tokens)
        self.num_parameters = _count_parameters(pipe.model)
        model_config = _read_json(self.folder / "model" / "config.json")
        self.train_tokens = read_training_record(self.folder, model_config).train_tokens
        self.device = pipe.device
        self._schedulers: dict[str, Any] = {}

    def resolve_specs(self, specs) -> list:
        """The specs made concrete for this pipeline, each with its own scheduler (invalid settings fail here)."""
        from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler
        from .sampler_specs import SamplerSpec

        wrong = [s.label for s in specs if not isinstance(s, SamplerSpec)]
        if wrong:
            raise ValueError(
                f"{self.folder} is a CoBit pipeline; the spec(s) {wrong} are for autoregressive models. Write CoBit "
                f"specs as gamma=G,nfe=N or gamma=G,steps=K."
            )
        base = self.pipe.scheduler
        resolved = [spec.resolve(base.config) for spec in specs]
        for spec in resolved:
            overrides = spec.scheduler_overrides(base.config)
            scheduler = EntropyRateScheduler.from_config(base.config, **overrides) if overrides else base
            scheduler.set_timesteps(spec.num_inference_steps, gamma=spec.gamma_per_step)
            self._schedulers[spec.key] = scheduler
        return resolved

    def generate(self, spec, batch, autocast_dtype, max_batch_size=None) -> dict[str, Any]:
        """One batch with the spec's scheduler (:func:`~.generation.generate_batch`); returns the cache record."""
        from .generation import generate_batch

        base = self.pipe.scheduler
        self.pipe.scheduler = self._schedulers[spec.key]
        try:
            return generate_batch(self.pipe, spec, batch, autocast_dtype, max_batch_size=max_batch_size)
        finally:
            self.pipe.scheduler = base

    def likelihood_per_row(self, token_rows, batches: range, settings) -> dict[str, Any]:
        """The variational bound of the rows of ``batches`` (see :func:`.protocol_likelihood.vlb_of_batches`)."""
        from .protocol_likelihood import vlb_of_batches

        return vlb_of_batches(self.pipe.model, self.text_rules.ids_to_bits(token_rows), batches, settings)

    def heldout_loss(self, token_rows, settings):
        """:func:`~bitstream_diffusion.evaluation.compute_heldout_loss` of all rows, on the settings' sigma grid."""
        import torch

        from .heldout_loss import compute_heldout_loss

        return compute_heldout_loss(
            self.pipe.model,
            self.text_rules.ids_to_bits(token_rows),
            batch_size=settings.batch_size,
            sigmas=list(settings.heldout_sigmas),
            generator=torch.Generator().manual_seed(settings.seed),
            autocast_dtype=settings.autocast_dtype,
            show_progress=settings.show_progress,
        )


# ---------------------------------------------------------------------------------------------------- causal LMs


class CausalLMProtocolModel:
    """A transformers causal LM and its tokenizer as the protocol uses them (see :mod:`.causal_lm_text`).

    Args:
        model: the causal LM, on its device, in eval mode.
        tokenizer: its tokenizer.
        folder, fingerprint: its folder and the folder's content hash.
        num_tokens: tokens per row (generated per sample, and per reference row).
        text_rules: :func:`~.causal_lm_text.causal_lm_text_rules` of the tokenizer.
        train_tokens: training tokens, or ``None``.
    """

    kind = "ar"
    likelihood = "exact"
    supports_heldout_loss = False

    def __init__(self, model, tokenizer, folder: Path, fingerprint: str, *, num_tokens, text_rules, train_tokens):
        from .causal_lm_text import start_token_id

        self.model, self.tokenizer, self.folder, self.fingerprint = model, tokenizer, Path(folder), fingerprint
        self.num_tokens, self.text_rules, self.train_tokens = int(num_tokens), text_rules, train_tokens
        self.start_token_id = start_token_id(tokenizer)
        self.num_parameters = _count_parameters(model)
        self.device = next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if limit is not None and int(limit) < self.num_tokens:
            raise ValueError(
                f"The causal LM reads at most {limit} positions, fewer than the {self.num_tokens} tokens per row "
                f"(the start token and the row's first {self.num_tokens - 1} tokens); pass a smaller --num-tokens."
            )

    def resolve_specs(self, specs) -> list:
        from .sampler_specs import ARSamplerSpec

        wrong = [s.label for s in specs if not isinstance(s, ARSamplerSpec)]
        if wrong:
            raise ValueError(
                f"{self.folder} is a causal LM; the spec(s) {wrong} are for CoBit pipelines. Write autoregressive "
                f"specs as temperature=T or temperature=T,top_p=P."
            )
        return [spec.resolve(self.num_tokens) for spec in specs]

    def generate(self, spec, batch, autocast_dtype, max_batch_size=None) -> dict[str, Any]:
        """Samples ``[batch.start, batch.end)`` of the run, in chunks of ``max_batch_size``; the cache record."""
        import time

        import torch

        from ..pipelines.batching import batch_chunks
        from .causal_lm_sampling import auto_causal_lm_batch_size, sample_causal_lm
        from .generation import utc_timestamp
        from .sampler_specs import sample_generators

        generators = sample_generators(batch.seed, spec.key, range(batch.start, batch.end))
        if max_batch_size == "auto":
            max_batch_size = auto_causal_lm_batch_size(self.model, self.num_tokens, self.device)
        began = time.perf_counter()
        rows = [
            sample_causal_lm(
                self.model,
                start_token_id=self.start_token_id,
                num_tokens=self.num_tokens,
                generators=generators[chunk],
                temperature=spec.temperature,
                top_p=spec.top_p,
                autocast_dtype=autocast_dtype,
            )
            for chunk in batch_chunks(len(generators), max_batch_size)
        ]
        token_ids = torch.cat(rows)
        wall = time.perf_counter() - began
        return {
            "texts": list(self.text_rules.decode_ids(token_ids)),
            "token_ids": token_ids.tolist(),
            "nfe": spec.expected_nfe,
            "wall_time_s": wall,
            "created_utc": utc_timestamp(),
        }

    def likelihood_per_row(self, token_rows, batches: range, settings) -> dict[str, Any]:
        """The exact NLL of the rows of ``batches`` (see :func:`.protocol_likelihood.exact_nll_of_batches`)."""
        from .protocol_likelihood import exact_nll_of_batches

        return exact_nll_of_batches(self.model, token_rows, batches, settings, start_token_id=self.start_token_id)

    def heldout_loss(self, token_rows, settings):
        raise NotImplementedError("The held-out diffusion loss is a CoBit metric; a causal LM has no noise levels.")


# ---------------------------------------------------------------------------------------------------- loading


def _load_causal_lm(folder: Path, device, *, num_tokens: int | None, ar_layout: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .causal_lm_text import causal_lm_text_rules

    config = _read_json(folder / "config.json")
    record = read_training_record(folder, config)
    num_tokens = num_tokens if num_tokens is not None else record.num_tokens
    if num_tokens is None:
        raise ValueError(
            f"How many tokens per row should the causal LM in {folder} generate? Nothing is recorded (no "
            f"training_config.yaml with num_tokens beside it, no num_tokens in its config.json); pass --num-tokens "
            f"(the training row length, e.g. 128 for LM1B)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise OSError(
            f"{folder} holds a causal LM but no loadable tokenizer; save the tokenizer into the same folder "
            f"(tokenizer.save_pretrained(folder)).\nOriginal error: {error}"
        ) from error
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    rules = causal_lm_text_rules(tokenizer, ar_layout, int(num_tokens), recorded_recipe=record.data_recipe)
    return model, tokenizer, int(num_tokens), rules, record.train_tokens


def load_protocol_model(state, name: str | os.PathLike, device, *, num_tokens=None, ar_layout: str = "auto"):
    """The model of ``--pipeline`` on ``device`` (a hub download happens on the main process first).

    Args:
        state: accelerate's ``PartialState``.
        name: a local folder or a hub id.
        device: the torch device.
        num_tokens: tokens per row of a causal LM (``None``: as recorded by its training run); for a CoBit pipeline
            it must be ``None`` or the codec's row length.
        ar_layout: the text layout of a causal LM (:data:`~.causal_lm_text.AR_TEXT_LAYOUTS`).

    Returns:
        :class:`CoBitProtocolModel` or :class:`CausalLMProtocolModel`.
    """
    from accelerate.utils import broadcast_object_list

    from .generation import fingerprint_folder

    with state.main_process_first():
        folder = _resolve_folder(name)
    kind = detect_model_kind(folder)
    fingerprint = broadcast_object_list([fingerprint_folder(folder) if state.is_main_process else None])[0]
    if kind == "ar":
        model, tokenizer, num_tokens, rules, train_tokens = _load_causal_lm(
            folder, device, num_tokens=num_tokens, ar_layout=ar_layout
        )
        return CausalLMProtocolModel(
            model, tokenizer, folder, fingerprint, num_tokens=num_tokens, text_rules=rules, train_tokens=train_tokens
        )
    from ..pipelines import BitstreamDiffusionPipeline

    pipe = BitstreamDiffusionPipeline.from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=not state.is_local_main_process, leave=False, desc="denoising")
    if num_tokens is not None and int(num_tokens) != pipe.codec.num_tokens:
        raise ValueError(
            f"--num-tokens {num_tokens} differs from the CoBit pipeline's row length ({pipe.codec.num_tokens} tokens); "
            f"leave it out for CoBit pipelines (it sets the causal LM's row length)."
        )
    return CoBitProtocolModel(pipe, folder, fingerprint)
