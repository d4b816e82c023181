"""Secure aggregation (SecAgg+) of integer vectors: the server learns only the sum.

Built from ``cryptography`` primitives only (X25519, HKDF-SHA256, AES-GCM, AES-CTR) plus
Shamir sharing over GF(2^127 − 1), following Bonawitz et al. 2017 ("Practical Secure
Aggregation for Privacy-Preserving Machine Learning") with the sparse neighbourhoods of
Bell et al. 2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead").
See docs/secure-aggregation.md.

Modules, one job each: :mod:`.params` (k, t, b, headroom), :mod:`.graph` (neighbourhoods),
:mod:`.shamir`, :mod:`.keys` (X25519/HKDF/AES-GCM), :mod:`.prg` (AES-CTR masks),
:mod:`.fixedpoint` (signed ints ⇄ Z_(2^b)), :mod:`.contribution` (metadata coordinates),
:mod:`.messages` + :mod:`.codec` (the wire), :mod:`.client` / :mod:`.server` (the state
machines), :mod:`.loopback` (in-process rounds), :mod:`.flower` (Flower Message API driver;
imported on demand).
"""

from .client import SecAggClient
from .contribution import ContributionLayout, SecureSum, ranks_tuple
from .errors import (
    RejectReason,
    SecAggAborted,
    SecAggError,
    SecAggHeadroomError,
    SecAggInputError,
    SecAggIntegrityError,
    SecAggMessageRejected,
    SecAggParamsError,
)
from .fixedpoint import from_ring, to_ring
from .loopback import LoopbackResult, run_loopback
from .messages import Stage
from .params import (
    SecAggParams,
    check_headroom,
    choose_neighbourhood,
    payload_bound,
    required_bits,
)
from .server import SecAggServer

__all__ = [
    "ContributionLayout",
    "LoopbackResult",
    "RejectReason",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggHeadroomError",
    "SecAggInputError",
    "SecAggIntegrityError",
    "SecAggMessageRejected",
    "SecAggParams",
    "SecAggParamsError",
    "SecAggServer",
    "SecureSum",
    "Stage",
    "check_headroom",
    "choose_neighbourhood",
    "from_ring",
    "payload_bound",
    "ranks_tuple",
    "required_bits",
    "run_loopback",
    "to_ring",
]
