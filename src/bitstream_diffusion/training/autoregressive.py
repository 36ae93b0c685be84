"""The autoregressive baseline of CoBit's comparison: a transformers causal LM of the SDT's size, trained with
next-token cross-entropy on the very token rows the SDT is trained on.

CoBit's claim is measured against an autoregressive Transformer trained on the same data with the same budget. Here
that model is transformers' own ``LlamaForCausalLM`` (RoPE and a SwiGLU feed-forward, like the SDT's blocks), sized
by :func:`ar_config_matching_sdt` to the SDT's parameter count (within 10%), and trained by the same script, data
recipe, batch, steps, optimizer, learning-rate schedule and EMA (``--model_type ar``):

* the rows are the packed token ids of the recipe (bert-base-uncased ids for LM1B; for OWT the GPT-2 windows the
  code rows are made of, :mod:`.autoregressive_data`), so the model's vocabulary is the tokenizer's and it predicts
  ids directly, with no bits;
* every row is read after one start token that is not part of it (:func:`causal_lm_start_token_id`: BOS, else CLS,
  else EOS): the model reads ``[start] + row[:-1]`` and predicts all ``L`` tokens of the row
  (:func:`causal_lm_inputs`, :func:`next_token_loss`), so that unconditional generation from the start token gives
  whole rows and the exact held-out likelihood covers the same ``L`` tokens as CoBit's bound
  (:func:`~bitstream_diffusion.training.likelihood.validation_perplexity`).

The export (a standard transformers folder) lives in :mod:`.autoregressive_export`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..codecs.causal_lm_rows import causal_lm_start_token_id

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..modeling.configuration_sdt import SDTConfig

__all__ = [
    "MODEL_TYPES",
    "ar_config_matching_sdt",
    "build_causal_lm",
    "causal_lm_inputs",
    "causal_lm_num_parameters",
    "causal_lm_start_token_id",
    "causal_lm_token_ids",
    "next_token_loss",
    "next_token_nll",
    "sdt_num_parameters",
]

MODEL_TYPES = ("cobit", "ar")
"""What the training script trains: ``"cobit"`` (the SDT) or ``"ar"`` (the causal-LM baseline of the SDT's size)."""


# ---------------------------------------------------------------------------------------------------- size matching


def sdt_num_parameters(config: SDTConfig) -> int:
    """The number of parameters of ``SDTModel(config)``, counted on the meta device (no memory, no init)."""
    from ..modeling.modeling_sdt import SDTModel

    with torch.device("meta"):
        model = SDTModel(config)
    return sum(p.numel() for p in model.parameters())


def causal_lm_num_parameters(config: LlamaConfig) -> int:
    """The number of parameters of ``LlamaForCausalLM(config)`` from the config alone (tied embeddings counted once).

    Per layer: the attention projections ``q, o`` (``hidden x heads*head_dim``) and ``k, v`` (``hidden x
    kv_heads*head_dim``), the SwiGLU ``gate, up, down`` (``hidden x intermediate``) and two RMSNorm weights; plus the
    token embedding, the final norm and, unless tied, the output head.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return _llama_num_parameters(
        vocab=config.vocab_size, width=config.hidden_size, inner=config.intermediate_size,
        layers=config.num_hidden_layers, q_width=config.num_attention_heads * head_dim,
        kv_width=config.num_key_value_heads * head_dim, tied=config.tie_word_embeddings,
        attention_bias=config.attention_bias, mlp_bias=config.mlp_bias,
    )


def _llama_num_parameters(*, vocab, width, inner, layers, q_width, kv_width, tied, attention_bias=False,
                          mlp_bias=False) -> int:
    attention = 2 * width * q_width + 2 * width * kv_width
    if attention_bias:
        attention += q_width + 2 * kv_width + width  # the biases of q, k, v and o
    mlp = 3 * width * inner + (2 * inner + width if mlp_bias else 0)
    embedding = vocab * width * (1 if tied else 2)
    return layers * (attention + mlp + 2 * width) + embedding + width


def _heads_for_width(width: int, head_dim: int) -> int | None:
    """The number of heads that splits ``width`` into even head widths (RoPE rotates pairs) closest to ``head_dim``;
    ``None`` for an odd width."""
    splits = [heads for heads in range(1, width // 2 + 1) if width % heads == 0 and (width // heads) % 2 == 0]
    return min(splits, key=lambda heads: abs(math.log(width / heads / head_dim))) if splits else None


def ar_config_matching_sdt(
    sdt_config: SDTConfig,
    vocab_size: int,
    *,
    max_position_embeddings: int | None = None,
    tolerance: float = 0.1,
    tie_word_embeddings: bool | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    target_num_parameters: int | None = None,
) -> LlamaConfig:
    """A ``LlamaConfig`` whose model has the SDT's parameter count within ``tolerance``, shaped as close to the SDT as
    the vocabulary allows.

    The search keeps the SDT's SwiGLU ratio (``intermediate_size / hidden_size``), RoPE base, dropout (as attention
    dropout, Llama's only dropout) and initialisation range, and tries every even width up to twice the SDT's, every
    depth up to twice its layers (at least 4), tied and untied embeddings; the heads split the width into even head
    widths closest to the SDT's. Among the shapes within ``tolerance`` it takes the one with the smallest
    ``|ln(width / W)| + |ln(layers / L)| + |ln(head width / H)| + |ln(params / P)|``: at the paper's sizes that is
    the SDT's own shape (or, for CoBit-M against GPT-2's vocabulary, 17 heads instead of 16). A small SDT gets a
    narrow model, since the token embedding alone takes ``vocab_size x width`` parameters (the quickstart SDT has
    1.49M parameters; a bert vocabulary of 30,522 at width 48 is already 1.47M).

    Args:
        sdt_config: the SDT whose size is matched.
        vocab_size: the rows' vocabulary (30,522 for bert-base-uncased; 50,257 for the OWT baseline's GPT-2 windows).
        max_position_embeddings: tokens per row; default the SDT's.
        tolerance: the largest relative size difference allowed (0.1 = 10%).
        tie_word_embeddings: force tied (``True``) or untied (``False``) input/output embeddings; ``None`` searches
            both.
        bos_token_id, eos_token_id, pad_token_id: stored in the config (``bos_token_id`` starts unconditional
            generation: :func:`causal_lm_start_token_id`).
        target_num_parameters: match this count instead of the SDT's (default: :func:`sdt_num_parameters`).

    Raises:
        ValueError: a bad ``vocab_size`` or ``tolerance``, or no shape within the tolerance (the message gives the
            closest one).
    """
    from transformers import LlamaConfig

    if int(vocab_size) < 2:
        raise ValueError(f"`vocab_size` must be at least 2, got {vocab_size}; pass the codec's vocab_size.")
    if not 0.0 < float(tolerance) < 1.0:
        raise ValueError(f"`tolerance` must lie in (0, 1), got {tolerance} (0.1 means within 10%).")
    target = int(target_num_parameters) if target_num_parameters is not None else sdt_num_parameters(sdt_config)
    ratio = sdt_config.intermediate_size / sdt_config.hidden_size
    max_layers = max(2 * sdt_config.num_hidden_layers, 4)
    ties = (True, False) if tie_word_embeddings is None else (bool(tie_word_embeddings),)
    common = dict(
        vocab_size=int(vocab_size),
        max_position_embeddings=int(max_position_embeddings or sdt_config.max_position_embeddings),
        rope_parameters={"rope_type": "default", "rope_theta": float(sdt_config.rope_theta)},
        attention_dropout=float(sdt_config.dropout),
        initializer_range=float(sdt_config.initializer_range),
        rms_norm_eps=float(sdt_config.layer_norm_eps),
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )

    def cost(width: int, heads: int, layers: int, params: int) -> float:
        return (abs(math.log(width / sdt_config.hidden_size)) + abs(math.log(layers / sdt_config.num_hidden_layers))
                + abs(math.log(width / heads / sdt_config.head_dim)) + abs(math.log(params / target)))

    best: tuple[float, dict[str, Any], int] | None = None
    closest: tuple[float, dict[str, Any], int] | None = None
    for width in range(2, 2 * sdt_config.hidden_size + 1, 2):
        heads = _heads_for_width(width, sdt_config.head_dim)
        inner = max(1, round(ratio * width))
        for layers in range(1, max_layers + 1):
            for tie in ties:
                params = _llama_num_parameters(vocab=int(vocab_size), width=width, inner=inner, layers=layers,
                                               q_width=width, kv_width=width, tied=tie)
                error = abs(params / target - 1.0)
                shape = dict(hidden_size=width, num_attention_heads=heads, num_key_value_heads=heads,
                             head_dim=width // heads, num_hidden_layers=layers, intermediate_size=inner,
                             tie_word_embeddings=tie)
                if closest is None or error < closest[0]:
                    closest = (error, shape, params)
                if error <= tolerance and (best is None or cost(width, heads, layers, params) < best[0]):
                    best = (cost(width, heads, layers, params), shape, params)
    if best is None:
        raise ValueError(
            f"No Llama shape has {target:,} parameters within {tolerance:.0%} for a vocabulary of {vocab_size:,}: "
            f"the closest is {closest[1]} with {closest[2]:,}. Raise `tolerance`, or match a larger SDT (the token "
            "embedding alone takes vocab_size x width parameters)."
        )
    return LlamaConfig(**common, **best[1])


def build_causal_lm(config: LlamaConfig) -> LlamaForCausalLM:
    """``LlamaForCausalLM(config)`` with transformers' own initialisation."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(config)


