"""Round parameters: neighbourhood degree ``k``, threshold ``t``, modulus ``2^b``.

Choice of ``k`` and ``t`` (Bell et al. 2020, SecAgg+). Each client secret-shares
``b_u`` and ``s_u^SK`` ``t``-out-of-``k`` among its ``k`` neighbours in a random
``k``-regular graph (:mod:`.graph`). With a fraction ``γ`` of clients colluding with the
server and a fraction ``δ`` dropping out, neighbours of a fixed client are a uniform
sample of the others, so the number of bad ones is hypergeometric — dominated by a
binomial ``Bin(k, ·)`` (Hoeffding 1963). We take the smallest even ``k`` (and, for it, the
smallest ``t``) such that, by union bounds over the ``n`` clients,

* security:    ``n · P[Bin(k, γ) ≥ t] ≤ 2^−σ`` — no honest client has ``t`` colluding
  neighbours, so no coalition can rebuild both secrets of an honest client;
* correctness: ``n · P[Bin(k, δ) ≥ k − t + 1] ≤ 2^−η`` — every client keeps ``≥ t``
  surviving neighbours, so every needed secret can be rebuilt;
* connectivity: ``n² · (γ + δ)^k ≤ 2^−σ`` — the honest survivors stay connected (in a ring
  Harary graph a cut needs two runs of ``k/2`` consecutive bad clients), so the server only
  learns the sum over *all* of them, never a partial sum.

Defaults ``γ = δ = 0.1``, ``σ = 40``, ``η = 30`` give ``k = 52, t = 28`` at ``n = 100``, ``54``
at 300, ``56`` at 1000, ``60`` at 10⁴: the ``O(log n)`` growth of Bell et al. When no even
``k ≤ n − 2`` qualifies (small rounds), the graph is complete (``k = n − 1``, plain SecAgg)
with a majority threshold ``t = ⌊(n − 1)/2⌋ + 1`` (and ``t > γ n``).

Headroom. Inputs are signed integers with ``|x_i| ≤ B`` (:attr:`SecAggParams.coordinate_bound`).
The sum of ``n`` of them lies in ``[−nB, nB]`` and is recovered exactly from ``Z_(2^b)`` iff
``n·B ≤ 2^(b−1) − 1``; otherwise the round is refused at construction (before any message).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from .errors import SecAggHeadroomError, SecAggParamsError
from .graph import neighbourhoods, neighbours_in_ring, ring_order
from .prg import SEED_BYTES

MIN_BITS = 8
MAX_BITS = 64
DEFAULT_CORRUPT_FRACTION = 0.1
DEFAULT_DROPOUT_FRACTION = 0.1
DEFAULT_SIGMA = 40
DEFAULT_ETA = 30


def _binomial_tail(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) ≥ t]."""
    if t <= 0:
        return 1.0
    if t > k:
        return 0.0
    return math.fsum(math.comb(k, i) * p**i * (1.0 - p) ** (k - i) for i in range(t, k + 1))


