"""Configuration of the Sequence Diffusion Transformer (SDT), the denoiser network of CoBit (arXiv 2605.07013)."""

# No `from __future__ import annotations` here: `@strict` checks each field's type only when the annotation is a real
# type, not a string, so a config.json with `"hidden_size": "32"` is refused with the field's name.
import importlib
import math
from collections.abc import Callable
from typing import Any

from huggingface_hub.dataclasses import as_validated_field, strict
from transformers import PretrainedConfig

__all__ = ["SDTConfig", "SDT_PRESETS"]


# The paper's three released models. `intermediate_size` is the SwiGLU hidden width, int(2 * dim_ff / 3) of the
# official `dim_ff` (3072 -> 2048, 4096 -> 2730).
SDT_PRESETS: dict[str, dict[str, Any]] = {
    "cobit-s-lm1b": dict(
        bits_per_token=15,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=2048,
        max_position_embeddings=128,
    ),
    "cobit-s-owt": dict(
        bits_per_token=16,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=2048,
        max_position_embeddings=1024,
    ),
    "cobit-m-owt": dict(
        bits_per_token=16,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=2730,
        max_position_embeddings=1024,
    ),
}

# Official `model` settings this implementation reproduces; any other value is a different architecture.
_OFFICIAL_REQUIRED_MODEL_SETTINGS: dict[str, Any] = {
    "head_type": "optimal_skip_mlp",
    "abs_pos_mode": "local_only",
    "use_adaln": True,
    "use_swiglu": True,
    "use_rope_trunk": True,
    "center_inputs": True,
    "out_dim": 1,
    "continuous_logit_scaling": "matched_filter_residual",
}


