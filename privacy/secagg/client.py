"""The phone's side of SecAgg+ as a transport-independent state machine.

One :class:`SecAggClient` per phone per round. It answers the four server requests in
order (Bonawitz et al. 2017, Fig. 4; Bell et al. 2020 neighbourhoods):

* Round 0 AdvertiseKeys — validate the public parameters; generate ``(c_u^PK, c_u^SK)``,
  ``(s_u^PK, s_u^SK)`` and the self-mask seed ``b_u``; send the public keys.
* Round 1 ShareKeys — check the neighbours' keys; Shamir-share ``b_u`` and ``s_u^SK``
  ``t``-out-of-``|N(u) ∩ U1|``; encrypt ``u‖v‖share_v(b_u)‖share_v(s_u^SK)`` to each ``v``.
* Round 2 MaskedInputCollection — decrypt and keep the neighbours' bundles (a bundle that
  fails authentication is reported, never used); send
  ``y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u)∩U2, u<v} PRG(s_{u,v}) − Σ_{v ∈ N(u)∩U2, u>v} PRG(s_{u,v})
  (mod 2^b)``.
* Round 3 Unmasking — for each neighbour the server lists as a survivor reveal the share of
  ``b_v``; for each dropped one the share of ``s_v^SK``; never both for one ``v`` (the state
  machine answers Round 3 once, and refuses overlapping lists).

A request that does not fit (wrong stage or round, keys outside ``N(u)``, too few
neighbours, …) raises :class:`SecAggMessageRejected`; the phone then sends nothing more.
The state serialises to bytes (:meth:`to_bytes`) so a Flower ClientApp can keep it in its
local ``Context.state`` between messages; it never leaves the phone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import codec, keys, shamir
from .errors import RejectReason, SecAggInputError, SecAggMessageRejected
from .fixedpoint import check_int_vector, to_ring
from .messages import (
    AdvertiseKeys,
    AdvertiseKeysRequest,
    ClientMessage,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    ShareKeys,
    ShareKeysRequest,
    Stage,
    Unmask,
    UnmaskRequest,
)
from .params import SecAggParams
from .prg import SEED_BYTES, MaskExpander

PrivateInput = np.ndarray | Callable[[], np.ndarray]

_ID = 8
SHARE_BYTES = shamir.share_size(SEED_BYTES)
BUNDLE_PLAINTEXT_BYTES = 2 * _ID + 2 * SHARE_BYTES
BUNDLE_BYTES = keys.NONCE_BYTES + BUNDLE_PLAINTEXT_BYTES + 16


def _bundle(u: int, v: int, b_share: bytes, s_share: bytes) -> bytes:
    return u.to_bytes(_ID, "big") + v.to_bytes(_ID, "big") + b_share + s_share


@dataclass
class SecAggClient:
    """State of phone ``client_id`` in one round (see the module docstring)."""

    client_id: int
    stage: Stage = Stage.ADVERTISE_KEYS
    params: SecAggParams | None = None
    c_keys: keys.KeyPair | None = None
    s_keys: keys.KeyPair | None = None
    b_seed: bytes = b""
    #: v → (c_v^PK, s_v^PK) for v ∈ N(u) ∩ U1
    peer_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    #: v → (share of b_v, share of s_v^SK) held by this phone
    held_shares: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    #: N(u) ∩ U2: the neighbours this phone masked with
    mask_peers: tuple[int, ...] = ()
    bad_bundles: tuple[int, ...] = ()
    #: v → AES-GCM key of the channel u↔v, derived once in Round 1 and reused in Round 2
    channel_keys: dict[int, bytes] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def _refuse(self, stage: Stage, reason: RejectReason, detail: str) -> SecAggMessageRejected:
        self.stage = Stage.DONE  # a phone that refused a request takes no further part
        return SecAggMessageRejected(None, stage.name, reason, f"phone {self.client_id}: {detail}")

    def _check(self, request: ServerMessage) -> SecAggParams:
        if request.stage != self.stage:
            raise self._refuse(
                request.stage,
                RejectReason.WRONG_STAGE,
                f"got a {request.stage.name} request while expecting {self.stage.name}",
            )
        if self.params is None:
            raise self._refuse(request.stage, RejectReason.WRONG_STAGE, "no round in progress")
        if request.round_id != self.params.round_id:
            raise self._refuse(
                request.stage,
                RejectReason.WRONG_ROUND,
                f"request for round {request.round_id}, this phone is in round "
                f"{self.params.round_id}",
            )
        return self.params

    @property
    def neighbours(self) -> frozenset[int]:
        assert self.params is not None
        return self.params.neighbours(self.client_id)

    # ------------------------------------------------------------------ dispatch
    def handle(
        self, request: ServerMessage, private_input: PrivateInput | None = None
    ) -> ClientMessage:
        """Answer any stage's request; ``private_input`` is needed (only) in Round 2."""
        if isinstance(request, AdvertiseKeysRequest):
            return self.advertise_keys(request)
        if isinstance(request, ShareKeysRequest):
            return self.share_keys(request)
        if isinstance(request, MaskedInputRequest):
            if private_input is None:
                raise SecAggInputError("Round 2 (MaskedInputCollection) needs the private input")
            x = private_input() if callable(private_input) else private_input
            return self.masked_input(request, x)
        return self.unmask(request)

    # ------------------------------------------------------------------ Round 0
    def advertise_keys(self, request: AdvertiseKeysRequest) -> AdvertiseKeys:
        """Round 0: check the parameters, make (c_u, s_u) and b_u, advertise c_u^PK, s_u^PK."""
        if self.stage != Stage.ADVERTISE_KEYS:
            raise self._refuse(
                Stage.ADVERTISE_KEYS, RejectReason.WRONG_STAGE, "round already started"
            )
        p = request.params
        if self.client_id not in p.participants:
            raise self._refuse(Stage.ADVERTISE_KEYS, RejectReason.BAD_PARAMS, "not a participant")
        if len(p.neighbours(self.client_id)) < p.threshold:
            raise self._refuse(
                Stage.ADVERTISE_KEYS,
                RejectReason.BAD_PARAMS,
                f"threshold t={p.threshold} exceeds the neighbourhood size",
            )
        self.params = p
        self.c_keys, self.s_keys = keys.KeyPair.generate(), keys.KeyPair.generate()
        self.b_seed = os.urandom(SEED_BYTES)
        self.stage = Stage.SHARE_KEYS
        return AdvertiseKeys(
            round_id=p.round_id, sender=self.client_id, c_pk=self.c_keys.pk, s_pk=self.s_keys.pk
        )

    # ------------------------------------------------------------------ Round 1
    def share_keys(self, request: ShareKeysRequest) -> ShareKeys:
        """Round 1: t-out-of-|N(u)∩U1| shares of b_u and s_u^SK, one AES-GCM bundle each."""
        p = self._check(request)
        assert self.c_keys is not None and self.s_keys is not None
        stage = Stage.SHARE_KEYS
        peers = dict(request.public_keys)
        outside = sorted(set(peers) - self.neighbours)
        if outside:
            raise self._refuse(
                stage, RejectReason.WRONG_RECIPIENTS, f"keys of non-neighbours {outside}"
            )
        if len(peers) < p.threshold:
            raise self._refuse(
                stage,
                RejectReason.TOO_FEW_NEIGHBOURS,
                f"{len(peers)} neighbours advertised keys, threshold is {p.threshold}",
            )
        seen = {self.c_keys.pk, self.s_keys.pk}
        for v, (c_pk, s_pk) in peers.items():
            try:
                keys.check_public_key(c_pk)
                keys.check_public_key(s_pk)
            except (ValueError, TypeError) as exc:
                raise self._refuse(stage, RejectReason.BAD_KEY, f"key of {v}: {exc}") from exc
            if c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise self._refuse(stage, RejectReason.BAD_KEY, f"key of {v} repeats another key")
            seen |= {c_pk, s_pk}
        holders = sorted(peers)
        b_shares = shamir.split(self.b_seed, p.threshold, holders)
        s_shares = shamir.split(self.s_keys.sk, p.threshold, holders)
        u = self.client_id
        c_sk = keys.load_private(self.c_keys.sk)
        out, channel = {}, {}
        for v in holders:
            k = keys.encryption_key(
                c_sk, peers[v][0], salt=p.round_seed, round_id=p.round_id, u=u, v=v
            )
            channel[v] = k
            out[v] = keys.encrypt_bundle(
                k, _bundle(u, v, b_shares[v], s_shares[v]), round_id=p.round_id, src=u, dst=v
            )
        self.peer_keys, self.channel_keys = peers, channel
        self.stage = Stage.MASKED_INPUT
        return ShareKeys(round_id=p.round_id, sender=u, ciphertexts=out)

    # ------------------------------------------------------------------ Round 2
    def _open_bundle(self, c_sk: keys.SecretKey, v: int, ciphertext: bytes) -> tuple[bytes, bytes]:
        p = self.params
        assert p is not None
        u = self.client_id
        k = self.channel_keys.get(v) or keys.encryption_key(
            c_sk, self.peer_keys[v][0], salt=p.round_seed, round_id=p.round_id, u=u, v=v
        )
        plain = keys.decrypt_bundle(k, ciphertext, round_id=p.round_id, src=v, dst=u)
        if len(plain) != BUNDLE_PLAINTEXT_BYTES:
            raise keys.CiphertextError("bundle has the wrong size")
        src = int.from_bytes(plain[:_ID], "big")
        dst = int.from_bytes(plain[_ID : 2 * _ID], "big")
        if (src, dst) != (v, u):
            raise keys.CiphertextError(f"bundle is addressed {src}→{dst}, expected {v}→{u}")
        b_share = plain[2 * _ID : 2 * _ID + SHARE_BYTES]
        s_share = plain[2 * _ID + SHARE_BYTES :]
        for share in (b_share, s_share):
            x, _ = shamir.decode_share(share, SEED_BYTES)
            if x != u:
                raise keys.CiphertextError(f"share is for x={x}, not this phone")
        return b_share, s_share

    def masked_input(self, request: MaskedInputRequest, x: np.ndarray) -> MaskedInput:
        """Round 2: keep the neighbours' shares; send y_u (masked input) in Z_(2^b)."""
        p = self._check(request)
        assert self.s_keys is not None
        stage = Stage.MASKED_INPUT
        try:
            values = check_int_vector(x)
        except ValueError as exc:
            raise SecAggInputError(f"phone {self.client_id}: private input: {exc}") from exc
        if values.shape[0] != p.vector_len:
            raise SecAggInputError(
                f"phone {self.client_id}: input has {values.shape[0]} values, the round "
                f"expects {p.vector_len}"
            )
        if values.size and max(int(values.max()), -int(values.min())) > p.coordinate_bound:
            raise SecAggInputError(
                f"phone {self.client_id}: input exceeds the round's coordinate bound "
                f"{p.coordinate_bound}: the sum could overflow 2^{p.bits}"
            )
        senders = set(request.ciphertexts)
        outside = sorted(senders - set(self.peer_keys))
        if outside:
            raise self._refuse(stage, RejectReason.WRONG_RECIPIENTS, f"bundles from {outside}")
        if len(senders) < p.threshold:
            raise self._refuse(
                stage,
                RejectReason.TOO_FEW_NEIGHBOURS,
                f"{len(senders)} neighbours shared keys, threshold is {p.threshold}",
            )
        assert self.c_keys is not None
        c_sk = keys.load_private(self.c_keys.sk)
        held: dict[int, tuple[bytes, bytes]] = {}
        bad: list[int] = []
        for v in sorted(senders):
            try:
                held[v] = self._open_bundle(c_sk, v, request.ciphertexts[v])
            except (keys.CiphertextError, shamir.ShamirError, TypeError, ValueError):
                bad.append(v)
        u = self.client_id
        expander = MaskExpander(p.vector_len, p.bits)
        y = to_ring(values, p.bits)
        expander.add(y, self.b_seed)
        s_sk = keys.load_private(self.s_keys.sk)
        for v in sorted(senders):
            seed = keys.mask_seed(
                s_sk, self.peer_keys[v][1], salt=p.round_seed, round_id=p.round_id, u=u, v=v
            )
            if u < v:
                expander.add(y, seed)
            else:
                expander.subtract(y, seed)
        if p.bits < y.dtype.itemsize * 8:
            y &= y.dtype.type(p.modulus_mask)
        self.held_shares, self.mask_peers, self.bad_bundles = (
            held,
            tuple(sorted(senders)),
            tuple(bad),
        )
        self.stage = Stage.UNMASKING
        return MaskedInput(round_id=p.round_id, sender=u, masked=y, bad_ciphertexts=tuple(bad))

    # ------------------------------------------------------------------ Round 3
    def unmask(self, request: UnmaskRequest) -> Unmask:
        """Round 3: shares of b_v for surviving v, of s_v^SK for dropped v — never both."""
        p = self._check(request)
        stage = Stage.UNMASKING
        survivors, dropped = set(request.survivors), set(request.dropped)
        if len(survivors) != len(request.survivors) or len(dropped) != len(request.dropped):
            raise self._refuse(stage, RejectReason.MALFORMED, "an id is listed twice")
        if survivors & dropped:
            raise self._refuse(
                stage,
                RejectReason.BAD_PARAMS,
                f"{sorted(survivors & dropped)} both survived and dropped",
            )
        outside = sorted((survivors | dropped) - set(self.mask_peers))
        if outside:
            raise self._refuse(
                stage, RejectReason.WRONG_RECIPIENTS, f"{outside} are not in N(u) ∩ U2"
            )
        b_out = {v: self.held_shares[v][0] for v in sorted(survivors) if v in self.held_shares}
        s_out = {v: self.held_shares[v][1] for v in sorted(dropped) if v in self.held_shares}
        self.stage = Stage.DONE
        self.held_shares, self.channel_keys = {}, {}
        return Unmask(round_id=p.round_id, sender=self.client_id, b_shares=b_out, s_shares=s_out)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialise the phone-local state (private keys included: keep it on the phone)."""
        doc = {
            "client_id": self.client_id,
            "stage": int(self.stage),
            "params": codec.encode(AdvertiseKeysRequest(self.params)).hex()
            if self.params
            else None,
            "c": [self.c_keys.sk.hex(), self.c_keys.pk.hex()] if self.c_keys else None,
            "s": [self.s_keys.sk.hex(), self.s_keys.pk.hex()] if self.s_keys else None,
            "b": self.b_seed.hex(),
            "peers": {str(v): [a.hex(), b.hex()] for v, (a, b) in self.peer_keys.items()},
            "held": {str(v): [a.hex(), b.hex()] for v, (a, b) in self.held_shares.items()},
            "mask_peers": list(self.mask_peers),
            "bad": list(self.bad_bundles),
            "channel": {str(v): k.hex() for v, k in self.channel_keys.items()},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggClient:
        doc = json.loads(data)

        def pair(v: list[str]) -> tuple[bytes, bytes]:
            return bytes.fromhex(v[0]), bytes.fromhex(v[1])

        params = None
        if doc["params"]:
            req = codec.decode_server_message(bytes.fromhex(doc["params"]))
            assert isinstance(req, AdvertiseKeysRequest)
            params = req.params
        peers: Mapping[str, list[str]] = doc["peers"]
        held: Mapping[str, list[str]] = doc["held"]
        return cls(
            client_id=int(doc["client_id"]),
            stage=Stage(doc["stage"]),
            params=params,
            c_keys=keys.KeyPair(*pair(doc["c"])) if doc["c"] else None,
            s_keys=keys.KeyPair(*pair(doc["s"])) if doc["s"] else None,
            b_seed=bytes.fromhex(doc["b"]),
            peer_keys={int(v): pair(x) for v, x in peers.items()},
            held_shares={int(v): pair(x) for v, x in held.items()},
            mask_peers=tuple(int(v) for v in doc["mask_peers"]),
            bad_bundles=tuple(int(v) for v in doc["bad"]),
            channel_keys={int(v): bytes.fromhex(k) for v, k in doc.get("channel", {}).items()},
        )
