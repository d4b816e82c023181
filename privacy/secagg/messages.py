"""The protocol's messages, one plain dataclass per stage and direction.

Stages and names follow Bonawitz et al. 2017 (Fig. 4) with the SecAgg+ neighbourhoods of
Bell et al. 2020 (every list below is restricted to the recipient's neighbours ``N(u)``):

====================  =============================  =====================================
stage                 server → client u              client u → server
====================  =============================  =====================================
0 AdvertiseKeys       :class:`AdvertiseKeysRequest`  :class:`AdvertiseKeys` (c_u^PK, s_u^PK)
                      (public round parameters)
1 ShareKeys           :class:`ShareKeysRequest`      :class:`ShareKeys` (one AES-GCM share
                      (keys of v ∈ N(u) ∩ U1)        bundle per v ∈ N(u) ∩ U1)
2 MaskedInputColl.    :class:`MaskedInputRequest`    :class:`MaskedInput` (y_u in Z_(2^b))
                      (bundles from v ∈ N(u) ∩ U2)
3 Unmasking           :class:`UnmaskRequest`         :class:`Unmask` (shares of b_v for
                      (survivors / dropped of N(u))  survivors, of s_v^SK for dropped)
====================  =============================  =====================================

``U1 ⊇ U2 ⊇ U3 ⊇ U4`` are the clients that completed stages 0–3. Client → server messages
carry ``sender``, which the transport fills from its authenticated metadata (never from the
payload). Nothing in any client message is a per-phone plaintext value: keys are public,
bundles are encrypted, ``y_u`` is masked, shares are revealed only per the protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

import numpy as np

from .params import SecAggParams


class Stage(IntEnum):
    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASKING = 3
    DONE = 4


# ---------------------------------------------------------------- server → client
@dataclass(frozen=True)
class AdvertiseKeysRequest:
    """Round 0: the public round parameters (participants, k, t, b, length, seed)."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    params: SecAggParams

    @property
    def round_id(self) -> int:
        return self.params.round_id


@dataclass(frozen=True)
class ShareKeysRequest:
    """Round 1: ``{v: (c_v^PK, s_v^PK)}`` for the recipient's neighbours in U1."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    round_id: int
    public_keys: Mapping[int, tuple[bytes, bytes]]


@dataclass(frozen=True)
class MaskedInputRequest:
    """Round 2: ``{v: ciphertext v→u}`` for the recipient's neighbours in U2."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    round_id: int
    ciphertexts: Mapping[int, bytes]


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3: which of the recipient's neighbours survived (U3) and which dropped
    (U2 \\ U3)."""

    stage: ClassVar[Stage] = Stage.UNMASKING
    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


ServerMessage = AdvertiseKeysRequest | ShareKeysRequest | MaskedInputRequest | UnmaskRequest


# ---------------------------------------------------------------- client → server
@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0 reply: the two X25519 public keys ``c_u^PK`` and ``s_u^PK``."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    round_id: int
    sender: int
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Round 1 reply: ``{v: AE.enc(u‖v‖share_v(b_u)‖share_v(s_u^SK))}``."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    round_id: int
    sender: int
    ciphertexts: Mapping[int, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """Round 2 reply: ``y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_{u,v}) mod 2^b``.

    ``bad_ciphertexts`` names neighbours whose bundle failed authentication: the phone
    holds no share of their secrets (it still masks with them: masks come from keys).
    """

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    round_id: int
    sender: int
    masked: np.ndarray
    bad_ciphertexts: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Unmask:
    """Round 3 reply: shares of ``b_v`` (v survived) and of ``s_v^SK`` (v dropped)."""

    stage: ClassVar[Stage] = Stage.UNMASKING
    round_id: int
    sender: int
    b_shares: Mapping[int, bytes]
    s_shares: Mapping[int, bytes]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | Unmask