def _interval(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    kind: str = "a finite number",
) -> Callable:
    """A strict-dataclass field validator: the value is a finite number in the interval (NaN and infinities refused).

    The field's type is checked first by `@strict`; the error names the field (`Validation error for field 'x'`), and
    this message adds the allowed range and the value, e.g. `must be a finite number > 0, got -1`.
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high}")
    allowed = kind + (" " + " and ".join(bounds) if bounds else "")

    @as_validated_field
    def check(value: int | float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # the type validator has already refused it
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            raise ValueError(f"must be {allowed}, got {value!r}.")

    return check


_at_least_one = _interval(1, kind="an integer")
_non_negative_int = _interval(0, kind="an integer")
_non_negative = _interval(0)
_positive = _interval(0, low_open=True)
_finite = _interval()


@strict(accept_kwargs=True)
class SDTConfig(PretrainedConfig):
    r"""
    Configuration of [`SDTModel`], the CoBit Sequence Diffusion Transformer.

    A sequence of `T` tokens is a flat vector of `S = T * bits_per_token` bits in {0, 1}. The bits of one token form
    one transformer position ("semantic bit-patching"); a per-bit head returns one logit per bit, to which the
    matched filter `clip((x - matched_filter_center) * matched_filter_scale / sigma^2, ±matched_filter_clip)` is
    added. Noise levels `sigma` are in {0, 1} units (`x_sigma = x0 + sigma * eps`).

    Args:
        bits_per_token (`int`, defaults to 15): bits per token and patch size `P` (15 for bert-base-uncased ids,
            16 for the OWT code tokenizer).
        hidden_size (`int`, defaults to 768): transformer width `E`.
        num_hidden_layers (`int`, defaults to 12): number of adaLN-Zero blocks `L`.
        num_attention_heads (`int`, defaults to 12): attention heads; `hidden_size` must divide evenly.
        intermediate_size (`int`, defaults to 2048): SwiGLU hidden width (the official `int(2 * dim_ff / 3)`).
        content_dim (`int`, defaults to 64): per-bit content width `C` of the shared input projection.
        head_hidden_size (`int`, defaults to 128): hidden width of the per-bit output head.
        num_global_fourier_features (`int`, defaults to 32): global Fourier features per bit. The official model
            feeds them as exact zeros ("local_only" positions) but sizes the patch projection for them, so released
            weights keep those columns.
        num_local_fourier_features (`int`, defaults to 4): sine/cosine pairs of the bit's slot within its token.
        rope_theta (`float`, defaults to 10000.0): RoPE base over token positions, > 1.
        max_position_embeddings (`int`, defaults to 128): tokens per training row (the default generation length;
            RoPE itself accepts any length).
        dropout (`float`, defaults to 0.1): dropout on attention probabilities, residual branches, the SwiGLU and
            head hidden layers (training only), in [0, 1).
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the parameter-free LayerNorms, > 0.
        sigma_data (`float`, defaults to 0.5): EDM data std in {0,1} units, > 0;
            `c_in = 1 / sqrt(sigma^2 + sigma_data^2)`.
        data_center (`float`, defaults to 0.5): subtracted from noisy bits and self-conditioning estimates.
        matched_filter_center (`float`, defaults to 0.5), matched_filter_scale (`float`, defaults to 1.0, >= 0),
        matched_filter_clip (`float`, defaults to 30.0, > 0): the analytic log-odds residual added to the network
            logits.
        self_conditioning (`bool`, defaults to `True`): whether the network takes a second, self-conditioning channel.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of most linear layers, >= 0.

    Every field is checked when it is set: sizes are integers >= 1 (the Fourier feature counts >= 0), every float is
    finite and in the range given above, and a wrong type or value raises an error naming the field, the value and the
    allowed range.

    Example:

    ```python
    >>> from bitstream_diffusion import SDTConfig, SDTModel
    >>> config = SDTConfig.from_preset("cobit-s-lm1b")
    >>> model = SDTModel(config)
    ```
    """

    model_type = "bitstream_sdt"

    bits_per_token: int = _at_least_one(default=15)
    hidden_size: int = _at_least_one(default=768)
    num_hidden_layers: int = _at_least_one(default=12)
    num_attention_heads: int = _at_least_one(default=12)
    intermediate_size: int = _at_least_one(default=2048)
    content_dim: int = _at_least_one(default=64)
    head_hidden_size: int = _at_least_one(default=128)
    num_global_fourier_features: int = _non_negative_int(default=32)
    num_local_fourier_features: int = _non_negative_int(default=4)
    # A base <= 1 has no slowly turning frequencies: positions far apart would look alike.
    rope_theta: int | float = _interval(1, low_open=True)(default=10000.0)
    max_position_embeddings: int = _at_least_one(default=128)
    dropout: int | float = _interval(0, 1, high_open=True)(default=0.1)
    # eps = 0 divides by zero on a constant row; a negative eps gives NaN.
    layer_norm_eps: int | float = _positive(default=1e-5)
    sigma_data: int | float = _positive(default=0.5)
    data_center: int | float = _finite(default=0.5)
    matched_filter_center: int | float = _finite(default=0.5)
    # A negative scale would flip the sign of the evidence each bit carries about itself; 0 switches the filter off.
    matched_filter_scale: int | float = _non_negative(default=1.0)
    # clamp(x, -clip, clip) with clip <= 0 replaces every logit by a constant.
    matched_filter_clip: int | float = _positive(default=30.0)
    self_conditioning: bool = True
    initializer_range: int | float = _non_negative(default=0.02)

    def validate_architecture(self):
        """Checks the shape arithmetic; raises with the value to change."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head dimension; hidden_size / num_attention_heads = {self.head_dim}.")

    # ----------------------------------------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_content_channels(self) -> int:
        """Content channels per bit: noisy (+ self-conditioning)."""
        return 2 if self.self_conditioning else 1

    @property
    def position_feature_dim(self) -> int:
        """Per-bit position features: global sin/cos, local sin/cos, distance to the token centre (73 officially)."""
        return 2 * self.num_global_fourier_features + 2 * self.num_local_fourier_features + 1

    @property
    def bit_feature_dim(self) -> int:
        """Per-bit input width `D = channels * C + position features` (201 officially)."""
        return self.num_content_channels * self.content_dim + self.position_feature_dim

    # ----------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SDTConfig":
        """A paper configuration: `"cobit-s-lm1b"`, `"cobit-s-owt"` or `"cobit-m-owt"` (overrides win)."""
        if name not in SDT_PRESETS:
            raise ValueError(f"Unknown SDT preset {name!r}. Available presets: {sorted(SDT_PRESETS)}.")
        return cls(**{**SDT_PRESETS[name], **overrides})

    @classmethod
    def from_official_config(cls, official: dict[str, Any], **overrides: Any) -> "SDTConfig":
        """Build a config from the official nested run configuration (its `model`, `diffusion` and `data` sections).

        `official` is the dict the official trainer writes as `config.json` in a run directory. Settings outside what
        the released CoBit models use (another head type, absolute positions, no SwiGLU, ...) raise a `ValueError`,
        because the weights would not mean the same thing here.
        """
        if "model" not in official:
            raise ValueError(
                "The official config dict has no `model` section; pass the whole run `config.json` "
                "(with `model`, `diffusion` and `data`)."
            )
        model = official["model"]
        continuous = official.get("diffusion", {}).get("continuous", {})
        data = official.get("data", {})

        mismatched = {
            key: (model[key], expected)
            for key, expected in _OFFICIAL_REQUIRED_MODEL_SETTINGS.items()
            if key in model and model[key] != expected
        }
        if int(model.get("rpb_max_distance", 1)) > 1:
            mismatched["rpb_max_distance"] = (model["rpb_max_distance"], "<= 1 (no relative position bias)")
        if mismatched:
            listed = ", ".join(f"{k}={got!r} (supported: {want!r})" for k, (got, want) in mismatched.items())
            raise ValueError(f"This official config describes an architecture SDTModel does not implement: {listed}.")

        patch = int(model["patch_size"])
        bits_per_token = int(data.get("bits_per_token", patch))
        if bits_per_token != patch:
            raise ValueError(
                f"data.bits_per_token ({bits_per_token}) differs from model.patch_size ({patch}); CoBit patches "
                "exactly one token per position."
            )
        dim_ff = int(model.get("dim_ff") or 4 * int(model["embed_dim"]))
        if "sequence_len_tokens" in data:
            num_tokens = int(data["sequence_len_tokens"])
        elif "sequence_len" in data:
            num_tokens = int(data["sequence_len"]) // patch
        else:
            num_tokens = cls.max_position_embeddings
        kwargs = dict(
            bits_per_token=patch,
            hidden_size=int(model["embed_dim"]),
            num_hidden_layers=int(model["n_blocks"]),
            num_attention_heads=int(model["n_heads"]),
            intermediate_size=int(2 * dim_ff / 3),
            content_dim=int(model.get("content_dim_continuous", 64)),
            head_hidden_size=int(model.get("head_hidden", 128)),
            num_global_fourier_features=int(model.get("n_fourier_global", 32)),
            num_local_fourier_features=int(model.get("n_fourier_local", 4)),
            rope_theta=float(model.get("rope_base", 10000.0)),
            max_position_embeddings=num_tokens,
            dropout=float(model.get("dropout", 0.1)),
            sigma_data=float(continuous.get("sigma_data", 0.5)),
            data_center=float(continuous.get("data_center", 0.5)),
            matched_filter_center=float(model.get("matched_filter_center", 0.5)),
            matched_filter_scale=float(model.get("matched_filter_scale", 1.0)),
            matched_filter_clip=float(model.get("matched_filter_clip", 30.0)),
            self_conditioning=bool(model.get("self_condition", True)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)


# Saved folders name the class in their `auto_map` (loadable with `trust_remote_code`), and the auto classes learn it.
SDTConfig.register_for_auto_class()
if __package__ == "bitstream_diffusion.modeling":  # skipped in the copy saved next to the weights (remote code)
    importlib.import_module("bitstream_diffusion._auto_registration").register_when_loaded(__name__)