def causal_lm_token_ids(tokenizer) -> dict[str, Any]:
    """The special ids of a baseline, as ``LlamaConfig`` keywords: ``bos_token_id`` = :func:`causal_lm_start_token_id`
    (generation starts there), ``pad_token_id`` = the tokenizer's pad (else the start token), and no
    ``eos_token_id``: a sample is a whole row, and an EOS inside it (a document boundary) does not end it."""
    start = causal_lm_start_token_id(tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    return {"bos_token_id": start, "eos_token_id": None, "pad_token_id": start if pad is None else int(pad)}


# ---------------------------------------------------------------------------------------------------- the objective


def causal_lm_inputs(ids: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """``[B, L]`` model inputs for rows ``ids`` ``[B, L]``: ``[start] + row[:-1]``, so that position ``t`` predicts
    ``row[t]``, the first token included."""
    start = torch.full_like(ids[:, :1], int(start_token_id))
    return torch.cat([start, ids[:, :-1]], dim=1)


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[B]`` float32: each row's negative log-likelihood in nats, summed over its ``L`` tokens.

    Args:
        logits: ``[B, L, V]``, the causal LM's output on :func:`causal_lm_inputs` of ``ids``.
        ids: ``[B, L]`` token ids, the targets.
    """
    if ids.dim() != 2 or logits.dim() != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(f"Expected logits [B, L, V] for ids [B, L], got {tuple(logits.shape)} and {tuple(ids.shape)}; "
                         "run the model on causal_lm_inputs(ids, start_token_id).")
    flat = logits.float().reshape(-1, logits.shape[-1])
    nll = F.cross_entropy(flat, ids.reshape(-1).long(), reduction="none")
    return nll.view(ids.shape).sum(dim=1)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The training loss: the mean next-token cross-entropy (nats) over the ``B * L`` tokens of the rows."""
    return next_token_nll(logits, ids).sum() / ids.numel()
