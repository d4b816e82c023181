"""The adapter format every side of fedlora agrees on.

An adapter is a set of named LoRA factor pairs plus metadata. For a linear module at path
``p`` (as named by ``model.named_modules()``) with input size ``d_in`` and output size
``d_out``, the pair is ``A: (r, d_in)`` and ``B: (d_out, r)`` and the update it applies is

    ΔW_p = (alpha_p / r_p) · B_p @ A_p

which is exactly PEFT's LoRA convention, so a community adapter is also a PEFT adapter.

Arrays are NumPy (never torch) so the server, aggregation and privacy code stay torch-free.
The metadata records where the adapter came from (base-model fingerprint, producer, round)
and what it is (an adapter, or a delta between two adapters of the same layout).

Rank views change ``r`` but keep ``scaling = alpha / r`` per module constant (alpha moves
with r), so padding is exact and truncation keeps the leading rank slots' meaning; see
:mod:`fedlora.ranks`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedlora.errors import AdapterValidationError

#: Storage dtypes an adapter may hold. bfloat16 is not among them: NumPy has none and
#: Flower's ArrayRecord rejects it, so bf16 tensors are widened to float32 on the way in.
ALLOWED_DTYPES = ("float32", "float16", "float64")


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders ``layers.2`` before ``layers.10``: the stable module order."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name))


def short_name(module_path: str) -> str:
    """``model.layers.0.self_attn.q_proj`` → ``q_proj`` (PEFT's target-module name)."""
    return module_path.rsplit(".", 1)[-1]


class AdapterMetadata(BaseModel):
    """Everything about an adapter that is not a tensor; serialised as JSON next to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 1
    base_fingerprint: str = Field(description="fingerprint of the base model's config + weights")
    target_modules: tuple[str, ...] = Field(description="PEFT short names, e.g. q_proj")
    ranks: dict[str, int] = Field(description="rank r per module path")
    alphas: dict[str, float] = Field(description="LoRA alpha per module path")
    dtype: str = "float32"
    version: int = 0
    round: int = 0
    producer: str = "fedlora"
    kind: Literal["adapter", "delta"] = "adapter"
    extra: dict[str, str] = Field(default_factory=dict)

    def scaling(self, module: str) -> float:
        """alpha / r of one module: the factor PEFT multiplies ``B @ A`` by."""
        return self.alphas[module] / self.ranks[module]


@dataclass(frozen=True)
class LoraPair:
    """The two LoRA factors of one linear module: ``A (r, d_in)`` and ``B (d_out, r)``."""

    A: np.ndarray
    B: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.B.shape[0])


@dataclass(frozen=True)
class LoraAdapter:
    """Named LoRA pairs + metadata. Construct through :meth:`create` to get validation."""

    meta: AdapterMetadata
    pairs: Mapping[str, LoraPair]

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        pairs: Mapping[str, LoraPair],
        *,
        base_fingerprint: str,
        alpha: float | Mapping[str, float],
        dtype: str | None = None,
        version: int = 0,
        round: int = 0,
        producer: str = "fedlora",
        kind: Literal["adapter", "delta"] = "adapter",
        extra: Mapping[str, str] | None = None,
    ) -> LoraAdapter:
        """Build an adapter from pairs, deriving ranks and target modules from the tensors."""
        if not pairs:
            raise AdapterValidationError("<all>", "an adapter needs at least one LoRA module")
        ordered = {k: pairs[k] for k in sorted(pairs, key=natural_key)}
        alphas = (
            {k: float(alpha[k]) for k in ordered}
            if isinstance(alpha, Mapping)
            else {k: float(alpha) for k in ordered}
        )
        first = next(iter(ordered.values()))
        meta = AdapterMetadata(
            base_fingerprint=base_fingerprint,
            target_modules=tuple(sorted({short_name(k) for k in ordered})),
            ranks={k: p.rank for k, p in ordered.items()},
            alphas=alphas,
            dtype=dtype or str(first.A.dtype),
            version=version,
            round=round,
            producer=producer,
            kind=kind,
            extra=dict(extra or {}),
        )
        adapter = cls(meta=meta, pairs=ordered)
        adapter.check_consistent()
        return adapter

    def with_meta(self, **changes: object) -> LoraAdapter:
        """Same tensors, some metadata fields replaced (e.g. version, round, producer)."""
        return LoraAdapter(meta=self.meta.model_copy(update=changes), pairs=self.pairs)

    # ------------------------------------------------------------------ views
    @property
    def modules(self) -> list[str]:
        return list(self.pairs)

    def __iter__(self) -> Iterator[tuple[str, LoraPair]]:
        return iter(self.pairs.items())

    def tensors(self) -> dict[str, np.ndarray]:
        """Flat name → array mapping, names as in our safetensors files."""
        out: dict[str, np.ndarray] = {}
        for module, pair in self.pairs.items():
            out[f"{module}.lora_A.weight"] = pair.A
            out[f"{module}.lora_B.weight"] = pair.B
        return out

    @property
    def max_rank(self) -> int:
        return max(self.meta.ranks.values())

    @property
    def num_parameters(self) -> int:
        return sum(p.A.size + p.B.size for p in self.pairs.values())

    def delta_weight(self, module: str) -> np.ndarray:
        """Dense ΔW of one module, ``(alpha/r) · B @ A`` in float64."""
        pair = self.pairs[module]
        scale = self.meta.scaling(module)
        return scale * (pair.B.astype(np.float64) @ pair.A.astype(np.float64))

    # ------------------------------------------------------------------ arithmetic
    def _zip(self, other: LoraAdapter) -> Iterator[tuple[str, LoraPair, LoraPair]]:
        if list(self.pairs) != list(other.pairs):
            missing = sorted(set(self.pairs) ^ set(other.pairs))
            raise AdapterValidationError(missing[0], "modules differ between the two adapters")
        for name, pair in self.pairs.items():
            o = other.pairs[name]
            if pair.A.shape != o.A.shape or pair.B.shape != o.B.shape:
                raise AdapterValidationError(
                    name,
                    f"shape mismatch A{pair.A.shape}/B{pair.B.shape} vs A{o.A.shape}/B{o.B.shape}",
                )
            yield name, pair, o

    def minus(self, other: LoraAdapter) -> LoraAdapter:
        """Factor-wise difference ``self − other``: what a phone sends (a delta)."""
        pairs = {n: LoraPair(a.A - b.A, a.B - b.B) for n, a, b in self._zip(other)}
        return LoraAdapter(meta=self.meta.model_copy(update={"kind": "delta"}), pairs=pairs)

    def plus(self, delta: LoraAdapter) -> LoraAdapter:
        """Factor-wise sum ``self + delta``: applying a (community) delta to an adapter."""
        pairs = {n: LoraPair(a.A + b.A, a.B + b.B) for n, a, b in self._zip(delta)}
        return LoraAdapter(meta=self.meta, pairs=pairs)

    def astype(self, dtype: str) -> LoraAdapter:
        if dtype not in ALLOWED_DTYPES:
            raise AdapterValidationError("<all>", f"dtype {dtype!r} not in {ALLOWED_DTYPES}")
        pairs = {n: LoraPair(p.A.astype(dtype), p.B.astype(dtype)) for n, p in self.pairs.items()}
        return LoraAdapter(meta=self.meta.model_copy(update={"dtype": dtype}), pairs=pairs)

    # ------------------------------------------------------------------ validation
    def check_consistent(self) -> None:
        """Internal consistency: shapes agree with metadata, values finite, dtypes allowed.

        Raises :class:`AdapterValidationError` naming the first offending tensor.
        """
        if set(self.meta.ranks) != set(self.pairs):
            odd = sorted(set(self.meta.ranks) ^ set(self.pairs))
            raise AdapterValidationError(
                odd[0], "metadata ranks and tensors name different modules"
            )
        if set(self.meta.alphas) != set(self.pairs):
            odd = sorted(set(self.meta.alphas) ^ set(self.pairs))
            raise AdapterValidationError(
                odd[0], "metadata alphas and tensors name different modules"
            )
        for name, pair in self.pairs.items():
            for label, arr in (("lora_A", pair.A), ("lora_B", pair.B)):
                tname = f"{name}.{label}.weight"
                if not isinstance(arr, np.ndarray) or arr.ndim != 2:
                    raise AdapterValidationError(tname, "must be a 2-D NumPy array")
                if str(arr.dtype) not in ALLOWED_DTYPES:
                    raise AdapterValidationError(
                        tname, f"dtype {arr.dtype} not allowed (use one of {ALLOWED_DTYPES})"
                    )
                if not np.all(np.isfinite(arr)):
                    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                    raise AdapterValidationError(tname, f"{bad} non-finite values (NaN or inf)")
            if pair.B.shape[1] != pair.A.shape[0]:
                raise AdapterValidationError(
                    name, f"rank of A ({pair.A.shape[0]}) and B ({pair.B.shape[1]}) differ"
                )
            if pair.rank != self.meta.ranks[name]:
                raise AdapterValidationError(
                    name, f"tensor rank {pair.rank} but metadata says {self.meta.ranks[name]}"
                )
            if pair.rank < 1:
                raise AdapterValidationError(name, "rank must be at least 1")
            if not np.isfinite(self.meta.alphas[name]) or self.meta.alphas[name] <= 0:
                raise AdapterValidationError(
                    name, f"alpha must be > 0, got {self.meta.alphas[name]}"
                )


@dataclass(frozen=True)
class BaseModelSpec:
    """What an adapter is validated against: the base's fingerprint and its linear shapes.

    ``linear_shapes`` maps every module path that may carry LoRA to ``(d_in, d_out)``.
    """

    fingerprint: str
    linear_shapes: Mapping[str, tuple[int, int]]
    max_rank: int | None = None


def validate_for_base(
    adapter: LoraAdapter,
    base: BaseModelSpec,
    *,
    allowed_ranks: set[int] | None = None,
) -> None:
    """Check that ``adapter`` can be applied to ``base``; raise naming the tensor if not.

    Called before anything is written into a model, so a failure leaves nothing applied.
    """
    if adapter.meta.base_fingerprint != base.fingerprint:
        raise AdapterValidationError(
            "<all>",
            f"made for base model {adapter.meta.base_fingerprint!r}, "
            f"but this base is {base.fingerprint!r}",
        )
    adapter.check_consistent()
    for name, pair in adapter:
        if name not in base.linear_shapes:
            raise AdapterValidationError(
                name, "unknown module: the base model has no such linear layer"
            )
        d_in, d_out = base.linear_shapes[name]
        if pair.A.shape[1] != d_in:
            raise AdapterValidationError(
                f"{name}.lora_A.weight",
                f"expects {d_in} input features, tensor has {pair.A.shape[1]}",
            )
        if pair.B.shape[0] != d_out:
            raise AdapterValidationError(
                f"{name}.lora_B.weight",
                f"expects {d_out} output features, tensor has {pair.B.shape[0]}",
            )
        if base.max_rank is not None and pair.rank > base.max_rank:
            raise AdapterValidationError(
                name, f"rank {pair.rank} exceeds the maximum {base.max_rank}"
            )
        if allowed_ranks is not None and pair.rank not in allowed_ranks:
            raise AdapterValidationError(
                name, f"rank {pair.rank} is not one of the allowed ranks {sorted(allowed_ranks)}"
            )
