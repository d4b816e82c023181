"""Shamir t-out-of-k secret sharing over the Mersenne prime field GF(2^127 − 1).

Bonawitz et al. 2017 (§3, "SS.share / SS.recon") share each client's self-mask seed ``b_u``
and its mask secret key ``s_u^SK`` among its neighbours. ``cryptography`` has no Shamir, so
this is written with Python integers:

* the field is GF(p) with ``p = 2^127 − 1`` (a Mersenne prime);
* a 32-byte secret is cut into :data:`CHUNK_BYTES`-byte chunks (15 bytes < 127 bits), each a
  field element, each shared with its own random polynomial of degree ``t − 1``;
* the share held by client ``v`` is the polynomials' values at ``x = v`` (client ids are
  distinct, non-zero and < 2^64 < p, so they are valid evaluation points).

Share encoding: ``x`` (8 bytes, big-endian) ‖ ``y_1 … y_m`` (16 bytes each, big-endian).
Reconstruction interpolates at 0 from the first ``t`` shares and, when more are given,
checks that every extra share lies on the same polynomials (a corrupted share is detected,
never silently used).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = (1 << 127) - 1
CHUNK_BYTES = 15
_ELEM_BYTES = 16
_X_BYTES = 8


class ShamirError(ValueError):
    """Shares are malformed, too few, or inconsistent."""


def _chunks(secret: bytes) -> list[int]:
    return [
        int.from_bytes(secret[i : i + CHUNK_BYTES], "big")
        for i in range(0, len(secret), CHUNK_BYTES)
    ]


def share_size(secret_len: int) -> int:
    """Bytes of one encoded share of a ``secret_len``-byte secret."""
    return _X_BYTES + _ELEM_BYTES * (-(-secret_len // CHUNK_BYTES))


def split(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, bytes]:
    """SS.share(secret, t, holders): one encoded share per holder id (x = holder id)."""
    if not secret:
        raise ShamirError("cannot share an empty secret")
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} must be in [1, {len(holders)}]")
    if len(set(holders)) != len(holders) or any(not 0 < h < 1 << 64 for h in holders):
        raise ShamirError("holder ids must be distinct integers in [1, 2^64)")
    polys = [
        [c] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)] for c in _chunks(secret)
    ]
    out: dict[int, bytes] = {}
    for x in holders:
        parts = [x.to_bytes(_X_BYTES, "big")]
        for coeffs in polys:
            y = 0
            for c in reversed(coeffs):  # Horner
                y = (y * x + c) % PRIME
            parts.append(y.to_bytes(_ELEM_BYTES, "big"))
        out[x] = b"".join(parts)
    return out


def decode_share(share: bytes, secret_len: int) -> tuple[int, list[int]]:
    """Encoded share → (x, [y_1 … y_m]); raises :class:`ShamirError` if malformed."""
    if len(share) != share_size(secret_len):
        raise ShamirError(f"share has {len(share)} bytes, expected {share_size(secret_len)}")
    x = int.from_bytes(share[:_X_BYTES], "big")
    ys = [
        int.from_bytes(share[i : i + _ELEM_BYTES], "big")
        for i in range(_X_BYTES, len(share), _ELEM_BYTES)
    ]
    if x == 0 or any(y >= PRIME for y in ys):
        raise ShamirError("share holds a value outside the field")
    return x, ys


def _inverse_denominators(xs: Sequence[int]) -> list[int]:
    """1 / Π_{j≠i}(x_i − x_j) for every i: the barycentric weights of the points ``xs``."""
    out = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if i != j:
                den = den * (xi - xj) % PRIME
        out.append(pow(den, -1, PRIME))
    return out


def _basis_at(xs: Sequence[int], inv_dens: Sequence[int], x: int) -> list[int]:
    """Lagrange basis polynomials of the points ``xs`` evaluated at ``x`` (O(t) each)."""
    n = len(xs)
    prefix = [1] * (n + 1)
    for i in range(n):
        prefix[i + 1] = prefix[i] * (x - xs[i]) % PRIME
    suffix = [1] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] * (x - xs[i]) % PRIME
    return [prefix[i] * suffix[i + 1] % PRIME * inv_dens[i] % PRIME for i in range(n)]


def combine(shares: Sequence[bytes], threshold: int, secret_len: int) -> bytes:
    """SS.recon: the secret from ≥ ``threshold`` shares; extra shares are cross-checked."""
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares, need at least {threshold}")
    decoded = [decode_share(s, secret_len) for s in shares]
    xs = [x for x, _ in decoded]
    if len(set(xs)) != len(xs):
        raise ShamirError("two shares have the same x coordinate")
    base, extra = decoded[:threshold], decoded[threshold:]
    base_xs = [x for x, _ in base]
    inv_dens = _inverse_denominators(base_xs)
    n_chunks = len(base[0][1])

    def interpolate(at: int) -> list[int]:
        basis = _basis_at(base_xs, inv_dens, at)
        return [
            sum(w * ys[c] for w, (_, ys) in zip(basis, base, strict=True)) % PRIME
            for c in range(n_chunks)
        ]

    values = interpolate(0)
    for x, ys in extra:
        if interpolate(x) != ys:
            raise ShamirError(f"share held by {x} is inconsistent with the others")
    out = bytearray()
    remaining = secret_len
    for v in values:
        width = min(CHUNK_BYTES, remaining)
        if v >= 1 << (8 * width):
            raise ShamirError("reconstructed value does not fit: shares are corrupted")
        out += v.to_bytes(width, "big")
        remaining -= width
    return bytes(out)
