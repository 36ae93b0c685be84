"""Generative perplexity (GenPPL): how likely an external causal LM finds generated text.

The scoring rules are those of the official CoBit evaluator (``evaluation/external_perplexity.py``,
``HFExternalPerplexityEvaluator.score_texts``), which produced the paper's numbers:

* evaluator ``openai-community/gpt2-large`` in bfloat16 by default (any local folder or hub id works);
* each text is tokenised alone with ``add_special_tokens=False``: no BOS is prepended, and the first token is never
  scored;
* empty texts and texts of a single token are skipped (they count neither in the NLL nor in the token total);
* windows of ``max_seq_len = min(max_position_embeddings, tokenizer.model_max_length)`` tokens (1024 for GPT-2) with
  ``stride = max_seq_len``: window ``k`` ends at ``min((k + 1) * stride, L)`` and begins ``max_seq_len`` tokens
  earlier, and scores the targets in ``[max(previous end, begin + 1), end)``. So a text of 1024 < L < 2048 tokens
  gets a right-aligned second window that scores only targets >= 1024 with overlapping context, and for L >= 2048
  target 1024 (the first token of a fresh window) is never scored;
* the per-token NLL is the cross entropy of the evaluator's logits in the evaluator's dtype (in bf16 the official
  code neither upcasts the logits nor the per-window sums; we do the same so that numbers stay comparable);
* ``GenPPL = exp(total NLL / total scored tokens)``, token-weighted over all texts.

The official scorer runs one text at a time. :class:`GenPPLScorer` packs the windows of several texts into one
right-padded batch with an attention mask and reads only the scored targets, which gives the same numbers (up to
float rounding from the batched kernels) much faster.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_EVALUATOR",
    "GenPPLResult",
    "GenPPLScorer",
    "ScoringWindow",
    "compute_gen_ppl",
    "plan_scoring_windows",
    "resolve_dtype",
]

DEFAULT_EVALUATOR = "openai-community/gpt2-large"
"""The paper's evaluator."""

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# The official code falls back to the checkpoint dtype for sizes it cannot read; we keep the same bound.
_DEFAULT_MAX_SEQ_LEN = 2048
_UNBOUNDED_LENGTH = 10**9


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"``/``"bf16"``, ``"float32"``/``"fp32"``, ``"float16"``/``"fp16"`` or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(
        f"Unknown dtype {dtype!r} for the GenPPL evaluator; use 'bfloat16' (the paper's setting) or 'float32' "
        f"(exact scores), or 'float16'."
    )


class ScoringWindow(NamedTuple):
    """One evaluator call: context ``ids[begin:end]``, scoring the targets ``ids[target_start:end]``."""

    begin: int
    end: int
    target_start: int

    @property
    def num_targets(self) -> int:
        return self.end - self.target_start


def plan_scoring_windows(num_tokens: int, max_seq_len: int, stride: int) -> list[ScoringWindow]:
    """The official windows for a text of ``num_tokens`` tokens (none for fewer than two tokens).

    Windows end at ``stride, 2 * stride, ...`` (the last one clipped to ``num_tokens``), begin ``max_seq_len``
    tokens before their end (at least 0), and score the targets not scored yet, never target 0.

    >>> plan_scoring_windows(1025, 1024, 1024)
    [ScoringWindow(begin=0, end=1024, target_start=1), ScoringWindow(begin=1, end=1025, target_start=1024)]
    """
    if max_seq_len < 2:
        raise ValueError(f"`max_seq_len` must be at least 2, got {max_seq_len}.")
    if not 1 <= stride <= max_seq_len:
        raise ValueError(
            f"`stride` must be between 1 and max_seq_len={max_seq_len}, got {stride}; a larger stride would leave "
            f"tokens unscored."
        )
    windows: list[ScoringWindow] = []
    if num_tokens < 2:
        return windows
    previous_end = 1
    for end in range(stride, num_tokens + stride, stride):
        end = min(end, num_tokens)
        begin = max(0, end - max_seq_len)
        target_start = max(previous_end, begin + 1)
        if end > target_start:
            windows.append(ScoringWindow(begin, end, target_start))
        previous_end = end
        if end >= num_tokens:
            break
    return windows


