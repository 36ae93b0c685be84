"""Token ids <-> fixed-width bit vectors, MSB first, vectorised.

A token id ``t`` written with ``m`` bits becomes ``bit[k] = (t >> (m - 1 - k)) & 1`` for ``k = 0 .. m - 1``: bit 0 of a
token is its most significant bit. A sequence of ``T`` ids becomes the flat vector of ``T * m`` bits, token after
token. Bits are {0, 1}, never ±1 (CoBit adds noise to {0, 1} and centres inside the model).

With ``m = ceil(log2 V)`` some bit patterns (``V .. 2**m - 1``) are not valid ids of a vocabulary of size ``V``. What
happens to them is an explicit :data:`InvalidIdPolicy`; the official LM1B decoder wraps them modulo ``V``. Negative
ids never come from bits; they are an error everywhere, never wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch

__all__ = [
    "INVALID_ID_POLICIES",
    "MAX_BITS_PER_TOKEN",
    "InvalidIdPolicy",
    "apply_invalid_id_policy",
    "binarize_bits",
    "bits_for_vocab",
    "bits_to_ids",
    "check_bits_per_token",
    "check_invalid_id_policy",
    "filter_invalid_ids",
    "ids_to_bits",
    "token_to_bits_table",
]

InvalidIdPolicy = Literal["wrap", "skip", "unk", "clip", "error"]
"""What to do with a decoded id ``>= vocab_size`` (a bit pattern the vocabulary does not use).

* ``"wrap"``: ``id % vocab_size``, what the official LM1B and raw-binary decoders do.
* ``"skip"``: drop the position, the official OWT code decoder (the id is left untouched in tensors and removed when a
  row is turned into an id list or text).
