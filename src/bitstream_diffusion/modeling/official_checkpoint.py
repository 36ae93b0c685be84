"""Reading the official CoBit `.pt` files safely and strictly.

The official code writes two formats:

* release files: `{"model": state_dict, "global_step", "epoch", "ema_decay", ...}` with EMA weights already baked in;
* training checkpoints: `{"model": raw weights, "ema": {"decay", "shadow": {param: tensor}}, "opt", "rng_state", ...}`.
  The EMA shadow holds every parameter; buffers (the sigma-embedding frequencies) exist only in the raw weights.

Both are read with `torch.load(weights_only=True)`, so a file can never run code when it is loaded (see
docs/design.md#files-and-trust); training checkpoints carry a numpy RNG state, so four numpy globals are allow-listed,
and nothing else is ever unpickled. A file that is empty, truncated or no PyTorch file at all is named as such, and
weights are taken strictly: a partial EMA shadow or an integer weight is an error, never silently patched.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from .configuration_sdt import SDT_PRESETS, SDTConfig

__all__ = [
    "OfficialCheckpoint",
    "load_official_checkpoint",
    "infer_sdt_config",
    "check_state_dict_matches",
    "state_dict_mismatch_message",
    "StateDictMismatchError",
]

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_BUFFER_KEYS = ("time_fn._freq",)


class StateDictMismatchError(KeyError):
    """A checkpoint whose keys or shapes do not match the model exactly (never loaded non-strictly)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class OfficialCheckpoint:
    """The weights chosen from an official file, and what the file said about them."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    source_format: str  # "release" or "training"
    used_ema: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects a training checkpoint's `rng_state["np_random"]` needs (the state of `np.random.get_state()`:
    an array of uint32 words rebuilt through `_reconstruct`)."""
    try:
        import numpy as np
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        return []
    allowed: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    uint32_dtype = getattr(getattr(np, "dtypes", None), "UInt32DType", None)
    if uint32_dtype is not None:
        allowed.append(uint32_dtype)
    return allowed


