"""Seeds derived from (seed, name, ...) that are the same in every process, and fast draws.

Python's ``hash()`` of a string changes between processes (PYTHONHASHSEED), so anything keyed
by a user or client id would silently stop being reproducible. Every derived seed in
:mod:`fedlora.data` goes through :func:`stable_seed`, which hashes an explicit encoding of its
parts with SHA-256.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def stable_seed(*parts: int | str) -> int:
    """A 128-bit non-negative integer determined only by ``parts`` (types and values)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise TypeError(f"seed parts must be int or str, got {type(part).__name__}")
        tag = b"i" if isinstance(part, int) else b"s"
        payload = str(part).encode("utf-8")
        h.update(tag + len(payload).to_bytes(8, "little") + payload)
    return int.from_bytes(h.digest()[:16], "little")


# Fast draws. ``random.Random.choice``/``randint`` go through ``_randbelow`` and cost several
# times more than one ``random()`` call; generating 40k texts makes ~10^6 draws, so these
# helpers (exactly reproducible, and uniform up to float resolution) keep builds fast.


def pick(r: random.Random, options: Sequence[T]) -> T:
    """A uniformly chosen element of non-empty ``options``."""
    return options[int(r.random() * len(options))]


def randint(r: random.Random, lo: int, hi: int, step: int = 1) -> int:
    """A uniform integer among ``lo, lo + step, ...`` up to and including ``hi``."""
    return lo + step * int(r.random() * ((hi - lo) // step + 1))


def draw_weighted(r: random.Random, cumulative: Sequence[float], options: Sequence[T]) -> T:
    """``options[i]`` with probability proportional to weight ``i``; pass running sums."""
    i = bisect_right(cumulative, r.random() * cumulative[-1])
    return options[min(i, len(options) - 1)]
