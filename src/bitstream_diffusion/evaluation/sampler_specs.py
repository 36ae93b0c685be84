"""Sampler specs of the evaluation protocol (``gamma=0.2,nfe=256``, ``temperature=1``) and the per-sample seeding rule.

A spec names one sampler setting. For a CoBit pipeline two notations are accepted:

* ``gamma=G,nfe=N`` is the paper's: gamma ``G`` "at N NFE". The official evaluation sets ``S_churn = G * (N - 1)``
  and samples on an ``N - 1``-point grid, so it makes ``N - 1`` denoiser calls (``docs/design.md#churn-and-gamma``,
  ``docs/design.md#nfe-is-counted-as-model-calls``). Here that is ``num_inference_steps = N - 1`` noise levels with
  the per-step gamma ``EntropyRateScheduler.gamma_from_paper(G, N) = G * (N - 1) / (N - 2)`` (0.20079 for the
  paper's 0.2 at 256). With the Heun solver or "refined" self-conditioning (one more call per step) the levels are
  the most whose calls stay within ``N - 1``, and ``S_churn = G * (N - 1)`` is spread over them the same way.
* ``gamma=G,steps=K`` is this library's: per-step gamma ``G`` on ``K`` noise levels, exactly as given to the pipeline.

Options: ``solver=euler|heun`` and ``self_conditioning=carry|refined|none`` (alias ``sc``) override the pipeline's
scheduler for this spec.

For an autoregressive (causal-LM) model the spec is ``temperature=T[,top_p=P]`` (:class:`ARSamplerSpec`): ancestral
sampling from ``softmax(logits / T)``, optionally restricted to the nucleus of mass ``P``; ``temperature=1`` is
plain ancestral sampling, ``temperature=0`` greedy decoding. :func:`parse_spec` tells the two kinds apart by their
keys.

Sample ``i`` of (seed, spec) draws all its noise from ``torch.Generator().manual_seed(sample_seed(seed, key, i))``
with ``key`` the resolved spec key, ``sample_seed = (seed * 1_000_003 + crc32(key) * 10_007 + i) mod (2^63 - 1)``
(the official formula, per sample instead of per micro-batch). Samples therefore depend on nothing else: not on
the batch size, the number of processes, or which process draws them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "SPEC_COLUMNS",
    "ARSamplerSpec",
    "ResolvedARSpec",
    "ResolvedSpec",
    "SamplerSpec",
    "parse_spec",
    "sample_generators",
    "sample_seed",
]

SPEC_COLUMNS: tuple[str, ...] = (
    "gamma",
    "paper_nfe",
    "num_inference_steps",
    "gamma_per_step",
    "solver",
    "self_conditioning",
    "temperature",
    "top_p",
)
"""The result columns that describe a sampler (those of the other model kind stay empty)."""

_SOLVERS = ("euler", "heun")
_SELF_CONDITIONING = ("carry", "refined", "none")
_KEY_ALIASES = {"sc": "self_conditioning", "self_cond": "self_conditioning", "num_inference_steps": "steps"}
_SEED_MODULUS = 2**63 - 1
_AR_KEYS = ("temperature", "top_p")


def sample_seed(seed: int, spec_key: str, index: int) -> int:
    """The seed of sample ``index`` of run ``seed`` under the spec with key ``spec_key`` (stable across Python runs)."""
    crc = zlib.crc32(spec_key.encode("utf-8")) & 0xFFFFFFFF
    return (int(seed) * 1_000_003 + crc * 10_007 + int(index)) % _SEED_MODULUS


def sample_generators(seed: int, spec_key: str, indices: Iterable[int]) -> list[torch.Generator]:
    """One seeded CPU generator per sample index (the pipeline's list-of-generators convention)."""
    import torch

    return [torch.Generator().manual_seed(sample_seed(seed, spec_key, i)) for i in indices]


def _format_float(value: float) -> str:
    return repr(float(value))


def _spec_fields(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (keys lower-cased, aliases resolved; repeated keys are an error)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            "Empty sampler spec; write e.g. `gamma=0.2,nfe=256` (CoBit) or `temperature=1` (autoregressive)."
        )
    fields: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = _KEY_ALIASES.get(name.strip().lower(), name.strip().lower())
        if not sep or not value.strip():
            raise ValueError(f"Malformed spec item {part!r} in {text!r}; write `key=value` items joined by commas.")
        if name in fields:
            raise ValueError(f"Spec key {name!r} given twice in {text!r}.")
        fields[name] = value.strip()
    return fields


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting as the user wrote it (see the module docstring).

    Attributes:
        gamma: the paper's gamma (with ``nfe``) or the per-step gamma (with ``steps``).
        nfe: the paper's nominal NFE, or ``None``.
        steps: noise levels (``num_inference_steps``), or ``None``.
        solver, self_conditioning: scheduler overrides, or ``None`` for the pipeline's own.
    """

    gamma: float
    nfe: int | None = None
    steps: int | None = None
    solver: str | None = None
    self_conditioning: str | None = None

    def __post_init__(self):
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"Spec gamma must be finite and >= 0, got {self.gamma!r}.")
        if (self.nfe is None) == (self.steps is None):
            raise ValueError(
                "A spec needs exactly one of `nfe=N` (the paper's notation: N - 1 noise levels) and `steps=K` "
                f"(K noise levels, per-step gamma); got nfe={self.nfe!r}, steps={self.steps!r}."
            )
        if self.nfe is not None and self.nfe < 3:
            raise ValueError(f"`nfe` must be >= 3 (the paper's sampler uses nfe - 1 >= 2 levels), got {self.nfe}.")
        if self.steps is not None and self.steps < 2:
            raise ValueError(f"`steps` (noise levels, the last one the final denoise) must be >= 2, got {self.steps}.")
        if self.solver is not None and self.solver not in _SOLVERS:
            raise ValueError(f"`solver` must be one of {list(_SOLVERS)}, got {self.solver!r}.")
        if self.self_conditioning is not None and self.self_conditioning not in _SELF_CONDITIONING:
            raise ValueError(
                f"`self_conditioning` must be one of {list(_SELF_CONDITIONING)}, got {self.self_conditioning!r}."
            )

    @classmethod
    def parse(cls, text: str) -> SamplerSpec:
        """Parse ``"gamma=0.2,nfe=256"``, ``"gamma=0.2,steps=255,solver=heun"``, ...

        Raises:
            ValueError: malformed text, an unknown or repeated key, or an invalid value.
        """
        fields = _spec_fields(text)
        unknown = sorted(set(fields) - {"gamma", "nfe", "steps", "solver", "self_conditioning"})
        if unknown:
            raise ValueError(
                f"Unknown spec key(s) {unknown} in {text!r}; use gamma, nfe or steps, and optionally solver, "
                f"self_conditioning."
            )
        if "gamma" not in fields:
            raise ValueError(f"Spec {text!r} has no gamma; write e.g. `gamma=0.2,nfe=256` (gamma=0 is deterministic).")
        try:
            gamma = float(fields["gamma"])
            nfe = int(fields["nfe"]) if "nfe" in fields else None
            steps = int(fields["steps"]) if "steps" in fields else None
        except ValueError as error:
            raise ValueError(f"Bad number in spec {text!r}: {error}.") from None
        return cls(
            gamma=gamma,
            nfe=nfe,
            steps=steps,
            solver=fields.get("solver", "").lower() or None,
            self_conditioning=fields.get("self_conditioning", "").lower() or None,
        )

    @property
    def label(self) -> str:
        """The canonical spelling of what was given, e.g. ``gamma=0.2,nfe=256``."""
        parts = [f"gamma={_format_float(self.gamma)}"]
        parts.append(f"nfe={self.nfe}" if self.nfe is not None else f"steps={self.steps}")
        if self.solver is not None:
            parts.append(f"solver={self.solver}")
        if self.self_conditioning is not None:
            parts.append(f"self_conditioning={self.self_conditioning}")
        return ",".join(parts)

    def resolve(self, scheduler_config: Mapping[str, Any]) -> ResolvedSpec:
        """The pipeline call of this spec, given the pipeline scheduler's config (for the default solver and SC)."""
        from ..schedulers.scheduling_entropy_rate import EntropyRateScheduler

        solver = self.solver or scheduler_config.get("solver", "euler")
        self_conditioning = self.self_conditioning or scheduler_config.get("self_conditioning", "carry")
        extra_per_step = int(solver == "heun") + int(self_conditioning == "refined")
        if self.nfe is not None:
            # The most levels L whose calls L + extra * (L - 1) stay within the paper's real count nfe - 1.
            levels = (self.nfe - 1 + extra_per_step) // (1 + extra_per_step)
            if levels < 2:
                raise ValueError(f"nfe={self.nfe} leaves fewer than 2 noise levels with solver={solver!r}.")
            gamma_per_step = EntropyRateScheduler.gamma_from_s_churn(self.gamma * (self.nfe - 1), levels)
        else:
            levels, gamma_per_step = int(self.steps), float(self.gamma)
        return ResolvedSpec(
            spec=self,
            num_inference_steps=levels,
            gamma_per_step=gamma_per_step,
            solver=solver,
            self_conditioning=self_conditioning,
            expected_nfe=levels + extra_per_step * (levels - 1),
        )


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec made concrete for one pipeline: what the pipeline is called with.

    Attributes:
        spec: the spec as given.
        num_inference_steps: noise levels.
        gamma_per_step: EDM per-step churn passed as the pipeline's ``gamma``.
        solver, self_conditioning: the scheduler settings used (the spec's or the pipeline's).
        expected_nfe: denoiser calls per sample these settings make.
    """

    spec: SamplerSpec
    num_inference_steps: int
    gamma_per_step: float
    solver: str
    self_conditioning: str
    expected_nfe: int

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def key(self) -> str:
        """The spec's identity for seeding and caching: the given notation with every scheduler choice resolved."""
        count = f"nfe={self.spec.nfe}" if self.spec.nfe is not None else f"steps={self.spec.steps}"
        return (
            f"gamma={_format_float(self.spec.gamma)},{count},solver={self.solver},"
            f"self_conditioning={self.self_conditioning}"
        )

    model_kind = "cobit"

    def scheduler_overrides(self, scheduler_config: Mapping[str, Any]) -> dict[str, str]:
        """Config values that differ from the pipeline scheduler's (empty for the paper's sampler)."""
        wanted = {"solver": self.solver, "self_conditioning": self.self_conditioning}
        return {k: v for k, v in wanted.items() if scheduler_config.get(k) != v}

    def columns(self) -> dict[str, Any]:
        """The :data:`SPEC_COLUMNS` of this sampler."""
        return {
            **dict.fromkeys(SPEC_COLUMNS),
            "gamma": self.spec.gamma,
            "paper_nfe": self.spec.nfe,
            "num_inference_steps": self.num_inference_steps,
            "gamma_per_step": self.gamma_per_step,
            "solver": self.solver,
            "self_conditioning": self.self_conditioning,
        }

    def cache_fields(self) -> dict[str, Any]:
        """What decides the samples besides the model, seed and index (part of the sample cache's key)."""
        return {
            "spec_key": self.key,
            "num_inference_steps": self.num_inference_steps,
            "gamma_per_step": self.gamma_per_step,
        }


# ---------------------------------------------------------------------------------------------------- causal LMs


@dataclass(frozen=True)
class ARSamplerSpec:
    """An autoregressive sampler setting, ``temperature=T[,top_p=P]``.

    Attributes:
        temperature: divides the logits (1: the model's own distribution; 0: greedy, the most likely token).
        top_p: nucleus sampling: only the most likely tokens whose probabilities sum to at least ``top_p`` are
            kept; ``None`` (or 1) keeps every token.
    """

    temperature: float = 1.0
    top_p: float | None = None

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"`temperature` must be finite and >= 0 (1 = ancestral sampling, 0 = greedy), got {self.temperature!r}."
            )
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"`top_p` must lie in (0, 1] (1 keeps every token), got {self.top_p!r}.")

    @classmethod
    def parse(cls, text: str) -> ARSamplerSpec:
        """Parse ``"temperature=0.9"``, ``"temperature=1,top_p=0.95"``, ``"top_p=0.9"`` (temperature 1).

        Raises:
            ValueError: malformed text, an unknown or repeated key, or an invalid value.
        """
        fields = _spec_fields(text)
        unknown = sorted(set(fields) - set(_AR_KEYS))
        if unknown:
            raise ValueError(
                f"Unknown key(s) {unknown} in the autoregressive spec {text!r}; use temperature and optionally top_p "
                f"(e.g. `temperature=1` or `temperature=0.9,top_p=0.95`)."
            )
        try:
            temperature = float(fields.get("temperature", 1.0))
            top_p = float(fields["top_p"]) if "top_p" in fields else None
        except ValueError as error:
            raise ValueError(f"Bad number in spec {text!r}: {error}.") from None
        return cls(temperature=temperature, top_p=top_p)

    @property
    def label(self) -> str:
        """The canonical spelling, e.g. ``temperature=1.0`` or ``temperature=0.9,top_p=0.95``."""
        label = f"temperature={_format_float(self.temperature)}"
        return label if self.top_p is None else f"{label},top_p={_format_float(self.top_p)}"

    def resolve(self, num_tokens: int) -> ResolvedARSpec:
        """The sampler for rows of ``num_tokens`` generated tokens."""
        if int(num_tokens) < 1:
            raise ValueError(f"`num_tokens` (tokens generated per sample) must be positive, got {num_tokens}.")
        return ResolvedARSpec(spec=self, num_tokens=int(num_tokens))


