"""What a phone computes after training: the delta, in the layout the server sums in.

The server only ever adds vectors, so every phone must lay its delta out identically:
modules in natural order (``layers.2`` before ``layers.10``), for each ``lora_A`` then
``lora_B``, row-major — fedlora's ``FlatLayout``. The delta is ``trained − received``
factor by factor (only LoRA tensors, never base weights), clipped in L2 to the round's clip
norm before anything else happens to it.

What this module does **not** do: noise, quantization and SecAgg masking, and the Flower
transport. Those are the rest of the privacy pipeline (docs/privacy.md,
docs/secure-aggregation.md); a native app must run them — or hand the delta to an on-device
fedlora ClientApp — before the delta leaves the phone. Uploading a raw delta anywhere
breaks the privacy guarantee.
"""

from __future__ import annotations

import math

import numpy as np

from fedlora_native.adapter import SUFFIX_A, SUFFIX_B, NativeAdapter


def compute_delta(received: NativeAdapter, trained: NativeAdapter) -> NativeAdapter:
    """``trained − received`` per tensor, with the received metadata marked as a delta."""
    if sorted(received.tensors) != sorted(trained.tensors):
        raise ValueError("trained adapter has other tensors than the received one")
    tensors: dict[str, np.ndarray] = {}
    for name, before in received.tensors.items():
        after = trained.tensors[name]
        if after.shape != before.shape:
            raise ValueError(f"{name}: shape {after.shape} != {before.shape}")
        tensors[name] = (after.astype(np.float32) - before.astype(np.float32)).astype(np.float32)
    meta = dict(received.metadata, kind="delta", dtype="float32", producer="fedlora-native")
    return NativeAdapter(tensors=tensors, metadata=meta)


def flatten(adapter: NativeAdapter) -> np.ndarray:
    """One float64 vector in fedlora's flat layout."""
    parts: list[np.ndarray] = []
    for module in adapter.modules:
        for suffix in (SUFFIX_A, SUFFIX_B):
            parts.append(np.asarray(adapter.tensors[module + suffix], dtype=np.float64).ravel())
    return np.concatenate(parts) if parts else np.zeros(0)


def clip_l2(vector: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` down to L2 norm ``clip_norm`` if longer; returns it and its norm."""
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm):
        raise ValueError("non-finite delta: refusing to send it")
    if norm <= clip_norm or norm == 0.0:
        return vector.copy(), norm
    return vector * (clip_norm / norm), norm


def pad_to_rank(adapter: NativeAdapter, r_max: int) -> NativeAdapter:
    """Zero-pad every module to rank ``r_max`` (alpha scaled so alpha / r is unchanged):
    phones of every rank send vectors of one length, the ``r_max`` layout."""
    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for module in adapter.modules:
        a, b = adapter.pair(module)
        r = a.shape[0]
        if r > r_max:
            raise ValueError(f"{module}: rank {r} is above the padding rank {r_max}")
        pa = np.zeros((r_max, a.shape[1]), dtype=a.dtype)
        pb = np.zeros((b.shape[0], r_max), dtype=b.dtype)
        pa[:r], pb[:, :r] = a, b
        tensors[module + SUFFIX_A], tensors[module + SUFFIX_B] = pa, pb
        ranks[module] = r_max
        alphas[module] = adapter.scaling(module) * r_max
    meta = dict(adapter.metadata, ranks=ranks, alphas=alphas)
    return NativeAdapter(tensors=tensors, metadata=meta)
