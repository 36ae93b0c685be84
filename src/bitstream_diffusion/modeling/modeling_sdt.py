"""The Sequence Diffusion Transformer (SDT): CoBit's bit-space denoiser network (arXiv 2605.07013).

The file reads in the order of the math:

    per-bit inputs  ->  semantic bit-patching  ->  sigma embedding  ->  adaLN-Zero blocks (RoPE, SwiGLU)
    ->  unpatching  ->  per-bit head  ->  matched-filter residual

Module and parameter names equal the official `SequenceVDTContinuousModel` state-dict keys, so released weights
load one to one (docs/design.md#the-per-bit-head-and-patching).

Inference folding. Both ends of the network are linear in the inputs up to the first nonlinearity: the per-bit
`Linear(1, C)` content projection, the constant position features and `patch_proj` at the entry; `unpatch_proj_content`,
the head's `input_adapter` and `patch_adapter` at the exit. In eval mode [`SDTModel`] composes each stretch into one
small linear map ([`SDTModel.folded_weights`]), recomputed from the parameters at every call (so it can never be stale,
whatever wrote the weights), and skips the wide `[B, S, D]` feature tensors. The math is the same up to float rounding;
training, `model.inference_folding = False`, and hooks on or replacements of any of those five modules (forward hooks,
accelerate offloading, adapters such as LoRA) use the unfolded modules.
"""

import contextlib
import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_sdt import SDTConfig
from .official_checkpoint import (
    StateDictMismatchError,
    check_state_dict_matches,
    infer_sdt_config,
    load_official_checkpoint,
    state_dict_mismatch_message,
)

__all__ = ["SDTModel", "SDTPreTrainedModel", "SDTOutput", "SDTFoldedWeights", "matched_filter_logits"]

logger = logging.get_logger(__name__)


@dataclass
class SDTOutput(ModelOutput):
    """Output of [`SDTModel`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): float32 log-odds that each bit is 1, the
            network residual plus the matched filter. `sigmoid(logits)` is the denoiser `D(x, sigma)`.
        network_logits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): the network residual alone (in the
            model's or the autocast dtype).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`): the token
            states `(batch_size, num_tokens, hidden_size)` after the patch projection and after each block
            (`num_hidden_layers + 1` tensors; the trunk has no final norm, so the last one feeds the head).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`): the attention
            probabilities `(batch_size, num_heads, num_tokens, num_tokens)` of each block.
    """

    logits: torch.FloatTensor | None = None
    network_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------- matched filter
def matched_filter_logits(
    noisy_bits: torch.Tensor,
    sigma: torch.Tensor,
    center: float = 0.5,
    scale: float = 1.0,
    clip: float | None = 30.0,
) -> torch.Tensor:
    """Exact log-odds of an independent fair bit observed as `x = x0 + sigma * eps`, clipped.

    `log p(x0=1 | x) / p(x0=0 | x) = (x - 1/2) / sigma^2`, always computed in float32, also under autocast and for a
    half-precision model (docs/design.md#the-matched-filter).

    Args:
        noisy_bits: `[B, S]` noisy bits in {0,1} units.
        sigma: `[B]` noise levels.
    Returns:
        `[B, S]` float32 log-odds, clipped to `[-clip, clip]`.
    """
    sigma_sq = sigma.to(torch.float32).square().view(-1, 1).clamp_min(1e-12)
    logits = scale * (noisy_bits.to(torch.float32) - center) / sigma_sq
    return logits if clip is None else logits.clamp(-clip, clip)


# ---------------------------------------------------------------------------------------------------- bit features
def bit_position_features(config: SDTConfig, num_bits: int, device: torch.device) -> torch.Tensor:
    """Per-bit position features `[S, position_feature_dim]` (float32).

    Columns: `[global (2G) | local sin (Lf) | local cos (Lf) | distance to token centre (1)]`. The official model runs
    in "local_only" mode: the global block is exact zeros, kept only so released `patch_proj` weights fit. Local
    features depend on the slot `l = s mod P` alone, with `omega_k = 2 pi k / (P - 1)`; token positions come from RoPE.
    """
    patch = config.bits_per_token
    slot = torch.arange(num_bits, device=device, dtype=torch.float32) % patch
    global_feats = torch.zeros(num_bits, 2 * config.num_global_fourier_features, device=device)
    k = torch.arange(1, config.num_local_fourier_features + 1, device=device, dtype=torch.float32)
    phases = slot[:, None] * (2.0 * math.pi * k / max(patch - 1, 1))[None, :]
    centre = (patch - 1) / 2.0
    distance = ((slot - centre).abs() / max(centre, 1e-6)).unsqueeze(-1)
    return torch.cat([global_feats, phases.sin(), phases.cos(), distance], dim=-1)


