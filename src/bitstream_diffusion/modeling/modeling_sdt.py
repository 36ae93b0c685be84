"""The Sequence Diffusion Transformer (SDT): CoBit's bit-space denoiser network (arXiv 2605.07013).

The file reads in the order of the math (DESIGN §2):

    per-bit features  ->  semantic bit-patching  ->  sigma embedding  ->  adaLN-Zero blocks (RoPE, SwiGLU)
    ->  unpatching  ->  per-bit head  ->  matched-filter residual

Module and parameter names equal the official `SequenceVDTContinuousModel` state-dict keys, so released weights
load one to one (DESIGN §5.1).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_sdt import SDTConfig

__all__ = ["SDTModel", "SDTPreTrainedModel", "SDTOutput", "matched_filter_logits"]


@dataclass
class SDTOutput(ModelOutput):
    """Output of [`SDTModel`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): float32 log-odds that each bit is 1, the
            network residual plus the matched filter. `sigmoid(logits)` is the denoiser `D(x, sigma)`.
        network_logits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): the network residual alone (in the
            autocast dtype when autocast is on).
    """

    logits: torch.FloatTensor | None = None
    network_logits: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------- matched filter
def matched_filter_logits(
    noisy_bits: torch.Tensor,
    sigma: torch.Tensor,
    center: float = 0.5,
    scale: float = 1.0,
    clip: float | None = 30.0,
) -> torch.Tensor:
    """Exact log-odds of an independent fair bit observed as `x = x0 + sigma * eps`, clipped.

    `log p(x0=1 | x) / p(x0=0 | x) = (x - 1/2) / sigma^2`, computed in float32 (DESIGN §5.8).

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
    `exp(-ln(1e4) * 2j / E)`.
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
        """`[B]` sigma -> `[B, E]` embedding."""
        phases = sigma.log()[:, None] * self._freq.to(sigma.device)
        embedding = torch.empty_like(phases)
        embedding[:, 0::2] = phases[:, 0::2].cos()
        embedding[:, 1::2] = phases[:, 1::2].sin()
        return embedding