def choose_neighbourhood(
    n: int,
    *,
    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION,
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
    sigma: int = DEFAULT_SIGMA,
    eta: int = DEFAULT_ETA,
) -> tuple[int, int]:
    """``(k, t)`` for ``n`` clients per the bounds in the module docstring."""
    if n < 3:
        raise SecAggParamsError(f"secure aggregation needs at least 3 clients, got {n}")
    g, d = corrupt_fraction, dropout_fraction
    if not (0 <= g < 1 and 0 <= d < 1 and g + d < 1):
        raise SecAggParamsError(f"need 0 ≤ γ, δ and γ + δ < 1, got γ={g}, δ={d}")
    sec_eps, cor_eps = 2.0**-sigma, 2.0**-eta
    for k in range(4, n - 1, 2):
        if n * n * (g + d) ** k > sec_eps:
            continue
        t = next((t for t in range(2, k + 1) if n * _binomial_tail(k, g, t) <= sec_eps), None)
        if t is not None and n * _binomial_tail(k, d, k - t + 1) <= cor_eps:
            return k, t
    k = n - 1
    return k, min(k, max((n - 1) // 2 + 1, math.floor(g * n) + 1))


def required_bits(n: int, coordinate_bound: int) -> int:
    """Smallest ``b`` with ``n · B ≤ 2^(b−1) − 1``: the sum of n signed values fits."""
    return max(1, (n * coordinate_bound).bit_length() + 1)


def payload_bound(clip_norm: float, noise_bound: float, scale: float, weight: int = 1) -> int:
    """Bound ``B`` on one quantized coordinate: ``|x_i| ≤ ‖x‖₂ ≤ clip``, plus the per-coordinate
    noise bound, times the fixed-point scale (+1 for rounding up), times an integer weight."""
    if clip_norm < 0 or noise_bound < 0 or scale <= 0 or weight < 1:
        raise SecAggParamsError("clip_norm, noise_bound ≥ 0, scale > 0 and weight ≥ 1 required")
    return (math.floor((clip_norm + noise_bound) * scale) + 1) * weight


def check_headroom(n: int, bits: int, coordinate_bound: int) -> None:
    """Refuse (``SecAggHeadroomError``) if ``2^bits`` cannot hold the sum of n vectors."""
    need = required_bits(n, coordinate_bound)
    if need > bits:
        raise SecAggHeadroomError(
            f"modulus 2^{bits} cannot hold the sum of {n} vectors with |x_i| ≤ "
            f"{coordinate_bound}: needs {need} bits (lower the scale or clip norm, raise "
            f"secagg_bits, or sample fewer clients)"
        )


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of one round, announced by the server in Round 0 (AdvertiseKeys).

    ``participants`` are the sampled clients' ids (distinct, in [1, 2^64)); ``degree`` is
    ``k`` and ``threshold`` is ``t``; ``bits`` is ``b`` of the ring ``Z_(2^b)``;
    ``vector_len`` counts every coordinate (payload and metadata); ``coordinate_bound`` is
    ``B`` with ``|x_i| ≤ B``; ``round_seed`` fixes the neighbourhood graph and salts HKDF.
    """

    round_id: int
    participants: tuple[int, ...]
    degree: int
    threshold: int
    bits: int
    vector_len: int
    coordinate_bound: int
    round_seed: bytes

    def __post_init__(self) -> None:
        p = self.participants
        problems = []
        if not 0 <= self.round_id < 1 << 63:
            problems.append(f"round_id {self.round_id} outside [0, 2^63)")
        if len(p) < 3:
            problems.append(f"need at least 3 participants, got {len(p)}")
        if len(set(p)) != len(p) or any(not (isinstance(c, int) and 0 < c < 1 << 64) for c in p):
            problems.append("participant ids must be distinct integers in [1, 2^64)")
        if list(p) != sorted(p):
            problems.append("participants must be sorted")
        n = len(p)
        if not (self.degree >= n - 1 or (self.degree >= 2 and self.degree % 2 == 0)):
            problems.append(f"degree k={self.degree} must be even and ≥ 2, or ≥ n − 1")
        k = min(self.degree, n - 1)
        if not 1 <= self.threshold <= max(k, 1):
            problems.append(f"threshold t={self.threshold} must be in [1, k={k}]")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            problems.append(f"bits={self.bits} outside [{MIN_BITS}, {MAX_BITS}]")
        if self.vector_len < 1:
            problems.append(f"vector_len={self.vector_len} must be ≥ 1")
        if self.coordinate_bound < 1:
            problems.append(f"coordinate_bound={self.coordinate_bound} must be ≥ 1")
        if not isinstance(self.round_seed, bytes) or len(self.round_seed) != SEED_BYTES:
            problems.append(f"round_seed must be {SEED_BYTES} bytes")
        if problems:
            raise SecAggParamsError("invalid secure-aggregation parameters: " + "; ".join(problems))
        check_headroom(n, self.bits, self.coordinate_bound)

    @classmethod
    def create(
        cls,
        round_id: int,
        participants: Sequence[int],
        vector_len: int,
        *,
        bits: int,
        coordinate_bound: int,
        corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION,
        dropout_fraction: float = DEFAULT_DROPOUT_FRACTION,
        sigma: int = DEFAULT_SIGMA,
        eta: int = DEFAULT_ETA,
        degree: int | None = None,
        threshold: int | None = None,
        round_seed: bytes | None = None,
    ) -> SecAggParams:
        """Parameters for a round; ``k``/``t`` from :func:`choose_neighbourhood` unless given."""
        ids = tuple(sorted(int(c) for c in participants))
        if degree is None or threshold is None:
            k, t = choose_neighbourhood(
                len(ids),
                corrupt_fraction=corrupt_fraction,
                dropout_fraction=dropout_fraction,
                sigma=sigma,
                eta=eta,
            )
            degree = k if degree is None else degree
            threshold = t if threshold is None else threshold
        return cls(
            round_id=round_id,
            participants=ids,
            degree=min(degree, len(ids) - 1),
            threshold=threshold,
            bits=bits,
            vector_len=vector_len,
            coordinate_bound=coordinate_bound,
            round_seed=round_seed if round_seed is not None else os.urandom(SEED_BYTES),
        )

    @property
    def n(self) -> int:
        return len(self.participants)

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    @cached_property
    def _ring(self) -> tuple[list[int], dict[int, int]]:
        order = ring_order(self.participants, self.round_seed)
        return order, {c: i for i, c in enumerate(order)}

    def neighbours(self, client_id: int) -> frozenset[int]:
        """``N(u)`` of one client (what a phone computes: O(n log n), not the whole graph)."""
        order, pos = self._ring
        return neighbours_in_ring(order, pos[client_id], self.degree)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        """``N(u)`` for every participant, from the public round seed."""
        return neighbourhoods(self.participants, self.degree, self.round_seed)
