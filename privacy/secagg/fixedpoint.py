"""Signed integers ⇄ the ring Z_(2^b) in which masked vectors are added.

Inputs are integer vectors (the DP quantizer's output: clipped, noised, scaled, rounded).
A signed value ``x`` with ``|x| ≤ 2^(b−1) − 1`` maps to ``x mod 2^b`` (two's complement
truncated to ``b`` bits); a ring element ``y`` maps back to ``y`` if ``y < 2^(b−1)`` and to
``y − 2^b`` otherwise. Because the headroom check (:func:`.params.check_headroom`)
guarantees the *sum* fits, the map back of the ring sum is the exact integer sum.
"""

from __future__ import annotations

import numpy as np

from .prg import word_dtype


def check_int_vector(values: np.ndarray) -> np.ndarray:
    """Validate an integer vector (1-D; signed, or unsigned of ≤ 32 bits; no float/bool)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D integer vector, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        raise ValueError(
            f"expected a signed integer (or ≤ 32-bit unsigned) vector, got {arr.dtype}"
        )
    return arr


def as_int64(values: np.ndarray) -> np.ndarray:
    """Validate an integer vector and widen it to int64."""
    return check_int_vector(values).astype(np.int64, copy=False)


def to_ring(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed ints → words of Z_(2^bits) (uint32 for b ≤ 32, else uint64)."""
    x = check_int_vector(values)
    dtype = word_dtype(bits)
    out = x.astype(dtype, copy=True)  # C cast: two's complement, reduced mod 2^32 / 2^64
    if bits < dtype.itemsize * 8:
        out &= dtype.type((1 << bits) - 1)
    return out


def from_ring(words: np.ndarray, bits: int) -> np.ndarray:
    """Words of Z_(2^bits) → signed int64 in [−2^(b−1), 2^(b−1))."""
    y = np.asarray(words).astype(np.uint64)
    if bits == 64:
        return y.view(np.int64)
    y &= np.uint64((1 << bits) - 1)
    wrap = np.uint64((1 << 64) - (1 << bits))  # y − 2^b, computed mod 2^64
    return np.where(y >= np.uint64(1 << (bits - 1)), y + wrap, y).view(np.int64)
