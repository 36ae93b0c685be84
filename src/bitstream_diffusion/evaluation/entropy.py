"""Token (unigram) entropy of generated samples, the diversity number reported next to GenPPL.

The official CoBit convention (``evaluation/compute_entropy_from_caches.py`` of the original code):

* per sample, ``H = -sum_v p_v ln p_v`` with ``p_v = count_v / T`` over the sample's token-id histogram, in nats,
  computed in float32 (``torch.special.entr``);
* the reported value is the **unweighted** mean of the per-sample entropies;
* an empty sample has ``H = 0`` and still counts in the mean (GenPPL skips it);
* which ids are counted depends on the dataset:

  - LM1B: the bert-base-uncased ids of all 128 positions **after the modulo wrap** of invalid 15-bit codes
    (``id % 30522``; pass ``vocab_size=30522`` to apply it here), special tokens (``[SEP]``, ``[PAD]``, ...) included;
  - OWT: the cleaned GPT-2 ids decoded from the code ids (stop at the first PAD/EOSEQ, strip one leading and one
    trailing EOS, internal EOS kept), so samples have variable length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

__all__ = ["sample_token_entropy", "token_entropy"]


def _as_id_tensor(ids) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        tensor = ids.detach().to("cpu")
    else:
        tensor = torch.as_tensor(list(ids) if not hasattr(ids, "__array__") else ids)
    if tensor.numel() == 0:
        return tensor.reshape(0).to(torch.long)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"Token ids must be integers, got a {tensor.dtype} tensor.")
    return tensor.reshape(-1).to(torch.long)


@torch.no_grad()
def sample_token_entropy(ids: Sequence[int] | torch.Tensor, vocab_size: int | None = None) -> float:
    """Entropy in nats of one sample's token-id histogram (0.0 for an empty sample).

    Args:
        ids: the sample's token ids (a list, a 1-D tensor or array).
        vocab_size: if given, ids are first wrapped with ``id % vocab_size`` (the official LM1B rule for the
            15-bit codes 30522..32767 that name no BERT token).
    """
    tensor = _as_id_tensor(ids)
    if tensor.numel() == 0:
        return 0.0
    if vocab_size is not None:
        tensor = torch.remainder(tensor, int(vocab_size))
    _, counts = torch.unique(tensor, return_counts=True)
    probabilities = counts.to(torch.float32) / counts.sum()
    return float(torch.special.entr(probabilities).sum().item())


def token_entropy(
    id_lists: Iterable[Sequence[int]] | torch.Tensor, vocab_size: int | None = None
) -> tuple[float, list[float]]:
    """Mean per-sample token entropy (nats) and the per-sample values, with the official CoBit conventions.

    Args:
        id_lists: one id sequence per sample: a list of lists (variable lengths allowed, e.g. OWT's cleaned GPT-2
            ids), a list of 1-D tensors, or a ``[N, T]`` tensor (e.g. LM1B's 128 BERT ids per row).
        vocab_size: if given, every id is wrapped ``id % vocab_size`` first. Use ``30522`` with raw LM1B 15-bit
            codes to reproduce the official "modulo wrap"; leave ``None`` for ids that are already valid.

    Returns:
        ``(mean, per_sample)``: the unweighted mean over samples (``nan`` when there are no samples, as in the
        official script) and the list of per-sample entropies. Empty samples contribute 0.0.

    Example:
        >>> token_entropy([[1, 1, 2, 2], []])
        (0.3465735912322998, [0.6931471824645996, 0.0])
    """
    if vocab_size is not None and int(vocab_size) < 1:
        raise ValueError(f"`vocab_size` must be a positive integer, got {vocab_size!r}.")
    if isinstance(id_lists, torch.Tensor):
        if id_lists.dim() != 2:
            raise ValueError(
                f"A tensor of samples must be 2-D [num_samples, length], got shape {tuple(id_lists.shape)}."
            )
        rows = list(id_lists)
    else:
        rows = list(id_lists)
    per_sample = [sample_token_entropy(row, vocab_size=vocab_size) for row in rows]
    if not per_sample:
        return math.nan, []
    return float(sum(per_sample) / len(per_sample)), per_sample
