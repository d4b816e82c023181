"""Where the pipeline's randomness comes from.

Privacy noise on a real phone must not be predictable by anyone else, so by default every
generator is seeded with 128 bits from the operating system's CSPRNG (:mod:`secrets`).
Tests and simulations inject a seed instead; the seed, the round, the phone and the
purpose ("noise", "rounding", ...) are hashed into an independent stream, so two phones (or
two steps on one phone) never share noise even when the run has one seed.

The generator itself is NumPy's PCG64: fast and statistically excellent, but not a
cryptographic generator, so its state must stay in the phone's memory for the one round it
serves (it does: a new generator is made per call).
"""

from __future__ import annotations

import hashlib
import secrets

import numpy as np


def secure_generator() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS CSPRNG (the default on phones)."""
    return np.random.default_rng(secrets.randbits(128))


def derived_generator(seed: int | None, *labels: str | int) -> np.random.Generator:
    """Deterministic stream for ``(seed, *labels)``, or a secure one when ``seed`` is None.

    Labels are hashed (SHA-256) into the seed sequence so distinct labels give independent
    streams; the same labels always give the same stream.
    """
    if seed is None:
        return secure_generator()
    text = "\x1f".join(str(label) for label in labels).encode()
    digest = hashlib.sha256(text).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**128 - 1), *words]))