* ``"unk"``: replace it with the tokenizer's unknown-token id.
* ``"clip"``: replace it with ``vocab_size - 1``.
* ``"error"``: raise a ``ValueError``.
"""

INVALID_ID_POLICIES: tuple[str, ...] = get_args(InvalidIdPolicy)

MAX_BITS_PER_TOKEN = 62
"""Ids are int64 and must stay non-negative, so at most 62 bits per token are supported."""


def bits_for_vocab(vocab_size: int) -> int:
    """The number of bits that can write every id of a vocabulary: ``ceil(log2 vocab_size)`` (at least 1).

    bert-base-uncased (30522) needs 15 bits; a 65536-code tokenizer needs 16; GPT-2 (50257) needs 16.
    """
    vocab_size = int(vocab_size)
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size}.")
    return max(1, math.ceil(math.log2(vocab_size)))


def check_bits_per_token(bits_per_token: int, vocab_size: int | None = None) -> int:
    """Validate a bit width (and that ``vocab_size`` fits in it); return it as an ``int``.

    Raises:
        ValueError: the width is not in ``[1, 62]`` or the vocabulary has more ids than ``2**bits_per_token``.
    """
    if isinstance(bits_per_token, bool) or int(bits_per_token) != bits_per_token:
        raise ValueError(f"bits_per_token must be an integer, got {bits_per_token!r}.")
    bits_per_token = int(bits_per_token)
    if not 1 <= bits_per_token <= MAX_BITS_PER_TOKEN:
        raise ValueError(f"bits_per_token must be in [1, {MAX_BITS_PER_TOKEN}], got {bits_per_token}.")
    if vocab_size is not None:
        needed = bits_for_vocab(vocab_size)
        if bits_per_token < needed:
            raise ValueError(
                f"A vocabulary of {int(vocab_size)} ids needs ceil(log2({int(vocab_size)})) = {needed} bits per token, "
                f"but bits_per_token={bits_per_token} only holds {2**bits_per_token} ids. Use bits_per_token >= "
                f"{needed} (or leave it unset to use {needed}), or use a tokenizer with at most {2**bits_per_token} "
                "ids."
            )
    return bits_per_token


def check_invalid_id_policy(policy: str) -> str:
    """Validate an :data:`InvalidIdPolicy` name and return it."""
    if policy not in INVALID_ID_POLICIES:
        raise ValueError(f"Unknown invalid_id_policy {policy!r}; choose one of {list(INVALID_ID_POLICIES)}.")
    return policy


def _msb_first_shifts(bits_per_token: int, device: torch.device) -> torch.Tensor:
    return torch.arange(bits_per_token - 1, -1, -1, dtype=torch.long, device=device)


def _work_dtype(bits_per_token: int) -> torch.dtype:
    """int32 halves the memory traffic of the shifts whenever the ids fit in it."""
    return torch.int32 if bits_per_token <= 31 else torch.long


def token_to_bits_table(vocab_size: int, bits_per_token: int | None = None) -> torch.Tensor:
    """The official raw-binary lookup table: row ``t`` holds the MSB-first bits of id ``t``.

    Returns:
        ``uint8`` tensor ``[vocab_size, bits_per_token]`` (``bits_per_token`` defaults to :func:`bits_for_vocab`).
    """
    bits_per_token = bits_for_vocab(vocab_size) if bits_per_token is None else bits_per_token
    check_bits_per_token(bits_per_token, vocab_size)
    ids = torch.arange(int(vocab_size), dtype=torch.long)
    return ids_to_bits(ids, bits_per_token).view(int(vocab_size), bits_per_token)


def ids_to_bits(
    ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    bits_per_token: int,
    *,
    dtype: torch.dtype = torch.uint8,
) -> torch.Tensor:
    """Write token ids as flat MSB-first bit vectors.

    Args:
        ids: integer ids ``[..., T]`` (a tensor or nested lists), each in ``[0, 2**bits_per_token)``.
        bits_per_token: bits per id, ``m``.
        dtype: dtype of the result: ``torch.uint8`` (default, as the official datasets store bits), ``torch.bool``,
            an integer type, or a float type (``float32`` for the model).

    Returns:
        ``[..., T * m]`` tensor of {0, 1} on the device of ``ids``.

    Raises:
        TypeError: ``ids`` is not an integer tensor.
        ValueError: ``ids`` is a scalar, or an id is negative or needs more than ``bits_per_token`` bits.
    """
    bits_per_token = check_bits_per_token(bits_per_token)
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}; convert with `.long()` first.")
    if ids.dim() == 0:
        raise ValueError("ids must have at least one dimension [..., T]; got a scalar. Use `ids.view(1)`.")
    ids = ids.long()
    if ids.numel() > 0:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= 2**bits_per_token:
            raise ValueError(
                f"Token ids must lie in [0, {2**bits_per_token}) to be written with {bits_per_token} bits, got ids in "
                f"[{low}, {high}]. Increase bits_per_token to at least {bits_for_vocab(max(high, 0) + 1)} or fix the "
                "ids."
            )
    work = ids.to(_work_dtype(bits_per_token))
    bits = (work.unsqueeze(-1) >> _msb_first_shifts(bits_per_token, ids.device).to(work.dtype)) & 1
    return bits.flatten(-2).to(dtype)


def binarize_bits(bits: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Turn a bit tensor or a tensor of probabilities P(bit = 1) into {0, 1} ``uint8``.

    Float inputs are thresholded as the official decoder does: ``clamp(p, 0, 1) > threshold``, so ``p = 0.5`` gives 0
    and NaN gives 0. Bool inputs are taken as they are. Integer inputs must already be in {0, 1}.

    Raises:
        TypeError: ``bits`` is not a tensor, or is complex.
        ValueError: an integer input holds a value other than 0 or 1.
    """
    if not isinstance(bits, torch.Tensor):
        raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}.")
    if bits.is_complex():
        raise TypeError(f"bits must be real, got dtype {bits.dtype}.")
    if bits.is_floating_point():
        return (bits.clamp(0, 1) > threshold).to(torch.uint8)
    if bits.dtype == torch.bool:
        return bits.to(torch.uint8)
    if bits.numel() > 0 and (int(bits.max()) > 1 or int(bits.min()) < 0):
        bad = bits[(bits != 0) & (bits != 1)].unique()[:5].tolist()
        raise ValueError(
            f"Integer bit tensors must hold only 0 and 1, found {bad}. Pass probabilities as a float tensor to "
            "threshold them, or ids to `ids_to_bits`."
        )
    return bits.to(torch.uint8)