# ---------------------------------------------------------------------------------------------------- sigma embedding
class SDTSigmaEmbedding(nn.Module):
    """Sinusoidal embedding of `c_noise = ln(sigma)`, cosines at even and sines at odd indices.

    `_freq` is a persistent buffer (part of official checkpoints): entries `2j` and `2j+1` both hold
    `exp(-ln(1e4) * 2j / E)`. The phases are computed in float32 whatever the model's dtype.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("_freq", self.frequencies(dim), persistent=True)

    @staticmethod
    def frequencies(dim: int) -> torch.Tensor:
        inv = torch.exp(-math.log(10_000) * torch.arange(0, dim, 2) / dim)
        freq = torch.zeros(1, dim)
        freq[:, 0::2] = inv
        freq[:, 1::2] = inv
        return freq

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """`[B]` float32 sigma -> `[B, E]` float32 embedding."""
        phases = sigma.log()[:, None] * self._freq.to(device=sigma.device, dtype=torch.float32)
        embedding = torch.empty_like(phases)
        embedding[:, 0::2] = phases[:, 0::2].cos()
        embedding[:, 1::2] = phases[:, 1::2].sin()
        return embedding


# ---------------------------------------------------------------------------------------------------- rotary
class SDTRotaryEmbedding(nn.Module):
    """RoPE over token positions, rotate-half convention.

    `cos_table`/`sin_table` (`[max_position_embeddings, head_dim]`, computed in float32) are non-persistent buffers:
    not in the weights, and filled again by `_init_weights` whenever transformers builds the model on the meta device
    (and by [`SDTModel.from_official_checkpoint`]). As tables, rather than recomputed in the forward, they are read
    from memory by a compiled forward instead of re-evaluated (a power, a sine and a cosine) for every element of q and
    k in every block. Longer sequences (RoPE accepts any length) compute their tables on the fly, with the same values.
    """

    def __init__(self, config: SDTConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = float(config.rope_theta)
        self.max_position_embeddings = config.max_position_embeddings
        cos, sin = self.compute_tables(self.max_position_embeddings)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    @torch.no_grad()
    def compute_tables(self, num_tokens: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 `cos, sin` of `position * base^(-2i / head_dim)`, each frequency twice: `[num_tokens, head_dim]`."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponents)
        freqs = torch.outer(torch.arange(num_tokens, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def reset_tables(self, device: torch.device | None = None) -> None:
        """Recompute the tables, on `device` (e.g. after weights were loaded into a model built on the meta device)."""
        device = self.cos_table.device if device is None else device
        self.cos_table, self.sin_table = self.compute_tables(self.max_position_embeddings, device=device)

    @torch.no_grad()
    def forward(self, num_tokens: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `cos, sin` of shape `[num_tokens, 1, 1, head_dim]`, which broadcast over the
        `[batch, num_tokens, 2 (query, key), heads, head_dim]` layout [`SDTAttention`] rotates in."""
        if num_tokens <= self.cos_table.shape[0] and self.cos_table.device == device:
            cos, sin = self.cos_table[:num_tokens], self.sin_table[:num_tokens]
        else:
            cos, sin = self.compute_tables(num_tokens, device=device)
        return cos[:, None, None, :].to(dtype), sin[:, None, None, :].to(dtype)