# ---------------------------------------------------------------------------------------------------- rotary
class SDTRotaryEmbedding(nn.Module):
    """RoPE over token positions, rotate-half convention. `cos`/`sin` are computed on the fly in float32, so no
    buffer can be left uninitialised by meta-device loading (DESIGN §7)."""

    def __init__(self, config: SDTConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.base = float(config.rope_theta)

    @torch.no_grad()
    def forward(self, num_tokens: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `cos, sin` of shape `[1, 1, n, head_dim]`."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))
        positions = torch.arange(num_tokens, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[None, None].to(dtype), emb.sin()[None, None].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


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

    def forward(self, hidden_states: torch.Tensor, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_states [B, n, d]`, `conditioning [B, d]` -> modulated `[B, n, d]` and gate `[B, 1, d]`."""
        scale, shift, gate = self.mlp(conditioning).chunk(3, dim=-1)
        normed = F.layer_norm(hidden_states, hidden_states.shape[-1:], eps=self.eps).to(hidden_states.dtype)
        return (1 + scale).unsqueeze(1) * normed + shift.unsqueeze(1), gate.unsqueeze(1)


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
    """Plain softmax attention over `[B, H, n, d]` inputs; returns `[B, n, H, d]` and the weights."""
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
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        batch, num_tokens, _ = hidden_states.shape
        split_heads = (batch, num_tokens, self.num_heads, self.head_dim)
        query, key, value = (
            t.view(split_heads).transpose(1, 2) for t in self.qkv_proj(hidden_states).chunk(3, dim=-1)
        )
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        return self.out_proj(attn_output.reshape(batch, num_tokens, -1))


class SDTBlock(GradientCheckpointingLayer):
    """Pre-norm adaLN-Zero block: gated attention then gated SwiGLU, each modulated by the sigma embedding."""

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
    ) -> torch.Tensor:
        modulated, gate = self.adaln1(hidden_states, sigma_embedding)
        hidden_states = hidden_states + self.drop(self.attn(modulated, position_embeddings)) * gate
        modulated, gate = self.adaln2(hidden_states, sigma_embedding)
        return hidden_states + self.drop(self.ff(modulated)) * gate


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
        """`x_recon [B, S, C]`, `content [B, S, channels*C]`, `tokens [B, n, E]`, `sigma_embedding [B, E]` -> `[B, S, 1]`."""
        batch, num_bits, _ = x_recon.shape
        token_features = self.patch_adapter(tokens).view(batch, num_bits, self.hidden)
        hidden = token_features + self.input_adapter(torch.cat([x_recon, content.to(x_recon.dtype)], dim=-1))
        modulated, gate = self.adaln(hidden, self.time_proj(sigma_embedding))
        return self.mixer(modulated * gate)


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

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation (REFERENCE_TRAINING §2.3): N(0, 0.02) linears with zero bias, Xavier-uniform
        head adapters, zero adaLN layers (so the network output is exactly 0 at init), and the sigma-embedding table.

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


class SDTModel(SDTPreTrainedModel):
    """CoBit's Sequence Diffusion Transformer.

    `forward(noisy_bits, sigma, self_cond)` returns the denoiser's logits for every bit: the network residual plus
    the matched filter. `sigmoid(out.logits)` is `D(x, sigma) = P(bit = 1 | x)`.
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
        from .official_checkpoint import (
            check_state_dict_matches,
            infer_sdt_config,
            load_official_checkpoint,
        )

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
        return model.eval()

    # ------------------------------------------------------------------------------------------- preconditioning
    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM `c_in = 1 / sqrt(sigma^2 + sigma_data^2)`, `[B]`."""
        return 1.0 / (sigma.pow(2) + self.config.sigma_data**2).sqrt()

    def embed_bits(self, values: torch.Tensor, c_in: torch.Tensor) -> torch.Tensor:
        """Shared `Linear(1, C)` projection of scaled per-bit values: `[B, S]` -> `[B, S, C]`."""
        return self.cont_input_proj((values * c_in.view(-1, 1)).unsqueeze(-1))

    def content_features(
        self, noisy_bits: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """`[B, S, channels*C]`: the centred, `c_in`-scaled noisy bits and self-conditioning estimate, embedded.

        Official quirk, kept on purpose: `self_cond=None` feeds an exact, *uncentred* 0 (the channel is the projection
        bias alone), while `self_cond=zeros` means "every bit predicted 0" and is centred to `-0.5 * c_in`.
        """
        c_in = self.input_scale(sigma)
        noisy = self.embed_bits(noisy_bits.float() - self.config.data_center, c_in)
        if not self.config.self_conditioning:
            return noisy
        if self_cond is None:
            estimate = torch.zeros_like(noisy_bits, dtype=torch.float32)
        else:
            estimate = self_cond.float() - self.config.data_center
        return torch.cat([noisy, self.embed_bits(estimate, c_in)], dim=-1)

    # ------------------------------------------------------------------------------------------- validation
    def _check_inputs(
        self, noisy_bits: torch.Tensor, sigma: torch.Tensor | float, self_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate shapes, dtypes and values; returns sigma as a float32 `[B]` tensor."""
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
        if not torch.compiler.is_compiling():
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
        **kwargs,
    ) -> SDTOutput | tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            noisy_bits (`torch.FloatTensor` of shape `(batch_size, num_bits)`): `x0 + sigma * eps` with `x0` in
                {0, 1}; `num_bits = tokens * bits_per_token`, MSB first within each token.
            sigma (`torch.FloatTensor` of shape `(batch_size,)` or a scalar): noise std in {0,1} units, > 0.
            self_cond (`torch.FloatTensor` of shape `(batch_size, num_bits)`, *optional*): the previous estimate of
                P(bit = 1). `None` is the official "no estimate" input (see `content_features`).
            return_dict (`bool`, *optional*): return an [`SDTOutput`] (default) or a tuple.

        Returns:
            [`SDTOutput`] with float32 `logits` (residual + matched filter) and `network_logits`, both `[B, S]`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        sigma = self._check_inputs(noisy_bits, sigma, self_cond)
        batch, num_bits = noisy_bits.shape
        patch = self.config.bits_per_token
        num_tokens = num_bits // patch

        # 1. per-bit features: [noisy C | self-cond C | position features]
        content = self.content_features(noisy_bits, sigma, self_cond)
        positions = bit_position_features(self.config, num_bits, noisy_bits.device).to(content.dtype)
        bit_features = torch.cat([content, positions.expand(batch, -1, -1)], dim=-1)

        # 2. semantic bit-patching: the P bits of a token become one position
        tokens = self.patch_proj(bit_features.view(batch, num_tokens, patch * bit_features.shape[-1]))

        # 3. noise conditioning from ln(sigma)
        sigma_embedding = self.time_cond(self.time_proj(self.time_fn(sigma)))

        # 4. adaLN-Zero trunk with RoPE over token positions (no final norm)
        position_embeddings = self.rotary_emb(num_tokens, tokens.device, tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, sigma_embedding, position_embeddings)

        # 5. unpatch to C features per bit, then the per-bit head
        x_recon = self.unpatch_proj_content(tokens).view(batch, num_bits, self.config.content_dim)
        network_logits = self.head(x_recon, content, tokens, sigma_embedding).squeeze(-1)

        # 6. matched-filter residual, added in float32
        logits = network_logits.float() + matched_filter_logits(
            noisy_bits,
            sigma,
            center=self.config.matched_filter_center,
            scale=self.config.matched_filter_scale,
            clip=self.config.matched_filter_clip,
        )
        if not return_dict:
            return logits, network_logits
        return SDTOutput(logits=logits, network_logits=network_logits)


# Saved folders name the class in their `auto_map` (loadable with `trust_remote_code`), and the auto classes learn it.
SDTModel.register_for_auto_class("AutoModel")
if __package__ == "bitstream_diffusion.modeling":  # skipped in the copy saved next to the weights (remote code)
    importlib.import_module("bitstream_diffusion._auto_registration").register_when_loaded(__name__)
