"""PRG: a 32-byte seed → a vector of words, uniformly random in Z_(2^w), vectorized.

Bonawitz et al. 2017 write the masks as ``PRG(b_u)`` (self mask) and ``PRG(s_{u,v})``
(pairwise masks). Ours is the AES-256-CTR keystream under the seed as key and an all-zero
initial counter block (each seed keys exactly one stream per round: ``b_u`` is fresh per
round, ``s_{u,v}`` is HKDF-derived with the round id and the ordered pair in its info).

The keystream bytes are viewed as little-endian words with NumPy (``np.frombuffer``), no
Python loop: one mask of 262,144 words costs ~0.2 ms here. Words are ``uint32`` when the
modulus ``2^b`` has ``b ≤ 32`` and ``uint64`` otherwise; word arithmetic wraps mod 2^32 or
2^64, which ``2^b`` divides, so reducing mod ``2^b`` once at the end is exact.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_IV = bytes(16)


def word_dtype(bits: int) -> np.dtype:
    """Smallest unsigned word (uint32 or uint64) that holds Z_(2^bits)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    return np.dtype("<u4") if bits <= 32 else np.dtype("<u8")


class MaskExpander:
    """Expands seeds into masks of ``length`` words, reusing one zero buffer and one output."""

    def __init__(self, length: int, bits: int) -> None:
        self.length = length
        self.dtype = word_dtype(bits)
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._buf = bytearray(nbytes + 15)  # update_into needs block_size − 1 spare bytes
        self._view = np.frombuffer(self._buf, dtype=self.dtype, count=length)

    def expand(self, seed: bytes) -> np.ndarray:
        """PRG(seed): a read-only view valid until the next call (copy it to keep it)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
        enc.update_into(self._zeros, self._buf)
        return self._view

    def add(self, acc: np.ndarray, seed: bytes) -> None:
        """acc ← acc + PRG(seed) (mod the word size), in place."""
        np.add(acc, self.expand(seed), out=acc)

    def subtract(self, acc: np.ndarray, seed: bytes) -> None:
        """acc ← acc − PRG(seed) (mod the word size), in place."""
        np.subtract(acc, self.expand(seed), out=acc)


def prg(seed: bytes, length: int, bits: int) -> np.ndarray:
    """PRG(seed) reduced mod 2^bits as a fresh array (convenience; the hot path uses
    :class:`MaskExpander`)."""
    out = MaskExpander(length, bits).expand(seed).copy()
    if bits < out.dtype.itemsize * 8:
        out &= out.dtype.type((1 << bits) - 1)
    return out
