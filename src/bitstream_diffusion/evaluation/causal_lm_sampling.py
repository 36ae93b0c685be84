"""Sampling from, and exact held-out likelihood of, a transformers causal LM, one random stream per sample.

**Sampling.** :func:`sample_causal_lm` generates ``num_tokens`` tokens per row after one start token, with a KV
cache: ``num_tokens`` forward passes per sample (the NFE of an autoregressive model), the last token never fed back.
At step ``t`` row ``i`` draws its token by inverse-CDF sampling with the uniform ``u[i, t]``, and row ``i`` draws all
its uniforms ``u[i, :]`` from its own ``torch.Generator`` before the loop. A sample therefore depends only on its
generator, not on the batch it runs in, the chunk size or the number of processes (the protocol seeds sample ``i``
with :func:`~bitstream_diffusion.evaluation.sampler_specs.sample_seed`). transformers' ``generate`` draws from one
global generator for the whole batch, so its samples change with the batch; calling it once per sample gives
per-sample seeds but was measured 9x (8 samples) to 30x (64 samples) slower than this loop on CPU (a 4M-parameter
Llama, 32 tokens), so the protocol uses the loop.

The token of a row at temperature ``T`` is drawn from ``softmax(logits / T)`` (``T = 0``: the argmax); with ``top_p``
the distribution is first cut to the nucleus: the most likely tokens, in order, while the mass before them is below
``top_p`` (the first token is always kept), then renormalised. Probabilities are float32, their CDF float64.

**Likelihood.** :func:`causal_lm_row_nll` is the exact negative log-likelihood of each row, in nats: the model reads
``[start] + row[:-1]`` and the cross entropy of its float32 logits against ``row`` is summed over the row's tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._inputs import autocast_context

__all__ = ["auto_causal_lm_batch_size", "causal_lm_row_nll", "sample_causal_lm"]

_AUTO_MEMORY_FRACTION = 0.5


def _cache_keyword(model) -> str:
    """The forward's name for the KV cache (``cache`` in recent transformers, ``past_key_values`` before)."""
    parameters = inspect.signature(model.forward).parameters
    if "cache" in parameters:
        return "cache"
    if "past_key_values" in parameters:
        return "past_key_values"
    raise TypeError(
        f"{type(model).__name__}.forward takes no KV cache (`cache` or `past_key_values`); the protocol samples "
        f"transformers causal LMs (AutoModelForCausalLM)."
    )


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _next_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float | None) -> torch.Tensor:
    """``[B]`` tokens from ``[B, V]`` float32 logits and ``[B]`` uniforms in ``[0, 1)`` (see the module docstring)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    order = None
    if top_p is not None:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    # The first token whose CDF exceeds u * total: never a zero-probability one, unless rounding puts the target at
    # the very top, which then takes the last token with probability > 0.
    index = torch.searchsorted(cdf, uniforms.double().unsqueeze(-1) * cdf[:, -1:], right=True).squeeze(-1)
    last_positive = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    index = torch.where(index >= probs.shape[-1], last_positive, index)
    return index if order is None else order.gather(-1, index.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_causal_lm(
    model,
    *,
    start_token_id: int,
    num_tokens: int,
    generators: Sequence[torch.Generator],
    temperature: float = 1.0,
    top_p: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Generate one row of ``num_tokens`` tokens per generator (see the module docstring).

    Args:
        model: a transformers causal LM (``AutoModelForCausalLM``), in eval mode, on its device.
        start_token_id: the token every row starts from (not part of the returned row).
        num_tokens: tokens generated per row (= forward passes).
        generators: one CPU ``torch.Generator`` per row; it draws the row's ``num_tokens`` uniforms.
        temperature: ``> 0`` divides the logits; ``0`` is greedy decoding.
        top_p: nucleus mass in ``(0, 1)``, or ``None`` for no cut.
        autocast_dtype: run the model under this autocast dtype (``None``: its own dtype).

    Returns:
        ``int64`` ``[len(generators), num_tokens]`` on the CPU.
    """
    if not temperature >= 0:
        raise ValueError(f"`temperature` must be >= 0 (0: greedy), got {temperature}.")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must lie in (0, 1] (1 keeps every token), got {top_p}.")
    top_p = None if top_p is not None and top_p >= 1 else top_p
    device = next(model.parameters()).device
    batch = len(generators)
    uniforms = torch.stack([torch.rand(num_tokens, generator=g, dtype=torch.float64) for g in generators])
    uniforms = uniforms.to(device)
    tokens = torch.full((batch, 1), int(start_token_id), dtype=torch.long, device=device)
    keyword, cache = _cache_keyword(model), _new_cache(model)
    generated = []
    for step in range(num_tokens):
        with autocast_context(device, autocast_dtype):
            out = model(input_ids=tokens, use_cache=True, **{keyword: cache})
        tokens = _next_tokens(out.logits[:, -1, :].float(), uniforms[:, step], temperature, top_p).unsqueeze(-1)
        generated.append(tokens)
    return torch.cat(generated, dim=1).cpu()


@torch.no_grad()
def causal_lm_row_nll(
    model,
    rows: torch.Tensor,
    *,
    start_token_id: int,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Exact NLL of each row in nats: ``-sum_t log p(row[t] | start, row[:t])``.

    Args:
        model: a transformers causal LM, in eval mode.
        rows: ``[N, T]`` token ids.
        start_token_id: the token the model reads before the row.
        batch_size: rows per forward pass (rows are batched in order).
        autocast_dtype: run the model under this autocast dtype; the cross entropy is float32.

    Returns:
        ``float64`` ``[N]`` on the CPU.
    """
    if rows.dim() != 2 or rows.shape[1] < 1:
        raise ValueError(f"`rows` must be [N, T] token ids with T >= 1, got shape {tuple(rows.shape)}.")
    device = next(model.parameters()).device
    out = []
    for start in range(0, rows.shape[0], batch_size):
        targets = rows[start : start + batch_size].to(device=device, dtype=torch.long)
        inputs = torch.cat([torch.full_like(targets[:, :1], int(start_token_id)), targets[:, :-1]], dim=1)
        with autocast_context(device, autocast_dtype):
            logits = model(input_ids=inputs, use_cache=False).logits
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # [B, T]
        out.append(nll.double().sum(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def auto_causal_lm_batch_size(
    model, num_tokens: int, device: torch.device, free_bytes: int | None = None
) -> int | None:
    """``max_batch_size="auto"`` for a causal LM: the samples whose KV cache and logits fit in half the free memory.

    Per sample: keys and values of every layer for ``num_tokens + 1`` positions, plus four vocabulary-wide float32
    rows (logits, probabilities, their sort). ``free_bytes`` defaults to the free CUDA memory; on other devices
    without ``free_bytes`` the batch runs whole (``None``).
    """
    if free_bytes is None:
        if device.type != "cuda":
            return None
        free_bytes, _ = torch.cuda.mem_get_info(device)
    config = model.config
    layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 1)))
    hidden = int(getattr(config, "hidden_size", getattr(config, "n_embd", 1)))
    element = torch.finfo(next(model.parameters()).dtype).bits // 8
    per_sample = 2 * layers * (num_tokens + 1) * hidden * element + 4 * 4 * int(config.vocab_size)
    return max(1, int(free_bytes * _AUTO_MEMORY_FRACTION) // per_sample)
