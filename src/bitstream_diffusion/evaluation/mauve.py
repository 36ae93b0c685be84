"""MAUVE: how close the distribution of generated texts is to that of real texts (Pillutla et al., 2021).

Each text becomes one feature vector: the final-layer hidden state of a causal LM at the text's last token, as the
``mauve-text`` package's own featuriser computes it (base model without the LM head, right padding, the tokenizer's
default special tokens, texts truncated to ``max_text_length`` tokens, empty texts dropped). We compute the features
ourselves with transformers, so the featuriser loads like the GenPPL evaluator (a hub id or any local folder, offline
the SmolLM2 folder of :func:`bitstream_diffusion.offline.prepare_gguf_evaluator`) with our dtype and device; the
``mauve-text`` package then only quantises the features (PCA + k-means into ``num_buckets`` clusters) and computes
the area under the divergence curve. With the same texts, featuriser, batch size and ``seed`` the result is the same
number on every run.

The paper's setting is the featuriser ``gpt2-large`` (GPT-2 Large), ``num_buckets=25`` and ``max_text_length`` equal
to the sample length in tokens (128 for LM1B). MAUVE is in (0, 1]; higher means closer. It needs a few hundred texts
per side to be stable (``num_buckets="auto"`` uses one bucket per ten texts); small sets give noisy values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .gen_ppl import DEFAULT_EVALUATOR, _looks_like_path, resolve_dtype

__all__ = ["DEFAULT_FEATURIZER", "MauveFeaturizer", "MauveResult", "compute_mauve", "mauve_from_features"]

DEFAULT_FEATURIZER = DEFAULT_EVALUATOR
"""GPT-2 Large, the featuriser of the MAUVE paper and of the official CoBit evaluation."""


@dataclass
class MauveResult:
    """MAUVE of generated texts (p) against reference texts (q).

    Attributes:
        mauve: the MAUVE score in (0, 1] (higher: the two distributions are closer).
        frontier_integral: the frontier integral in [0, 1] (lower: closer).
        mauve_star, frontier_integral_star: the same with Krichevsky-Trofimov smoothing of the histograms
            (Pillutla et al., JMLR 2023), less biased for small sets.
        num_buckets: the number of k-means clusters used.
        num_predictions, num_references: the texts used (empty texts are dropped).
        featurize_model_id, max_text_length, seed: the settings used.
        p_hist, q_hist: the cluster histograms of the predictions and the references.
    """

    mauve: float
    frontier_integral: float
    mauve_star: float
    frontier_integral_star: float
    num_buckets: int
    num_predictions: int
    num_references: int
    seed: int
    featurize_model_id: str | None = None
    max_text_length: int | None = None
    p_hist: list[float] = field(default_factory=list, repr=False)
    q_hist: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class MauveFeaturizer:
    """Turns texts into MAUVE features with a causal LM: the final hidden state at each text's last token.

    Args:
        model_id: a hub id (default ``openai-community/gpt2-large``) or a local model folder.
        dtype: ``"float32"`` (default) or ``"bfloat16"``/``"float16"`` for the featuriser's weights.
        device: default CUDA when available, else CPU.
        model, tokenizer: an already loaded base model (or causal LM) and its tokenizer, instead of ``model_id``.
    """

    def __init__(
        self,
        model_id: str | os.PathLike = DEFAULT_FEATURIZER,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ):
        if (model is None) != (tokenizer is None):
            raise ValueError("Pass both `model` and `tokenizer`, or neither (then `model_id` is loaded).")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.model_id = str(model_id) if model is None else str(getattr(model, "name_or_path", model_id))
        if model is None:
            model, tokenizer = _load_featurizer(str(model_id), resolve_dtype(dtype))
        self.model = model.to(self.device).eval()
        self.backbone = getattr(self.model, "base_model", self.model)  # a causal LM's trunk, without the LM head
        self.tokenizer = tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    @classmethod
    def cached(cls, model_id: str | os.PathLike = DEFAULT_FEATURIZER, *, dtype="float32", device=None):
        """A featuriser shared between calls with the same settings (the last two are kept loaded)."""
        device = str(torch.device(device)) if device is not None else None
        return _cached_featurizer(str(model_id), resolve_dtype(dtype), device)

    def tokenize(self, texts: Sequence[str], max_text_length: int) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_text_length`` (the tokenizer's default special tokens)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=int(max_text_length))["input_ids"]
        return [list(ids) for ids in encoded]

    @torch.no_grad()
    def featurize(
        self, texts: Sequence[str], *, max_text_length: int = 1024, batch_size: int = 8, show_progress: bool = False
    ) -> np.ndarray:
        """``[n, hidden]`` float32 features of the non-empty texts, in order (texts are batched by length)."""
        ids = [row for row in self.tokenize(texts, max_text_length) if row]
        if not ids:
            raise ValueError("No text to featurize: every text is empty (or tokenizes to nothing).")
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        features: list[torch.Tensor | None] = [None] * len(ids)
        progress = logging.tqdm(total=len(ids), desc="MAUVE features", unit="text", disable=not show_progress)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            lengths = torch.tensor([len(ids[i]) for i in chunk])
            input_ids = torch.full((len(chunk), int(lengths.max())), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                attention_mask[row, : len(ids[i])] = 1
            hidden = self.backbone(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), return_dict=True
            ).last_hidden_state  # the final layer, after the final norm
            last = hidden[torch.arange(len(chunk), device=hidden.device), (lengths - 1).to(hidden.device)]
            for row, i in enumerate(chunk):
                features[i] = last[row].float().cpu()
            progress.update(len(chunk))
        progress.close()
        return torch.stack(features).numpy()


def _load_featurizer(model_id: str, dtype: torch.dtype):
    from transformers import AutoModel, AutoTokenizer

    local = os.path.expanduser(model_id)
    if os.path.isfile(local):
        raise ValueError(f"`featurize_model_id` must be a model folder or a hub id, not a file: {model_id!r}.")
    if os.path.isdir(local):
        model_id = local
    elif _looks_like_path(model_id):
        raise FileNotFoundError(
            f"The MAUVE featuriser folder {model_id!r} does not exist. Pass a causal LM folder saved with "
            f"`save_pretrained` (offline: `bitstream_diffusion.offline.prepare_gguf_evaluator()`) or a hub id such "
            f"as {DEFAULT_FEATURIZER!r}."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = AutoModel.from_pretrained(model_id, dtype=dtype)
    except OSError as error:
        raise OSError(
            f"Could not load the MAUVE featuriser {model_id!r} (a causal LM folder or hub id). Offline, pass the "
            f"folder of `bitstream_diffusion.offline.prepare_gguf_evaluator()`.\nOriginal error: {error}"
        ) from error
    return model, tokenizer


@lru_cache(maxsize=2)
def _cached_featurizer(model_id: str, dtype: torch.dtype, device: str | None) -> MauveFeaturizer:
    return MauveFeaturizer(model_id, dtype=dtype, device=device)


def _check_num_buckets(num_buckets) -> None:
    if num_buckets == "auto":
        return
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 2:
        raise ValueError(f"`num_buckets` must be 'auto' or an int >= 2, got {num_buckets!r}.")


def _import_mauve():
    try:
        import mauve
    except ImportError as error:
        raise ImportError(
            "MAUVE needs the `mauve-text` package (with faiss-cpu and scikit-learn): "
            "`pip install 'bitstream-diffusion[mauve]'` or `pip install mauve-text`."
        ) from error
    return mauve


def compute_mauve(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    featurize_model_id: str | os.PathLike = DEFAULT_FEATURIZER,
    max_text_length: int = 1024,
    num_buckets: int | str = "auto",
    seed: int = 25,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    dtype: str | torch.dtype = "float32",
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
    featurizer: MauveFeaturizer | None = None,
    show_progress: bool = False,
) -> MauveResult:
    """MAUVE of ``predictions`` (generated texts) against ``references`` (real texts).

    Args:
        predictions, references: lists of texts (the two sizes may differ; empty texts are dropped).
        featurize_model_id: the featuriser, a hub id (default GPT-2 Large, the paper's) or a local folder (offline:
            ``bitstream_diffusion.offline.prepare_gguf_evaluator()``, SmolLM2-135M). Numbers are only comparable
            with the same featuriser.
        max_text_length: tokens per text kept for the features (the official evaluation: the sample length, 128 for
            LM1B; 1024 for OWT).
        num_buckets: k-means clusters: ``"auto"`` (one per ten texts of the smaller side, at least 2) or an int (the
            official evaluation uses 25).
        seed: seeds PCA and k-means; the same seed gives the same result.
        device, dtype, batch_size: where and how the featuriser runs (batch_size texts per forward pass).
        kmeans_num_redo, kmeans_max_iter: k-means restarts (the best is kept) and iterations, mauve's defaults.
        featurizer: an already loaded :class:`MauveFeaturizer` (then ``featurize_model_id``, ``device`` and
            ``dtype`` are not used).
        show_progress: a progress bar while computing features.

    Returns:
        :class:`MauveResult`.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("`predictions` and `references` must be lists of texts, not a single string.")
    predictions, references = list(predictions), list(references)
    if not predictions or not references:
        raise ValueError(
            f"MAUVE needs texts on both sides, got {len(predictions)} predictions and {len(references)} references."
        )
    _check_num_buckets(num_buckets)
    if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length < 1:
        raise ValueError(f"`max_text_length` must be a positive int, got {max_text_length!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    _import_mauve()  # fail before the features are computed
    if featurizer is None:
        featurizer = MauveFeaturizer.cached(featurize_model_id, dtype=dtype, device=device)
    options = {"max_text_length": max_text_length, "batch_size": batch_size, "show_progress": show_progress}
    result = mauve_from_features(
        featurizer.featurize(predictions, **options),
        featurizer.featurize(references, **options),
        num_buckets=num_buckets,
        seed=seed,
        kmeans_num_redo=kmeans_num_redo,
        kmeans_max_iter=kmeans_max_iter,
    )
    result.featurize_model_id = featurizer.model_id
    result.max_text_length = int(max_text_length)
    return result


def mauve_from_features(
    p_features: np.ndarray,
    q_features: np.ndarray,
    *,
    num_buckets: int | str = "auto",
    seed: int = 25,
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
) -> MauveResult:
    """MAUVE from precomputed features ``[n_p, d]`` and ``[n_q, d]`` (e.g. :meth:`MauveFeaturizer.featurize`, so the
    reference features can be computed once for many generated sets). Arguments as in :func:`compute_mauve`."""
    p_features, q_features = np.asarray(p_features, dtype=np.float32), np.asarray(q_features, dtype=np.float32)
    if p_features.ndim != 2 or q_features.ndim != 2 or p_features.shape[1] != q_features.shape[1]:
        raise ValueError(
            f"Features must be [n, d] arrays with the same d, got {p_features.shape} and {q_features.shape}."
        )
    _check_num_buckets(num_buckets)
    smaller = min(len(p_features), len(q_features))
    if isinstance(num_buckets, int) and num_buckets > smaller:
        raise ValueError(
            f"`num_buckets`={num_buckets} is more than the smaller side has texts ({smaller}); use fewer buckets or "
            f"'auto'."
        )
    mauve = _import_mauve()
    out = mauve.compute_mauve(
        p_features=p_features,
        q_features=q_features,
        num_buckets=num_buckets,
        seed=int(seed),
        kmeans_num_redo=int(kmeans_num_redo),
        kmeans_max_iter=int(kmeans_max_iter),
        verbose=False,
    )
    return MauveResult(
        mauve=float(out.mauve),
        frontier_integral=float(out.frontier_integral),
        mauve_star=float(out.mauve_star),
        frontier_integral_star=float(out.frontier_integral_star),
        num_buckets=int(out.num_buckets),
        num_predictions=int(p_features.shape[0]),
        num_references=int(q_features.shape[0]),
        seed=int(seed),
        p_hist=[float(x) for x in out.p_hist],
        q_hist=[float(x) for x in out.q_hist],
    )
