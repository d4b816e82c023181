"""Synthetic rounds for tests, benchmarks and simulations: random deltas of a given shape.

Nothing here loads a model. :func:`llama_linear_shapes` gives the LoRA-targeted linear
shapes of a Llama by its config numbers; the defaults are fedlora's default base model
(hidden 128, 4 layers, 4 heads of dim 32, 4 kv heads) with the default targets
q_proj, k_proj, v_proj, o_proj, all 128 → 128.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from fedlora.adapter import AdapterMetadata, LoraAdapter, LoraPair

from .contribution import AggregationSpec, Contribution

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def llama_linear_shapes(
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 4,
    intermediate: int = 352,
    targets: Sequence[str] = DEFAULT_TARGETS,
) -> dict[str, tuple[int, int]]:
    """Module path → ``(d_in, d_out)`` for the targeted linears of a Llama."""
    head_dim = hidden // heads
    per_layer = {
        "q_proj": ("self_attn", hidden, heads * head_dim),
        "k_proj": ("self_attn", hidden, kv_heads * head_dim),
        "v_proj": ("self_attn", hidden, kv_heads * head_dim),
        "o_proj": ("self_attn", heads * head_dim, hidden),
        "gate_proj": ("mlp", hidden, intermediate),
        "up_proj": ("mlp", hidden, intermediate),
        "down_proj": ("mlp", intermediate, hidden),
    }
    out: dict[str, tuple[int, int]] = {}
    for i in range(layers):
        for t in targets:
            block, d_in, d_out = per_layer[t]
            out[f"model.layers.{i}.{block}.{t}"] = (d_in, d_out)
    return out


def default_spec(
    ranks: Sequence[int] = (4, 8, 16),
    *,
    scaling: float = 2.0,
    base_fingerprint: str = "synthetic-base",
    linear_shapes: dict[str, tuple[int, int]] | None = None,
    dtype: str = "float32",
) -> AggregationSpec:
    """The spec of the default adapter (alpha 16 at rank 8 → scaling 2) at ``ranks``."""
    shapes = linear_shapes or llama_linear_shapes()
    return AggregationSpec(
        base_fingerprint=base_fingerprint,
        linear_shapes=shapes,
        scalings=dict.fromkeys(shapes, scaling),
        ranks=tuple(ranks),
        dtype=dtype,
    )


def random_adapter(
    spec: AggregationSpec,
    rank: int,
    rng: np.random.Generator,
    *,
    kind: Literal["adapter", "delta"] = "adapter",
    scale: float = 1.0,
    zero_a: bool = False,
    zero_b: bool = False,
) -> LoraAdapter:
    """Gaussian factors at ``rank`` in ``spec``'s layout (``kind`` adapter or delta)."""
    pairs: dict[str, LoraPair] = {}
    for m in spec.modules:
        d_in, d_out = spec.linear_shapes[m]
        a = np.zeros((rank, d_in)) if zero_a else scale * rng.standard_normal((rank, d_in))
        b = np.zeros((d_out, rank)) if zero_b else scale * rng.standard_normal((d_out, rank))
        pairs[m] = LoraPair(a.astype(spec.dtype), b.astype(spec.dtype))
    return LoraAdapter.create(
        pairs,
        base_fingerprint=spec.base_fingerprint,
        alpha={m: spec.scalings[m] * rank for m in spec.modules},
        dtype=spec.dtype,
        kind=kind,
    )


def random_contributions(
    spec: AggregationSpec,
    n: int,
    rng: np.random.Generator,
    *,
    scale: float = 0.01,
    zero_a: bool = False,
    max_weight: int = 100,
) -> Iterator[Contribution]:
    """``n`` random delta contributions, ranks drawn uniformly from ``spec.ranks``.

    A generator: each contribution is made when asked for, so streaming a thousand of them
    never holds more than one. The (immutable) metadata of each rank is built and validated
    once, then shared, which keeps generation cheaper than aggregation.
    """
    metas: dict[int, AdapterMetadata] = {}
    for i in range(n):
        rank = int(rng.choice(spec.ranks))
        if rank not in metas:
            metas[rank] = random_adapter(spec, rank, rng, kind="delta").meta
        pairs: dict[str, LoraPair] = {}
        for m in spec.modules:
            d_in, d_out = spec.linear_shapes[m]
            b = rng.standard_normal((d_out, rank), dtype=np.float32)
            b *= scale
            if zero_a:
                a = np.zeros((rank, d_in), dtype=np.float32)
            else:
                a = rng.standard_normal((rank, d_in), dtype=np.float32)
                a *= scale
            pairs[m] = LoraPair(a.astype(spec.dtype, copy=False), b.astype(spec.dtype, copy=False))
        # no local keeps the yielded delta alive while the next one is built
        yield Contribution(
            delta=LoraAdapter(meta=metas[rank], pairs=pairs),
            weight=float(rng.integers(1, max_weight + 1)),
            client_id=f"phone-{i}",
        )
        del pairs