def apply_rotary_pos_emb(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: with `(x1, x2)` the two halves of the last axis, `(x1 cos - x2 sin, x2 cos + x1 sin)`.

    Written as a multiply and in-place updates of the two halves, without materialising `rotate_half(x)` (a
    negation and a concatenation: two extra passes over q and k). Each element is rounded exactly as in
    `x * cos + rotate_half(x) * sin`, and `torch.compile` traces the same operations. `cos`/`sin` have equal halves.
    """
    half = states.shape[-1] // 2
    x1, x2, sin_half = states[..., :half], states[..., half:], sin[..., :half]
    if torch.compiler.is_compiling():  # inductor fuses this into one kernel; the in-place form compiles to slow loops
        cos_half = cos[..., :half]
        return torch.cat((x1 * cos_half - x2 * sin_half, x2 * cos_half + x1 * sin_half), dim=-1)
    rotated = states * cos
    rotated[..., :half] -= x2 * sin_half
    rotated[..., half:] += x1 * sin_half
    return rotated


# ---------------------------------------------------------------------------------------------------- adaLN-Zero
class SDTAdaLNZero(nn.Module):
    """`(LN(h) * (1 + scale) + shift, gate)` from a conditioning vector; zero-initialised, so blocks start as identity.

    The LayerNorm has no affine parameters. `mlp = [SiLU, Linear(d, 3d)]`; its output chunks are `scale|shift|gate`.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.mlp[1]._sdt_init = "zeros"

    def _normed(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(hidden_states, hidden_states.shape[-1:], eps=self.eps).to(hidden_states.dtype)

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_states [B, n, d]`, `conditioning [B, d]` -> modulated `[B, n, d]` and gate `[B, 1, d]`.

        The modulation is one fused multiply-add over the tokens (`addcmul`)."""
        scale, shift, gate = self.mlp(conditioning).chunk(3, dim=-1)
        modulated = torch.addcmul(shift.unsqueeze(1), self._normed(hidden_states), (1 + scale).unsqueeze(1))
        return modulated, gate.unsqueeze(1)

    def gated(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """`(LN(h) * (1 + scale) + shift) * gate` in one pass over the tokens, as
        `LN(h) * ((1 + scale) * gate) + shift * gate` (the products of `[B, d]` vectors are cheap)."""
        scale, shift, gate = self.mlp(conditioning).chunk(3, dim=-1)
        normed = self._normed(hidden_states)
        return torch.addcmul((shift * gate).unsqueeze(1), normed, ((1 + scale) * gate).unsqueeze(1))


# ---------------------------------------------------------------------------------------------------- trunk
class SDTSwiGLU(nn.Module):
    """`Wo(dropout(Wa(h) * silu(Wb(h))))`, all with bias."""

    def __init__(self, config: SDTConfig):
        super().__init__()
        self.Wa = nn.Linear(config.hidden_size, config.intermediate_size)
        self.Wb = nn.Linear(config.hidden_size, config.intermediate_size)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.Wo(self.drop(self.Wa(hidden_states) * F.silu(self.Wb(hidden_states))))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention over `[B, H, n, d]` inputs; returns `[B, n, H, d]` and the weights `[B, H, n, n]`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class SDTAttention(nn.Module):
    """Bidirectional multi-head self-attention with RoPE, through transformers' attention interface."""

    def __init__(self, config: SDTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.dropout
        self.is_causal = False
        self.num_key_value_groups = 1
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, n, E]` -> `[B, n, E]`, and the attention probabilities when `output_attentions` (eager attention)."""
        batch, num_tokens, _ = hidden_states.shape
        # q, k, v stay views of the one projection; q and k are rotated together: [B, n, 2, H, d]
        qkv = self.qkv_proj(hidden_states).view(batch, num_tokens, 3, self.num_heads, self.head_dim)
        query_key = apply_rotary_pos_emb(qkv[:, :, :2], *position_embeddings)
        # [B, H, n, d], made contiguous: the attention kernels read contiguous heads faster (15% at 1024 tokens)
        query, key, value = (t.transpose(1, 2).contiguous() for t in (*query_key.unbind(2), qkv[:, :, 2]))

        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once(
                f"`output_attentions=True` needs the eager attention; running it instead of {implementation!r} for "
                "these calls. Call `model.set_attn_implementation('eager')` to make this explicit."
            )
            implementation = "eager"
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.out_proj(attn_output.reshape(batch, num_tokens, -1)), attn_weights


class SDTBlock(GradientCheckpointingLayer):
    """Pre-norm adaLN-Zero block: gated attention then gated SwiGLU, each modulated by the sigma embedding.

    Each gated residual `h + dropout(branch) * gate` is one fused multiply-add (`addcmul`)."""

    def __init__(self, config: SDTConfig):
        super().__init__()
        self.attn = SDTAttention(config)
        self.ff = SDTSwiGLU(config)
        self.drop = nn.Dropout(config.dropout)
        self.adaln1 = SDTAdaLNZero(config.hidden_size, config.layer_norm_eps)
        self.adaln2 = SDTAdaLNZero(config.hidden_size, config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        sigma_embedding: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        modulated, gate = self.adaln1(hidden_states, sigma_embedding)
        attn_output, attn_weights = self.attn(modulated, position_embeddings, output_attentions)
        hidden_states = torch.addcmul(hidden_states, self.drop(attn_output), gate)
        modulated, gate = self.adaln2(hidden_states, sigma_embedding)
        return torch.addcmul(hidden_states, self.drop(self.ff(modulated)), gate), attn_weights


# ---------------------------------------------------------------------------------------------------- per-bit head
class SDTBitHead(nn.Module):
    """Per-bit MLP head ("optimal skip"): one logit per bit, no mixing across bits.

    For bit `s` in slot `i` of token `j`: `h = patch_adapter(token_j)[i] + input_adapter([x_recon_s | content_s])`,
    modulated by adaLN-Zero on `time_proj(t_emb)` and multiplied by its gate (no residual), then
    `mixer = [Linear, SiLU, Dropout, Linear(., 1)]`.
    """

    def __init__(self, config: SDTConfig):
        super().__init__()
        hidden = config.head_hidden_size
        self.bits_per_token = config.bits_per_token
        self.hidden = hidden
        skip_dim = config.num_content_channels * config.content_dim
        self.patch_adapter = nn.Linear(config.hidden_size, config.bits_per_token * hidden)
        self.input_adapter = nn.Linear(config.content_dim + skip_dim, hidden)
        self.patch_adapter._sdt_init = self.input_adapter._sdt_init = "xavier"
        self.time_proj = nn.Linear(config.hidden_size, hidden)
        self.adaln = SDTAdaLNZero(hidden, config.layer_norm_eps)
        self.mixer = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(hidden, 1)
        )

    def forward(
        self, x_recon: torch.Tensor, content: torch.Tensor, tokens: torch.Tensor, sigma_embedding: torch.Tensor
    ) -> torch.Tensor:
        """`x_recon [B, S, C]`, `content [B, S, channels*C]`, `tokens [B, n, E]`, `sigma_embedding [B, E]`
        -> `[B, S, 1]`."""
        batch, num_bits, _ = x_recon.shape
        token_features = self.patch_adapter(tokens).view(batch, num_bits, self.hidden)
        hidden = token_features + self.input_adapter(torch.cat([x_recon, content.to(x_recon.dtype)], dim=-1))
        return self.mix(hidden, sigma_embedding)

    def mix(self, hidden: torch.Tensor, sigma_embedding: torch.Tensor) -> torch.Tensor:
        """The part after the input sum: gated adaLN-Zero modulation, then the MLP. `[B, S, H]` -> `[B, S, 1]`."""
        return self.mixer(self.adaln.gated(hidden, self.time_proj(sigma_embedding)))


class SDTFoldedWeights(NamedTuple):
    """The two linear stretches of [`SDTModel`] composed for inference (see [`SDTModel.folded_weights`]).

    With `values [B, S, K]` the centred, `c_in`-scaled inputs (K = 2 channels: noisy bits, self-conditioning):

    * `tokens = values.view(B, n, P*K) @ input_weight.T + input_bias` equals
      `patch_proj([cont_input_proj(values) | position features])`;
    * `hidden = (tokens @ head_weight.T + head_bias).view(B, S, H) + values @ head_value_weight` equals the head's
      `patch_adapter(tokens) + input_adapter([unpatch_proj_content(tokens) | cont_input_proj(values)])`.
    """

    input_weight: torch.Tensor  # [E, P*K]
    input_bias: torch.Tensor  # [E]
    head_weight: torch.Tensor  # [P*H, E]
    head_bias: torch.Tensor  # [P*H]
    head_value_weight: torch.Tensor  # [K, H]


# ---------------------------------------------------------------------------------------------------- model
class SDTPreTrainedModel(PreTrainedModel):
    config_class = SDTConfig
    config: SDTConfig
    base_model_prefix = "sdt"
    main_input_name = "noisy_bits"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDTBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: N(0, 0.02) linears with zero bias, Xavier-uniform head adapters, zero adaLN
        layers (so the network output is exactly 0 at init), and the sigma-embedding table.

        A linear layer names its rule in `_sdt_init` (set by the module that owns it); the default is "normal"."""
        if isinstance(module, nn.Linear):
            rule = getattr(module, "_sdt_init", "normal")
            if rule == "zeros":
                init.zeros_(module.weight)
            elif rule == "xavier":
                init.xavier_uniform_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, SDTSigmaEmbedding):
            init.copy_(module._freq, SDTSigmaEmbedding.frequencies(module._freq.shape[-1]))
        elif isinstance(module, SDTRotaryEmbedding):
            cos, sin = module.compute_tables(module.max_position_embeddings, device=module.cos_table.device)
            init.copy_(module.cos_table, cos)
            init.copy_(module.sin_table, sin)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        """Real inputs for this config: 2 rows of 4 tokens of noisy bits, their sigmas and a self-conditioning
        estimate (float32, on the model's device): `model(**model.dummy_inputs)` runs."""
        generator = torch.Generator().manual_seed(0)
        bits = torch.randint(0, 2, (2, 4 * self.config.bits_per_token), generator=generator).float()
        sigma = torch.tensor([0.5, 2.0])
        noisy_bits = bits + sigma[:, None] * torch.randn(bits.shape, generator=generator)
        self_cond = torch.rand(bits.shape, generator=generator)
        inputs = {"noisy_bits": noisy_bits, "sigma": sigma, "self_cond": self_cond}
        return {name: tensor.to(self.device) for name, tensor in inputs.items()}

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, strict: bool = True, **kwargs
    ):
        r"""
        transformers' `from_pretrained`, strict by default: a weight file that lacks a key of the model, holds a key
        the model does not have, or a tensor of another shape (e.g. a config with more layers than the weights) is an
        error listing every such key, never a silent random initialisation. diffusers' pipeline loading and
        `AutoModel` come through here too.

        Args:
            strict (`bool`, defaults to `True`): `False` restores transformers' behaviour (missing weights are randomly
                initialised, unexpected ones dropped, both logged; mis-shaped ones re-initialised with
                `ignore_mismatched_sizes=True`, else an error).
            kwargs: everything `PreTrainedModel.from_pretrained` takes (`dtype`, `device_map`, `subfolder`, ...;
                `output_loading_info=True` also returns the dict of missing/unexpected/mismatched keys).

        Raises:
            StateDictMismatchError: strict loading found missing, unexpected or mis-shaped keys (all listed).
            OSError: a weight file cannot be read (truncated or corrupted); the message names the file.
            ValueError: `config.json` holds a value of the wrong type or out of range; the message names the field.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        if strict:
            if kwargs.get("ignore_mismatched_sizes"):
                raise ValueError(
                    "`ignore_mismatched_sizes=True` re-initialises mis-shaped weights at random; pass `strict=False` "
                    "as well to allow that."
                )
            # transformers then reports mis-shaped keys in the loading info instead of raising on its own; the strict
            # check below raises for them, together with the missing and unexpected ones.
            kwargs["ignore_mismatched_sizes"] = True
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            message = _unreadable_weights_message(pretrained_model_name_or_path, kwargs.get("subfolder"), error)
            raise OSError(message) from error
        except StrictDataclassError as error:
            folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
            raise ValueError(
                f"Invalid configuration in {os.path.join(folder, 'config.json')}: {error}\nFix that value in the file "
                "(SDTConfig's docstring lists every field's type and range)."
            ) from error
        if strict:
            missing = sorted(loading_info["missing_keys"])
            unexpected = sorted(loading_info["unexpected_keys"])
            mis_shaped = sorted(loading_info["mismatched_keys"])
            if missing or unexpected or mis_shaped:
                advice = (
                    "The folder's config.json and its weights describe different models (e.g. `num_hidden_layers`), "
                    "or the weight file is damaged. Save or download the folder again; `from_pretrained(..., "
                    "strict=False)` loads it anyway, with random weights for the missing keys."
                )
                source = f"model folder {pretrained_model_name_or_path!s}"
                message = state_dict_mismatch_message(source, missing, unexpected, mis_shaped, advice)
                raise StateDictMismatchError(message)
        return (model, loading_info) if output_loading_info else model


def _unreadable_weights_message(path: str | os.PathLike, subfolder: str | None, error: Exception) -> str:
    """Which local safetensors file cannot be opened, and what to do about it."""
    folder = os.path.join(str(path), subfolder or "")
    broken = []
    if os.path.isdir(folder):
        from safetensors import safe_open

        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors"):
                try:
                    with safe_open(os.path.join(folder, name), framework="pt"):
                        pass
                except Exception as file_error:  # noqa: BLE001 - any failure marks the file as broken
                    broken.append(f"{os.path.join(folder, name)} ({file_error})")
    where = "; ".join(broken) if broken else f"a weight file of {folder} ({error})"
    return (
        f"Cannot read the model weights: {where}. The file is truncated or corrupted (e.g. an interrupted download "
        "or copy). Download it again (`force_download=True` for a hub repo) or re-save the model with "
        "`save_pretrained`."
    )


class SDTModel(SDTPreTrainedModel):
    """CoBit's Sequence Diffusion Transformer.

    `forward(noisy_bits, sigma, self_cond)` returns the denoiser's logits for every bit: the network residual plus
    the matched filter. `sigmoid(out.logits)` is `D(x, sigma) = P(bit = 1 | x)`.

    Fast path: `model.compile()` (also `fullgraph=True, dynamic=False`) compiles the whole forward without graph
    breaks; pass `sigma` as a tensor (a Python float would be a new constant, hence a recompilation, at every level).
    In eval mode the input and head projections are folded (`inference_folding`, see the module docstring).
    """

    def __init__(self, config: SDTConfig):
        super().__init__(config)
        content_dim = config.content_dim
        self.cont_input_proj = nn.Linear(1, content_dim)
        self.time_fn = SDTSigmaEmbedding(config.hidden_size)
        self.time_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.time_cond = nn.Linear(config.hidden_size, config.hidden_size)
        self.patch_proj = nn.Linear(config.bits_per_token * config.bit_feature_dim, config.hidden_size)
        self.rotary_emb = SDTRotaryEmbedding(config)
        self.blocks = nn.ModuleList(SDTBlock(config) for _ in range(config.num_hidden_layers))
        self.unpatch_proj_content = nn.Linear(config.hidden_size, content_dim * config.bits_per_token)
        self.head = SDTBitHead(config)
        self.gradient_checkpointing = False
        # Eval-mode folding of the input and head projections (exact up to float rounding); False = the plain modules.
        self.inference_folding = True
        self.post_init()

    # ------------------------------------------------------------------------------------------- official weights
    @classmethod
    def from_official_checkpoint(
        cls,
        checkpoint_path: str,
        config: SDTConfig | dict | None = None,
        use_ema: bool = True,
        **config_overrides,
    ) -> "SDTModel":
        """Load an official CoBit `.pt` file (release or training format) strictly.

        Args:
            checkpoint_path: the `.pt` file, read with `torch.load(weights_only=True)`.
            config: an [`SDTConfig`], the official nested run config dict, or `None` to infer the architecture from
                the weight shapes (heads from `config_overrides["num_attention_heads"]` or a matching preset).
            use_ema: use the EMA shadow of a training checkpoint (default, as the paper evaluates).
            config_overrides: extra config values, e.g. `num_attention_heads=12`.

        Raises:
            StateDictMismatchError: any missing, unexpected or mis-shaped key, all listed.
        """
        checkpoint = load_official_checkpoint(checkpoint_path, use_ema=use_ema)
        if config is None:
            config = infer_sdt_config(checkpoint.state_dict, **config_overrides)
        elif isinstance(config, dict):
            config = SDTConfig.from_official_config(config, **config_overrides)
        elif config_overrides:
            config = SDTConfig(**{**config.to_dict(), **config_overrides})
        with torch.device("meta"):  # no random init and no second copy of the weights
            model = cls(config)
        check_state_dict_matches(model.state_dict(), checkpoint.state_dict, source=str(checkpoint_path))
        model.load_state_dict(checkpoint.state_dict, strict=True, assign=True)
        model.rotary_emb.reset_tables(device=model.device)  # not part of the weights
        return model.eval()

    # ------------------------------------------------------------------------------------------- inputs
    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM `c_in = 1 / sqrt(sigma^2 + sigma_data^2)`, `[B]`."""
        return 1.0 / (sigma.pow(2) + self.config.sigma_data**2).sqrt()

    def bit_values(
        self, noisy_bits: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """`[B, S, channels]` float32: the centred, `c_in`-scaled noisy bits and self-conditioning estimate.

        Official quirk, kept on purpose: `self_cond=None` feeds an exact, *uncentred* 0 (the channel is the projection
        bias alone), while `self_cond=zeros` means "every bit predicted 0" and is centred to `-0.5 * c_in`
        (docs/design.md#self-conditioning-none-versus-zeros).
        """
        c_in = self.input_scale(sigma).view(-1, 1)
        noisy = (noisy_bits.float() - self.config.data_center) * c_in
        if not self.config.self_conditioning:
            return noisy.unsqueeze(-1)
        if self_cond is None:
            estimate = torch.zeros_like(noisy)
        else:
            estimate = (self_cond.float() - self.config.data_center) * c_in
        return torch.stack([noisy, estimate], dim=-1)

    def content_features(
        self, noisy_bits: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """`[B, S, channels*C]`: each channel of [`bit_values`] through the shared `Linear(1, C)` projection."""
        return self._content_features(self.bit_values(noisy_bits, sigma, self_cond))

    def _content_features(self, values: torch.Tensor) -> torch.Tensor:
        return self.cont_input_proj(values.unsqueeze(-1).to(self.patch_proj.weight.dtype)).flatten(-2)

    # ------------------------------------------------------------------------------------------- inference folding
    def _folded_modules(self) -> tuple[nn.Module, ...]:
        return (self.cont_input_proj, self.patch_proj, self.unpatch_proj_content, self.head.patch_adapter,
                self.head.input_adapter)

    def _folding_applies(self) -> bool:
        """Eval mode, folding on, and each folded module a plain `nn.Linear` that nothing watches or wraps: no forward
        hook expecting to see it run, no accelerate offloading hook, no adapter (e.g. LoRA) replacing it."""
        if self.training or not self.inference_folding:
            return False
        return all(
            type(module) is nn.Linear
            and not (module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))
            for module in self._folded_modules()
        )

    def folded_weights(self) -> SDTFoldedWeights:
        """Compose the input and head projections from the current parameters ([`SDTFoldedWeights`]).

        Computed in float32 outside autocast and cast to the model's dtype. It costs about
        `2 * P * H * C * E` FLOPs (0.19 GFLOP for CoBit-S), less than the unfolded modules spend on 110 tokens, and is
        redone at every eval-mode call, so no cache can go stale. Differentiable.
        """
        config = self.config
        patch, content_dim, channels = config.bits_per_token, config.content_dim, config.num_content_channels
        hidden_size, head_hidden = config.hidden_size, config.head_hidden_size
        weight = self.patch_proj.weight
        device_type = weight.device.type
        no_autocast = (
            torch.autocast(device_type=device_type, enabled=False)
            if torch.amp.is_autocast_available(device_type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            unit_weight = self.cont_input_proj.weight[:, 0].float()  # [C]: Linear(1, C) is value * w + b
            unit_bias = self.cont_input_proj.bias.float()
            # entry: patch_proj over [content (K x C) | position features] of each of the P slots
            patch_weight = weight.float().view(hidden_size, patch, config.bit_feature_dim)
            content_weight = patch_weight[..., : channels * content_dim]
            content_weight = content_weight.reshape(hidden_size, patch, channels, content_dim)
            positions = bit_position_features(config, patch, weight.device)  # [P, F]: the same for every token
            input_weight = torch.matmul(content_weight, unit_weight).reshape(hidden_size, patch * channels)
            input_bias = (
                self.patch_proj.bias.float()
                + torch.einsum("epkc,c->e", content_weight, unit_bias)
                + torch.einsum("epf,pf->e", patch_weight[..., channels * content_dim :], positions)
            )
            # exit: patch_adapter(t) + input_adapter([unpatch(t) | content]) for each slot
            adapter = self.head.input_adapter.weight.float()  # [H, C + K*C]
            recon_weight = adapter[:, :content_dim]
            value_weight = adapter[:, content_dim:].reshape(head_hidden, channels, content_dim)
            unpatch_weight = self.unpatch_proj_content.weight.float().view(patch, content_dim, hidden_size)
            unpatch_bias = self.unpatch_proj_content.bias.float().view(patch, content_dim)
            head_weight = self.head.patch_adapter.weight.float().view(patch, head_hidden, hidden_size) + torch.matmul(
                recon_weight, unpatch_weight
            )
            head_bias = (
                self.head.patch_adapter.bias.float().view(patch, head_hidden)
                + unpatch_bias @ recon_weight.T
                + torch.matmul(value_weight, unit_bias).sum(-1)
                + self.head.input_adapter.bias.float()
            )
            head_value_weight = torch.matmul(value_weight, unit_weight).T  # [K, H]
        dtype = weight.dtype
        return SDTFoldedWeights(
            input_weight.to(dtype),
            input_bias.to(dtype),
            head_weight.reshape(patch * head_hidden, hidden_size).to(dtype),
            head_bias.reshape(patch * head_hidden).to(dtype),
            head_value_weight.to(dtype),
        )

    # ------------------------------------------------------------------------------------------- validation
    def _check_inputs(
        self,
        noisy_bits: torch.Tensor,
        sigma: torch.Tensor | float,
        self_cond: torch.Tensor | None,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Validate shapes and dtypes (always; no device sync) and, with `check_values`, that sigma > 0 and the
        inputs are finite (each such check reads a value back from the device: a host sync). Returns sigma as a
        float32 `[B]` tensor."""
        if not isinstance(noisy_bits, torch.Tensor) or noisy_bits.dim() != 2:
            shape = tuple(noisy_bits.shape) if isinstance(noisy_bits, torch.Tensor) else type(noisy_bits).__name__
            raise ValueError(
                f"`noisy_bits` must be a [batch, num_bits] tensor, got {shape}. Flatten each sequence of T tokens to "
                f"T * {self.config.bits_per_token} bits."
            )
        if not noisy_bits.is_floating_point():
            raise TypeError(
                f"`noisy_bits` must be floating point (bits in {{0,1}} plus noise), got {noisy_bits.dtype}; "
                "call `.float()` on integer bits."
            )
        batch, num_bits = noisy_bits.shape
        if batch == 0 or num_bits == 0:
            raise ValueError(
                f"`noisy_bits` has shape {tuple(noisy_bits.shape)}: the model needs at least one row and one token "
                f"({self.config.bits_per_token} bits) per row."
            )
        if num_bits % self.config.bits_per_token != 0:
            raise ValueError(
                f"`noisy_bits` has {num_bits} bits per row, not a multiple of bits_per_token="
                f"{self.config.bits_per_token}; pass whole tokens."
            )
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor(float(sigma))
        sigma = sigma.to(device=noisy_bits.device, dtype=torch.float32)
        if sigma.dim() == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"`sigma` must be a scalar or have shape [{batch}], got {tuple(sigma.shape)}.")
        if self_cond is not None and tuple(self_cond.shape) != (batch, num_bits):
            raise ValueError(
                f"`self_cond` must match `noisy_bits` ({batch}, {num_bits}), got {tuple(self_cond.shape)}. Pass the "
                "previous bit probabilities, or None for no estimate."
            )
        if self_cond is not None and not self_cond.is_floating_point():
            raise TypeError(f"`self_cond` must hold probabilities as floats, got {self_cond.dtype}.")
        if check_values and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(sigma).all() & (sigma > 0).all()):
                raise ValueError(f"`sigma` must be finite and > 0, got {sigma.tolist()[:8]}.")
            if not bool(torch.isfinite(noisy_bits).all()):
                raise ValueError("`noisy_bits` contains NaN or infinite values.")
            if self_cond is not None and not bool(torch.isfinite(self_cond).all()):
                raise ValueError("`self_cond` contains NaN or infinite values.")
        return sigma

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        noisy_bits: torch.Tensor,
        sigma: torch.Tensor | float,
        self_cond: torch.Tensor | None = None,
        return_dict: bool | None = None,
        *,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        check_values: bool = True,
    ) -> SDTOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            noisy_bits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): `x0 + sigma * eps` with `x0` in
                {0, 1}; `num_bits = tokens * bits_per_token`, MSB first within each token.
            sigma (`torch.FloatTensor` of shape `(batch_size,)` or a scalar): noise std in {0,1} units, > 0.
            self_cond (`torch.FloatTensor` of shape `(batch_size, num_bits)`, *optional*): the previous estimate of
                P(bit = 1). `None` is the official "no estimate" input (see [`bit_values`]).
            return_dict (`bool`, *optional*): return an [`SDTOutput`] (default) or a tuple.
            output_hidden_states (`bool`, *optional*): also return the token states after patching and each block.
            output_attentions (`bool`, *optional*): also return each block's attention probabilities (computed with
                the eager attention for these calls).
            check_values (`bool`, defaults to `True`): check that `sigma` > 0 and the inputs are finite. Each check
                waits for the device (a host sync per call); a caller that validated its inputs once, such as the
                pipeline's sampling loop, passes `False`. Shapes and dtypes are always checked (no sync). Under
                `torch.compile` the value checks are left out.

        Inputs may be float32 whatever the model's dtype: they are scaled in float32 and cast once.

        Returns:
            [`SDTOutput`] with float32 `logits` (residual + matched filter) and `network_logits`, both `[B, S]`.
        """
        config = self.config
        return_dict = return_dict if return_dict is not None else config.return_dict
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        sigma = self._check_inputs(noisy_bits, sigma, self_cond, check_values)
        batch, num_bits = noisy_bits.shape
        patch = config.bits_per_token
        num_tokens = num_bits // patch
        dtype = self.patch_proj.weight.dtype
        folded = self.folded_weights() if self._folding_applies() else None

        # 1. per-bit inputs: centred, c_in-scaled noisy bits and self-conditioning estimate, [B, S, channels]
        values = self.bit_values(noisy_bits, sigma, self_cond)

        # 2. semantic bit-patching: [content C per channel | position features] of the P bits of a token -> one position
        if folded is not None:
            tokens = F.linear(values.to(dtype).view(batch, num_tokens, -1), folded.input_weight, folded.input_bias)
        else:
            content = self._content_features(values)
            positions = bit_position_features(config, num_bits, noisy_bits.device).to(content.dtype)
            bit_features = torch.cat([content, positions.expand(batch, -1, -1)], dim=-1)
            tokens = self.patch_proj(bit_features.view(batch, num_tokens, patch * bit_features.shape[-1]))

        # 3. noise conditioning from ln(sigma)
        sigma_embedding = self.time_cond(self.time_proj(self.time_fn(sigma).to(dtype)))

        # 4. adaLN-Zero trunk with RoPE over token positions (no final norm)
        position_embeddings = self.rotary_emb(num_tokens, tokens.device, tokens.dtype)
        all_hidden_states = (tokens,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.blocks:
            tokens, attn_weights = block(tokens, sigma_embedding, position_embeddings, output_attentions)
            if output_hidden_states:
                all_hidden_states += (tokens,)
            if output_attentions:
                all_attentions += (attn_weights,)

        # 5. unpatch to C features per bit, then the per-bit head
        if folded is not None:
            hidden = F.linear(tokens, folded.head_weight, folded.head_bias)
            head_hidden = folded.head_value_weight.shape[-1]
            hidden = torch.addmm(
                hidden.view(-1, head_hidden), values.to(hidden.dtype).view(batch * num_bits, -1),
                folded.head_value_weight.to(hidden.dtype),
            ).view(batch, num_bits, head_hidden)
            network_logits = self.head.mix(hidden, sigma_embedding).squeeze(-1)
        else:
            x_recon = self.unpatch_proj_content(tokens).view(batch, num_bits, config.content_dim)
            network_logits = self.head(x_recon, content, tokens, sigma_embedding).squeeze(-1)

        # 6. matched-filter residual, added in float32
        logits = network_logits.float() + matched_filter_logits(
            noisy_bits,
            sigma,
            center=config.matched_filter_center,
            scale=config.matched_filter_scale,
            clip=config.matched_filter_clip,
        )
        output = SDTOutput(
            logits=logits,
            network_logits=network_logits,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()


# Saved folders name the class in their `auto_map` (loadable with `trust_remote_code`), and the auto classes learn it.
SDTModel.register_for_auto_class("AutoModel")
if __package__ == "bitstream_diffusion.modeling":  # skipped in the copy saved next to the weights (remote code)
    importlib.import_module("bitstream_diffusion._auto_registration").register_when_loaded(__name__)