def bits_to_ids(bits: torch.Tensor, bits_per_token: int, *, threshold: float = 0.5) -> torch.Tensor:
    """Read flat MSB-first bit vectors back into ids (no vocabulary check; see :func:`apply_invalid_id_policy`).

    Args:
        bits: ``[..., T * m]``: {0, 1} integers or bools, or float probabilities (thresholded by
            :func:`binarize_bits`: ``clamp(p, 0, 1) > threshold``).
        bits_per_token: ``m``.

    Returns:
        ``int64`` ids ``[..., T]`` in ``[0, 2**m)``.

    Raises:
        ValueError: the last dimension is not a multiple of ``bits_per_token``, or integer bits are not binary.
    """
    bits_per_token = check_bits_per_token(bits_per_token)
    bits = binarize_bits(bits, threshold=threshold)
    if bits.dim() == 0:
        raise ValueError("bits must have at least one dimension [..., T * bits_per_token]; got a scalar.")
    length = bits.shape[-1]
    if length % bits_per_token != 0:
        raise ValueError(
            f"The last dimension of bits ({length}) is not a multiple of bits_per_token={bits_per_token}; expected "
            f"[..., num_tokens * {bits_per_token}]. Check bits_per_token or the sequence length."
        )
    work_dtype = _work_dtype(bits_per_token)
    grouped = bits.to(work_dtype).view(*bits.shape[:-1], length // bits_per_token, bits_per_token)
    shifts = _msb_first_shifts(bits_per_token, bits.device).to(work_dtype)
    return (grouped << shifts).sum(dim=-1, dtype=torch.long)


def apply_invalid_id_policy(
    ids: torch.Tensor,
    vocab_size: int,
    policy: InvalidIdPolicy,
    *,
    unk_id: int | None = None,
) -> torch.Tensor:
    """Map ids ``>= vocab_size`` according to ``policy``; valid ids are unchanged.

    The policy is for bit patterns the vocabulary does not use, which are never negative: a negative id is not a
    decoded id (e.g. a ``-100`` label mask or an off-by-one) and is always an error, whatever the policy.
    ``"skip"`` leaves the tensor as it is (a rectangular tensor cannot drop positions): use
    :func:`filter_invalid_ids` when turning rows into lists.

    Returns:
        a new ``int64`` tensor with the shape of ``ids``.

    Raises:
        ValueError: an id is negative, ``policy="error"`` and an id is ``>= vocab_size``, or ``policy="unk"``
            without ``unk_id``.
    """
    check_invalid_id_policy(policy)
    ids = ids.long()
    vocab_size = int(vocab_size)
    if ids.numel() > 0 and int(ids.min()) < 0:
        bad = ids[ids < 0].unique()[:5].tolist()
        raise ValueError(
            f"Token ids must be non-negative, got {bad}. Decoded ids come from bits and lie in [0, 2**bits_per_token); "
            f"the invalid-id policy ({policy!r}) only maps ids >= vocab_size ({vocab_size}). Remove padding or "
            "label-mask values such as -100 before decoding, or decode the bits with `bits_to_text`."
        )
    invalid = ids >= vocab_size
    if policy == "wrap":
        return ids % vocab_size
    if policy == "clip":
        return ids.clamp(0, vocab_size - 1)
    if policy == "unk":
        if unk_id is None:
            raise ValueError("invalid_id_policy='unk' needs a tokenizer with an unknown token (unk_token_id is None).")
        return torch.where(invalid, torch.full_like(ids, int(unk_id)), ids)
    if policy == "error" and bool(invalid.any()):
        bad = ids[invalid].unique()[:5].tolist()
        raise ValueError(
            f"Decoded ids {bad} are outside the vocabulary [0, {vocab_size}) (invalid_id_policy='error'). "
            "Choose invalid_id_policy='wrap' (official LM1B), 'skip' (official OWT), 'unk' or 'clip' to decode them."
        )
    return ids.clone()


def filter_invalid_ids(ids: torch.Tensor, vocab_size: int) -> list[list[int]]:
    """Rows of ``ids [B, T]`` as lists with every id outside ``[0, vocab_size)`` dropped (the ``"skip"`` policy)."""
    if ids.dim() != 2:
        raise ValueError(f"Expected ids [B, T], got shape {tuple(ids.shape)}.")
    return [[i for i in row if 0 <= i < vocab_size] for row in ids.tolist()]
