"""The SecAgg+ neighbourhood graph (Bell et al. 2020), derived from a public round seed.

Bell et al. replace Bonawitz's complete graph by a sparse random graph of degree
``k = O(log n)``: each client agrees pairwise masks with, and secret-shares its keys
among, only its ``k`` neighbours. We use the random *k-regular* variant that deployed
SecAgg+ implementations use: a Harary graph ``H(n, k)`` — clients on a ring, each linked to
the ``k/2`` nearest on either side — over a uniformly random permutation of the clients.

The permutation is public and reproducible by every party: clients are ordered by
``SHA-256(domain ‖ round_seed ‖ id)``. The server announces ``round_seed`` with the round
parameters, so no party (the server included, once the seed is fixed) chooses who is
whose neighbour. When ``k ≥ n − 1`` the graph is complete (plain SecAgg).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_DOMAIN = b"fedlora-secagg/v1 graph"


def ring_order(participants: Sequence[int], round_seed: bytes) -> list[int]:
    """The public random permutation of the participants for this round."""
    return sorted(
        participants,
        key=lambda c: hashlib.sha256(_DOMAIN + round_seed + c.to_bytes(8, "big")).digest(),
    )


def neighbours_in_ring(order: Sequence[int], position: int, degree: int) -> frozenset[int]:
    """``N(u)`` of the client at ``position`` of the ring ``order`` (Harary graph)."""
    n = len(order)
    if degree >= n - 1:
        return frozenset(order) - {order[position]}
    half = degree // 2
    return frozenset(order[(position + d) % n] for d in range(-half, half + 1) if d != 0)


def neighbourhoods(
    participants: Sequence[int], degree: int, round_seed: bytes
) -> dict[int, frozenset[int]]:
    """``N(u)`` for every participant ``u`` (never containing ``u`` itself)."""
    n = len(participants)
    if n < 2:
        raise ValueError("a neighbourhood graph needs at least 2 participants")
    if degree >= n - 1:
        everyone = frozenset(participants)
        return {u: everyone - {u} for u in participants}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and ≥ 2 (or ≥ n − 1), got {degree}")
    order = ring_order(participants, round_seed)
    half = degree // 2
    return {
        u: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d != 0)
        for i, u in enumerate(order)
    }