@dataclass
class GenPPLResult:
    """GenPPL of a list of texts, with the per-text numbers it is made of.

    Attributes:
        gen_ppl: ``exp(total_nll / total_scored_tokens)`` (the official ``external_ppl``); ``inf`` if nothing
            was scored.
        bits_per_token: ``total_nll / total_scored_tokens / ln 2`` (the official ``external_bpt``).
        nll_per_token: ``total_nll / total_scored_tokens`` in nats.
        total_nll: summed NLL in nats over all scored tokens.
        total_scored_tokens: number of scored target tokens.
        nll_sums: per text, the summed NLL in nats (0.0 when skipped).
        num_scored_tokens: per text, the number of scored targets (0 when skipped).
        num_tokens: per text, the evaluator-tokeniser length.
        skipped: per text, whether it was left out (empty, or a single token).
        model_id, dtype, max_seq_len, stride: how the numbers were made.
    """

    gen_ppl: float
    bits_per_token: float
    nll_per_token: float
    total_nll: float
    total_scored_tokens: int
    nll_sums: list[float] = field(default_factory=list)
    num_scored_tokens: list[int] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    model_id: str | None = None
    dtype: str | None = None
    max_seq_len: int | None = None
    stride: int | None = None

    @property
    def perplexities(self) -> list[float]:
        """Per-text perplexity ``exp(nll_sum / num_scored)``; ``inf`` for skipped texts, as the official scorer."""
        return [math.exp(nll / n) if n else math.inf for nll, n in zip(self.nll_sums, self.num_scored_tokens)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["perplexities"] = self.perplexities
        return out

    @classmethod
    def from_counts(
        cls,
        nll_sums: Sequence[float],
        num_scored_tokens: Sequence[int],
        num_tokens: Sequence[int],
        skipped: Sequence[bool],
        **metadata,
    ) -> GenPPLResult:
        total_nll = float(sum(nll_sums))
        total_scored = int(sum(num_scored_tokens))
        if total_scored:
            nll_per_token = total_nll / total_scored
            gen_ppl, bits_per_token = math.exp(nll_per_token), nll_per_token / math.log(2.0)
        else:
            nll_per_token = gen_ppl = bits_per_token = math.inf
        return cls(
            gen_ppl=gen_ppl,
            bits_per_token=bits_per_token,
            nll_per_token=nll_per_token,
            total_nll=total_nll,
            total_scored_tokens=total_scored,
            nll_sums=[float(x) for x in nll_sums],
            num_scored_tokens=[int(x) for x in num_scored_tokens],
            num_tokens=[int(x) for x in num_tokens],
            skipped=[bool(x) for x in skipped],
            **metadata,
        )


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The evaluator's device: the given one, checked to exist, or CUDA when available, else CPU.

    Raises:
        ValueError: the name is no torch device, or it asks for CUDA where no CUDA device is available.
    """
    if device is None:
        return _default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"Unknown device {device!r} for the GenPPL evaluator; use 'cpu' or 'cuda'.") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={str(device)!r} was requested for the GenPPL evaluator, but no CUDA device is available "
                "(torch.cuda.is_available() is False). Pass device=\"cpu\" (or leave device unset to use CUDA only "
                "where there is one)."
            )
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device={str(device)!r} was requested for the GenPPL evaluator, but only {count} CUDA device(s) "
                f"are visible (cuda:0 .. cuda:{count - 1}). Pass one of them, or device=\"cpu\"."
            )
    return device


def _looks_like_path(model_id: str) -> bool:
    """True for strings that can only be a filesystem path (not ``name`` or ``org/name``)."""
    return (
        os.path.isabs(model_id)
        or model_id.startswith((".", "~"))
        or "\\" in model_id
        or model_id.count("/") > 1
        or model_id.endswith("/")
    )


def _load_evaluator(
    model_id: str, dtype: torch.dtype, revision: str | None, attn_implementation: str | None, trust_remote_code: bool
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_id = str(model_id)
    local = Path(model_id).expanduser()
    if local.exists():
        model_id = str(local)
        if local.is_file():
            gguf = local.suffix == ".gguf"
            hint = " (for a GGUF file use `bitstream_diffusion.offline.prepare_gguf_evaluator`)" if gguf else ""
            raise ValueError(f"`model_id` must be a model folder or a hub id, not a file: {model_id!r}{hint}.")
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"The GenPPL evaluator folder {model_id!r} has no config.json; it must hold a causal LM and its "
                f"tokenizer saved with `save_pretrained`."
            )
    elif _looks_like_path(model_id):
        raise FileNotFoundError(
            f"The GenPPL evaluator folder {model_id!r} does not exist. Pass a folder holding a causal LM saved "
            f"with `save_pretrained` (config, weights and tokenizer) or a hub id such as {DEFAULT_EVALUATOR!r}."
        )
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, use_fast=True, **kwargs)
        model_kwargs = dict(kwargs, dtype=dtype)
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(model_id, **model_kwargs)
    except OSError as error:
        if local.exists():
            reason = "the local folder does not hold a loadable causal LM and its tokenizer (`save_pretrained` output)"
        else:
            reason = (
                "it is no local folder, and the hub model is not available here (offline mode, or no cached copy?); "
                "download it once or pass a local folder (offline: `bitstream_diffusion.offline."
                "prepare_gguf_evaluator`)"
            )
        raise OSError(
            f"Could not load the GenPPL evaluator {model_id!r}: {reason}.\nOriginal error: {error}"
        ) from error
    return model, tokenizer


class GenPPLScorer:
    """Scores texts with an external causal LM under the official CoBit GenPPL rules (see the module docstring).

    The evaluator is loaded once; :meth:`cached` shares scorers between calls with the same settings.

    Args:
        model_id: a local folder or a hub id (default: the paper's ``openai-community/gpt2-large``).
        dtype: ``"bfloat16"`` (the paper's setting: bf16 weights, logits and cross entropy) or ``"float32"``
            (true float32; the official scorer asked for float32 still ran under bf16 autocast on CUDA).
        device: where the evaluator runs (default: CUDA if available, else CPU).
        attn_implementation: passed to ``from_pretrained`` (the official code uses ``"sdpa"``); ``None`` for the
            model's default.
        max_seq_len: optional upper bound on the window length; the window is
            ``min(max_position_embeddings, tokenizer.model_max_length, max_seq_len)`` (1024 for GPT-2).
        stride: distance between window ends (default and paper: ``max_seq_len``).
        revision, trust_remote_code: passed to ``from_pretrained``.
        model, tokenizer: an already loaded evaluator to use instead of loading ``model_id`` (it is moved to
            ``device``; its dtype is left as it is).

    Example:
        >>> scorer = GenPPLScorer("openai-community/gpt2-large", dtype="bfloat16")  # doctest: +SKIP
        >>> scorer.score_texts(["The cat sat on the mat.", ""], batch_size=8).gen_ppl  # doctest: +SKIP
    """

    def __init__(
        self,
        model_id: str | os.PathLike = DEFAULT_EVALUATOR,
        *,
        dtype: str | torch.dtype = "bfloat16",
        device: str | torch.device | None = None,
        attn_implementation: str | None = "sdpa",
        max_seq_len: int | None = None,
        stride: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
    ):
        self.device = _resolve_device(device)
        self.model_id = str(model_id) if model is None else str(getattr(model, "name_or_path", model_id))
        if (model is None) != (tokenizer is None):
            raise ValueError("Pass both `model` and `tokenizer`, or neither (then `model_id` is loaded).")
        if model is None:
            self.dtype = resolve_dtype(dtype)
            model, tokenizer = _load_evaluator(
                str(model_id), self.dtype, revision, attn_implementation, trust_remote_code
            )
        else:
            self.dtype = next(model.parameters()).dtype
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

        config_max = getattr(self.model.config, "max_position_embeddings", None)
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        candidates = [
            x for x in (config_max, tokenizer_max, max_seq_len) if isinstance(x, int) and 0 < x < _UNBOUNDED_LENGTH
        ]
        self.max_seq_len = min(candidates) if candidates else _DEFAULT_MAX_SEQ_LEN
        self.stride = int(stride) if stride is not None else self.max_seq_len
        plan_scoring_windows(0, self.max_seq_len, self.stride)  # validates both
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        self._pad_id = int(pad) if pad is not None else 0

    @classmethod
    def cached(cls, model_id: str | os.PathLike = DEFAULT_EVALUATOR, **kwargs) -> GenPPLScorer:
        """A scorer shared between calls with the same arguments (the last two are kept loaded)."""
        if "dtype" in kwargs:
            kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
        if kwargs.get("device") is not None:
            kwargs["device"] = str(_resolve_device(kwargs["device"]))
        return _cached_scorer(str(model_id), tuple(sorted(kwargs.items())))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Evaluator token ids of each text, without special tokens (empty texts give ``[]``)."""
        non_empty = [i for i, text in enumerate(texts) if text]
        ids: list[list[int]] = [[] for _ in texts]
        if non_empty:
            encoded = self.tokenizer([texts[i] for i in non_empty], add_special_tokens=False, verbose=False)
            for i, row in zip(non_empty, encoded["input_ids"]):
                ids[i] = list(row)
        return ids

    def score_texts(self, texts: Sequence[str], batch_size: int = 8) -> GenPPLResult:
        """GenPPL of ``texts`` and the per-text NLL sums and token counts.

        ``batch_size`` windows (of up to ``max_seq_len`` tokens each) go through the evaluator at once; the result
        does not depend on it beyond float rounding. Memory grows with ``batch_size * max_seq_len * vocab_size``
        (the logits).
        """
        texts = _check_texts(texts)
        return self.score_token_ids(self.tokenize(texts), batch_size=batch_size)

    @torch.inference_mode()
    def score_token_ids(self, id_lists: Sequence[Sequence[int]], batch_size: int = 8) -> GenPPLResult:
        """Like :meth:`score_texts` for already tokenised texts (evaluator ids, no special tokens added)."""
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        batch_size = int(batch_size)
        id_tensors = [torch.as_tensor(list(ids), dtype=torch.long) for ids in id_lists]
        num_tokens = [int(t.numel()) for t in id_tensors]
        skipped = [n < 2 for n in num_tokens]
        # Every window of every text, longest first so that batches need little padding.
        jobs = [
            (text_index, window_index, window)
            for text_index, ids in enumerate(id_tensors)
            for window_index, window in enumerate(plan_scoring_windows(ids.numel(), self.max_seq_len, self.stride))
        ]
        jobs.sort(key=lambda job: -(job[2].end - job[2].begin))
        window_nll: dict[tuple[int, int], float] = {}
        window_count: dict[tuple[int, int], int] = {}
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            for (text_index, window_index, window), nll in zip(chunk, self._score_windows(chunk, id_tensors)):
                window_nll[text_index, window_index] = nll
                window_count[text_index, window_index] = window.num_targets
        nll_sums = [0.0] * len(id_tensors)
        num_scored = [0] * len(id_tensors)
        # Accumulate in window order, in Python floats, as the official loop does.
        for key in sorted(window_nll):
            nll_sums[key[0]] += window_nll[key]
            num_scored[key[0]] += window_count[key]
        return GenPPLResult.from_counts(
            nll_sums,
            num_scored,
            num_tokens,
            skipped,
            model_id=self.model_id,
            dtype=str(self.dtype).removeprefix("torch."),
            max_seq_len=self.max_seq_len,
            stride=self.stride,
        )

    def _score_windows(self, chunk, id_tensors: list[torch.Tensor]) -> list[float]:
        """Summed NLL of the scored targets of each window in ``chunk``, from one evaluator call."""
        lengths = [window.end - window.begin for _, _, window in chunk]
        width = max(lengths)
        input_ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (text_index, _, window) in enumerate(chunk):
            input_ids[row, : lengths[row]] = id_tensors[text_index][window.begin : window.end]
            attention_mask[row, : lengths[row]] = 1
        input_ids = input_ids.to(self.device)
        # Right padding keeps every real position's causal context unchanged; without padding, no mask at all
        # (exactly the official single-text call).
        mask = attention_mask.to(self.device) if min(lengths) != width else None
        logits = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        sums = []
        for row, (_, _, window) in enumerate(chunk):
            # The logit at position p predicts token p + 1; read only the targets this window scores.
            first = window.target_start - window.begin
            last = window.end - window.begin
            losses = F.cross_entropy(logits[row, first - 1 : last - 1], input_ids[row, first:last], reduction="none")
            sums.append(float(losses.sum().item()))  # in the logits' dtype, as the official per-window sum
        return sums


def _check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of strings; a single string (whose characters would be scored one by one) is an error."""
    if isinstance(texts, str):
        raise TypeError(
            "`texts` (the metric's `predictions`) must be a list of strings, not a single string: a string would be "
            f"scored character by character. Wrap it: [{texts[:30]!r}{'...' if len(texts) > 30 else ''}]."
        )
    if texts is None or isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"`texts` (the metric's `predictions`) must be a list of strings, got {type(texts).__name__}.")
    texts = list(texts)
    bad = sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
    if bad:
        raise TypeError(f"`texts` (the metric's `predictions`) must be a list of strings; found items of type {bad}.")
    return texts


@lru_cache(maxsize=2)
def _cached_scorer(model_id: str, items: tuple) -> GenPPLScorer:
    return GenPPLScorer(model_id, **dict(items))


def compute_gen_ppl(
    texts: Sequence[str],
    model_id: str | os.PathLike = DEFAULT_EVALUATOR,
    *,
    batch_size: int = 8,
    dtype: Literal["bfloat16", "float32", "float16"] | torch.dtype = "bfloat16",
    device: str | torch.device | None = None,
    max_seq_len: int | None = None,
    stride: int | None = None,
    attn_implementation: str | None = "sdpa",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> GenPPLResult:
    """GenPPL of ``texts`` under the official CoBit rules, with a cached evaluator (see :class:`GenPPLScorer`).

    Raises:
        TypeError: ``texts`` is a single string or holds something else than strings.
        ValueError: ``texts`` is empty, or ``dtype``, ``batch_size``, ``stride`` or ``device`` is invalid (e.g.
            ``"cuda"`` without a CUDA device).
        FileNotFoundError: ``model_id`` is a path that does not exist.
        OSError: ``model_id`` cannot be loaded (e.g. a hub id while offline).
    """
    texts = _check_texts(texts)
    if not texts:
        raise ValueError("GenPPL needs at least one text; got an empty list of predictions.")
    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    scorer = GenPPLScorer.cached(
        model_id,
        dtype=resolve_dtype(dtype),
        device=device,
        max_seq_len=max_seq_len,
        stride=stride,
        attn_implementation=attn_implementation,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    return scorer.score_texts(texts, batch_size=batch_size)