def _not_a_checkpoint(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a PyTorch file, judged from its first bytes, or `None` if it may be one.

    `torch.save` writes a zip archive (legacy files: a pickle); a truncated zip has lost its central directory, which
    sits at the end of the file.
    """
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes): it is not a PyTorch checkpoint (an interrupted download or copy?)"
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return (
                f"is truncated ({size} bytes, the end of its zip archive is missing): download or copy it again"
            )
        return None
    if head[:1] == b"\x80":  # a pickle (protocol 2+): the legacy torch.save format
        return None
    if len(head) > 8 and head[8:9] == b"{":
        return "looks like a safetensors file, not a PyTorch checkpoint: pass the official .pt file"
    shown = head.decode("utf-8", errors="replace") if head.isascii() else repr(head)
    return f"is not a PyTorch checkpoint (no zip archive or pickle; it starts with {shown!r})"


def _torch_load_weights_only(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` with errors that say what is wrong with the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!s}.")
    problem = _not_a_checkpoint(path)
    if problem:
        raise ValueError(f"{path!s} {problem}.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError, RuntimeError (a damaged archive), EOFError, ...
        if isinstance(error, FileNotFoundError):
            raise
        if "Unsupported global" in str(error):
            raise ValueError(
                f"Could not read {path!s} with torch.load(weights_only=True): {error}\n"
                "Official CoBit files hold only tensors, numbers, strings and a numpy RNG state. This file contains "
                "other pickled Python objects, which are never unpickled here for safety. Re-save just the tensors, "
                "e.g. `torch.save({'model': model.state_dict()}, path)`, in a trusted environment."
            ) from error
        raise ValueError(
            f"{path!s} is damaged and cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error}). "
            "Download or copy it again."
        ) from error


def _strip_wrapper_prefixes(state_dict: dict[str, Any], source: str) -> "OrderedDict[str, torch.Tensor]":
    """Keys without `torch.compile`/DDP prefixes; every value must be a floating-point tensor."""
    cleaned: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"State-dict entry {key!r} of {source} is a {type(value).__name__}, not a tensor.")
        if not value.is_floating_point():
            raise ValueError(
                f"State-dict entry {key!r} of {source} has dtype {value.dtype}; every SDT weight is a floating-point "
                "tensor. The file is not an official CoBit checkpoint, or it was quantised or edited: convert the "
                "original float weights."
            )
        cleaned[key] = value
    return cleaned


def load_official_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> OfficialCheckpoint:
    """Read an official release file or training checkpoint and pick the weights to use.

    Args:
        path: the `.pt` file.
        use_ema: take the EMA shadow of a training checkpoint (the default; the paper evaluates EMA weights). Release
            files already hold baked EMA weights, so the flag changes nothing for them.
    """
    payload = _torch_load_weights_only(path)
    if not isinstance(payload, dict) or "model" not in payload or not isinstance(payload["model"], dict):
        found = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{path!s} is not an official CoBit checkpoint: expected a dict with a 'model' state dict, found {found}."
        )
    weights = _strip_wrapper_prefixes(payload["model"], f"{path!s} ['model']")
    metadata = {k: v for k, v in payload.items() if isinstance(v, (int, float, str, bool)) or v is None}
    ema = payload.get("ema")
    if ema is None:
        return OfficialCheckpoint(weights, "release", used_ema=False, metadata=metadata)
    if not isinstance(ema, dict) or not isinstance(ema.get("shadow"), dict):
        raise ValueError(f"{path!s} has an 'ema' entry without a 'shadow' state dict; the file is malformed.")
    if not use_ema:
        return OfficialCheckpoint(weights, "training", used_ema=False, metadata=metadata)
    shadow = _strip_wrapper_prefixes(ema["shadow"], f"{path!s} ['ema']['shadow']")
    unknown = sorted(set(shadow) - set(weights))
    if unknown:
        raise StateDictMismatchError(f"EMA shadow keys absent from the model weights of {path!s}: {unknown}")
    # The shadow holds every parameter; buffers (the sigma-embedding frequencies) come from the raw weights. A shadow
    # without some parameter would mix EMA and raw weights silently: refuse it.
    missing = sorted(key for key in weights if key not in shadow and key not in _BUFFER_KEYS)
    if missing:
        raise StateDictMismatchError(
            f"The EMA shadow of {path!s} lacks {len(missing)} parameter(s) that the model weights have: {missing}. "
            "Taking them from the raw weights would mix EMA and raw weights. Use the raw weights for all parameters "
            "with use_ema=False (--no-ema), or convert a complete checkpoint."
        )
    merged = OrderedDict((key, shadow.get(key, value)) for key, value in weights.items())
    metadata["ema_decay"] = ema.get("decay")
    return OfficialCheckpoint(merged, "training", used_ema=True, metadata=metadata)


def infer_sdt_config(state_dict: dict[str, torch.Tensor], **known: Any) -> SDTConfig:
    """Build an [`SDTConfig`] from the shapes of an official state dict.

    Widths, depth, patch size, head width and self-conditioning follow from shapes. The number of attention heads
    does not: it comes from `known["num_attention_heads"]`, or from the preset whose shapes match exactly, else an
    error asks for it. The split of the 73 position features into global/local Fourier features is taken as the
    official 32/4 unless `known` says otherwise.
    """
    required = ["time_proj.weight", "cont_input_proj.weight", "head.input_adapter.weight", "head.patch_adapter.weight"]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise StateDictMismatchError(f"Cannot infer the SDT configuration: the state dict lacks {missing}.")
    hidden = state_dict["time_proj.weight"].shape[0]
    content = state_dict["cont_input_proj.weight"].shape[0]
    head_hidden, head_in = state_dict["head.input_adapter.weight"].shape
    patch = state_dict["head.patch_adapter.weight"].shape[0] // head_hidden
    self_conditioning = head_in == 3 * content
    block_ids = {int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key))}
    intermediate = state_dict["blocks.0.ff.Wa.weight"].shape[0] if "blocks.0.ff.Wa.weight" in state_dict else None
    inferred: dict[str, Any] = dict(
        bits_per_token=patch,
        hidden_size=hidden,
        num_hidden_layers=len(block_ids),
        content_dim=content,
        head_hidden_size=head_hidden,
        self_conditioning=self_conditioning,
    )
    if intermediate is not None:
        inferred["intermediate_size"] = intermediate
    if "patch_proj.weight" in state_dict:
        channels = 2 if self_conditioning else 1
        position_dim = state_dict["patch_proj.weight"].shape[1] // patch - channels * content
        local = int(known.get("num_local_fourier_features", 4))
        inferred["num_global_fourier_features"] = (position_dim - 1 - 2 * local) // 2
        inferred["num_local_fourier_features"] = local
    inferred.update(known)
    if "num_attention_heads" not in inferred:
        for name, preset in SDT_PRESETS.items():
            comparable = ("bits_per_token", "hidden_size", "num_hidden_layers", "intermediate_size")
            if all(preset[k] == inferred.get(k) for k in comparable) and content == 64 and head_hidden == 128:
                inferred["num_attention_heads"] = preset["num_attention_heads"]
                inferred.setdefault("max_position_embeddings", preset["max_position_embeddings"])
                break
        else:
            raise ValueError(
                f"The number of attention heads cannot be read from the weights (hidden size {hidden}, "
                f"{len(block_ids)} blocks) and they match no preset ({sorted(SDT_PRESETS)}). Pass "
                "`num_attention_heads=...`, a `config`, or the official run config dict."
            )
    return SDTConfig(**inferred)


def state_dict_mismatch_message(
    source: str,
    missing: list[str],
    unexpected: list[str],
    mis_shaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    advice: str,
) -> str:
    """The one wording of a weights/architecture mismatch: every missing, unexpected and mis-shaped key, then `advice`.

    `mis_shaped` holds `(key, shape in the file, shape in the model)`.
    """
    lines = [f"The {source} does not match the SDT architecture exactly (strict loading, nothing is dropped):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {sorted(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {sorted(unexpected)}")
    if mis_shaped:
        listed = [f"{key}: checkpoint {tuple(got)} vs model {tuple(want)}" for key, got, want in sorted(mis_shaped)]
        lines.append(f"  shape mismatches ({len(mis_shaped)}): {listed}")
    lines.append(advice)
    return "\n".join(lines)


def check_state_dict_matches(
    expected: dict[str, torch.Tensor], provided: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise [`StateDictMismatchError`] listing every missing, unexpected or mis-shaped key."""
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    mis_shaped = [
        (key, tuple(provided[key].shape), tuple(expected[key].shape))
        for key in set(expected) & set(provided)
        if tuple(expected[key].shape) != tuple(provided[key].shape)
    ]
    if missing or unexpected or mis_shaped:
        advice = "Check the config (preset, num_attention_heads, bits_per_token) or the file itself."
        raise StateDictMismatchError(state_dict_mismatch_message(source, missing, unexpected, mis_shaped, advice))