@dataclass(frozen=True)
class ResolvedARSpec:
    """An autoregressive spec for rows of ``num_tokens`` tokens: ``num_tokens`` forward passes per sample.

    Attributes:
        spec: the spec as given.
        num_tokens: tokens generated per sample (the reference rows' length).
    """

    spec: ARSamplerSpec
    num_tokens: int
    model_kind = "ar"

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def temperature(self) -> float:
        return self.spec.temperature

    @property
    def top_p(self) -> float | None:
        """The nucleus mass, ``None`` when every token is kept (``top_p`` 1 included)."""
        return None if self.spec.top_p is None or self.spec.top_p >= 1 else self.spec.top_p

    @property
    def key(self) -> str:
        """The spec's identity for seeding and caching (``top_p=1`` and no ``top_p`` are the same sampler)."""
        top_p = "none" if self.top_p is None else _format_float(self.top_p)
        return f"ar,temperature={_format_float(self.temperature)},top_p={top_p}"

    @property
    def expected_nfe(self) -> int:
        """Forward passes per sample: one per generated token (the KV cache holds the prefix)."""
        return self.num_tokens

    def columns(self) -> dict[str, Any]:
        """The :data:`SPEC_COLUMNS` of this sampler."""
        return {**dict.fromkeys(SPEC_COLUMNS), "temperature": self.spec.temperature, "top_p": self.spec.top_p}

    def cache_fields(self) -> dict[str, Any]:
        """What decides the samples besides the model, seed and index (part of the sample cache's key)."""
        return {"spec_key": self.key, "num_tokens": self.num_tokens}


def parse_spec(text: str) -> SamplerSpec | ARSamplerSpec:
    """A CoBit spec (``gamma=...``) or an autoregressive one (``temperature=...``/``top_p=...``), told by its keys."""
    fields = _spec_fields(text)
    if set(fields) & set(_AR_KEYS):
        return ARSamplerSpec.parse(text)
    return SamplerSpec.parse(text)
