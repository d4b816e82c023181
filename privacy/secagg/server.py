"""The server's side of SecAgg+ as a transport-independent state machine.

The server is honest-but-curious: it follows the protocol and learns only the sum of the
surviving phones' vectors. Usage, one stage at a time (a transport drives it)::

    server = SecAggServer(params)               # refuses bad parameters / headroom up front
    while server.stage is not Stage.DONE:
        for client_id, request in server.requests().items():
            ...send request, collect replies...
        for reply in replies:
            server.receive(reply)                # may raise SecAggMessageRejected (recorded)
        server.close_stage()                     # may raise SecAggAborted
    total = server.result()                      # signed int64 sum of the survivors

Participant sets (Bonawitz et al. 2017): ``U1`` advertised keys, ``U2`` shared keys,
``U3`` sent masked inputs (the survivors whose inputs are in the sum), ``U4`` answered
the unmasking request. At each stage close the server checks that every secret it may need
can still be rebuilt from ``t`` shares; otherwise it raises :class:`SecAggAborted` — before
asking for any share it cannot use, and with no output.

Masked inputs are summed as they arrive (memory does not grow with the number of phones).
Unmasking (Round 3): for each ``u ∈ U3`` rebuild ``b_u`` and subtract ``PRG(b_u)``; for
each dropped ``v ∈ U2 \\ U3`` rebuild ``s_v^SK`` (checked against ``s_v^PK``), and remove
the pairwise masks ``±PRG(s_{v,w})`` that its surviving neighbours ``w`` added.

Every rejected message is recorded in :attr:`SecAggServer.rejections` with its reason;
the sender is excluded from the rest of the round where the protocol allows (stages 0–2;
a bad Round 3 reply only loses that phone's shares). Nothing a client sends can crash it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import keys, shamir
from .client import BUNDLE_BYTES
from .errors import RejectReason, SecAggAborted, SecAggError, SecAggMessageRejected
from .fixedpoint import from_ring
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
from .prg import SEED_BYTES, MaskExpander, word_dtype

_CLIENT_TYPES = (AdvertiseKeys, ShareKeys, MaskedInput, Unmask)


class SecAggServer:
    """Server state of one SecAgg+ round (see the module docstring)."""

    def __init__(self, params: SecAggParams, *, min_survivors: int | None = None) -> None:
        self.params = params
        self.min_survivors = max(params.threshold, min_survivors or 0)
        if self.min_survivors > params.n:
            raise SecAggAborted(
                Stage.ADVERTISE_KEYS.name,
                f"{params.n} phones sampled but at least {self.min_survivors} must survive",
                {"sampled": params.n, "needed": self.min_survivors},
            )
        self.stage = Stage.ADVERTISE_KEYS
        self.rejections: list[SecAggMessageRejected] = []
        self.aborted: SecAggAborted | None = None
        self._graph = params.graph
        self._sets: dict[Stage, set[int]] = {Stage.ADVERTISE_KEYS: set(params.participants)}
        self._replied: set[int] = set()
        self._ok: set[int] = set()
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._bad_pairs: set[tuple[int, int]] = set()  # (holder, owner) with no usable share
        self._b_shares: dict[int, list[bytes]] = {}
        self._s_shares: dict[int, list[bytes]] = {}
        self._acc = np.zeros(params.vector_len, dtype=word_dtype(params.bits))
        self._result: np.ndarray | None = None

    # ------------------------------------------------------------------ sets
    @property
    def expected(self) -> set[int]:
        """Who is asked in the current stage."""
        return set(self._sets.get(self.stage, set()))

    def participants_at(self, stage: Stage) -> set[int]:
        """``U_(stage)`` as closed so far: who was asked at ``stage`` (U0 = sampled)."""
        return set(self._sets.get(stage, set()))

    @property
    def survivors(self) -> set[int]:
        """``U3``: the phones whose inputs are in the sum (known after Round 2 closes)."""
        return set(self._sets.get(Stage.UNMASKING, set()))

    def counts(self) -> dict[str, int]:
        names = {
            Stage.ADVERTISE_KEYS: "sampled",
            Stage.SHARE_KEYS: "advertised",
            Stage.MASKED_INPUT: "shared",
            Stage.UNMASKING: "masked",
        }
        out = {names[s]: len(u) for s, u in self._sets.items() if s in names}
        if self.stage is not Stage.DONE:
            out["replied"] = len(self._ok)
        out["needed"] = self.min_survivors
        out["threshold"] = self.params.threshold
        return out

    # ------------------------------------------------------------------ outbound
    def requests(self) -> dict[int, ServerMessage]:
        """The current stage's request to every phone still in the round."""
        self._raise_if_aborted()
        p, rid = self.params, self.params.round_id
        targets = sorted(self.expected)
        if self.stage is Stage.ADVERTISE_KEYS:
            req = AdvertiseKeysRequest(params=p)
            return {u: req for u in targets}
        if self.stage is Stage.SHARE_KEYS:
            u1 = self._sets[Stage.SHARE_KEYS]
            return {
                u: ShareKeysRequest(
                    round_id=rid,
                    public_keys={v: self._keys[v] for v in sorted(self._graph[u] & u1)},
                )
                for u in targets
            }
        if self.stage is Stage.MASKED_INPUT:
            u2 = self._sets[Stage.MASKED_INPUT]
            return {
                u: MaskedInputRequest(
                    round_id=rid,
                    ciphertexts={v: self._ciphertexts[v][u] for v in sorted(self._graph[u] & u2)},
                )
                for u in targets
            }
        if self.stage is Stage.UNMASKING:
            u2, u3 = self._sets[Stage.MASKED_INPUT], self._sets[Stage.UNMASKING]
            return {
                u: UnmaskRequest(
                    round_id=rid,
                    survivors=tuple(sorted(self._graph[u] & u3)),
                    dropped=tuple(sorted(self._graph[u] & (u2 - u3))),
                )
                for u in targets
            }
        return {}

    # ------------------------------------------------------------------ inbound
    def reject(
        self,
        sender: int | None,
        reason: RejectReason,
        detail: str,
        *,
        stage: Stage | None = None,
        drop: bool = False,
    ) -> SecAggMessageRejected:
        """Record a rejection; with ``drop`` the sender (if asked in this stage) is treated
        as dropped: it takes no further part in the round."""
        exc = SecAggMessageRejected(sender, (stage or self.stage).name, reason, detail)
        self.rejections.append(exc)
        if drop and sender is not None and sender in self.expected:
            self._replied.add(sender)
            self._ok.discard(sender)
        return exc

    def receive_all(self, messages: Iterable[ClientMessage]) -> list[SecAggMessageRejected]:
        """Feed many replies; returns the rejections instead of raising them."""
        out = []
        for msg in messages:
            try:
                self.receive(msg)
            except SecAggMessageRejected as exc:
                out.append(exc)
        return out

    def receive(self, msg: ClientMessage) -> None:
        """Validate and absorb one reply; raise :class:`SecAggMessageRejected` (recorded)."""
        self._raise_if_aborted()
        sender = getattr(msg, "sender", None)
        if not isinstance(msg, _CLIENT_TYPES):
            raise self.reject(
                None, RejectReason.MALFORMED, f"not a client message: {type(msg).__name__}"
            )
        if not isinstance(sender, int) or sender not in self._graph:
            raise self.reject(
                sender if isinstance(sender, int) else None,
                RejectReason.UNKNOWN_SENDER,
                f"unknown sender {sender!r}",
            )
        if msg.round_id != self.params.round_id:
            raise self.reject(
                sender,
                RejectReason.WRONG_ROUND,
                f"client {sender} sent a message for round {msg.round_id!r}, this is round "
                f"{self.params.round_id}",
            )
        if msg.stage != self.stage:
            raise self.reject(
                sender,
                RejectReason.WRONG_STAGE,
                f"client {sender} sent a {msg.stage.name} message during {self.stage.name}",
            )
        if sender not in self.expected:
            raise self.reject(
                sender, RejectReason.NOT_EXPECTED, f"client {sender} is no longer in the round"
            )
        if sender in self._replied:
            raise self.reject(
                sender, RejectReason.DUPLICATE, f"client {sender} already replied in this stage"
            )
        try:
            problem = self._absorb(msg)
        except Exception as exc:  # never let a client crash the server
            problem = (RejectReason.MALFORMED, f"{type(exc).__name__}: {exc}")
        if problem is not None:
            raise self.reject(sender, problem[0], problem[1], drop=True)
        self._replied.add(sender)
        self._ok.add(sender)

    def _absorb(self, msg: ClientMessage) -> tuple[RejectReason, str] | None:
        if isinstance(msg, AdvertiseKeys):
            return self._absorb_keys(msg)
        if isinstance(msg, ShareKeys):
            return self._absorb_shares(msg)
        if isinstance(msg, MaskedInput):
            return self._absorb_masked(msg)
        return self._absorb_unmask(msg)

    def _absorb_keys(self, msg: AdvertiseKeys) -> tuple[RejectReason, str] | None:
        try:
            keys.check_public_key(msg.c_pk)
            keys.check_public_key(msg.s_pk)
        except (ValueError, TypeError) as exc:
            return RejectReason.BAD_KEY, f"invalid public key: {exc}"
        taken = {k for pair in self._keys.values() for k in pair}
        if msg.c_pk == msg.s_pk or msg.c_pk in taken or msg.s_pk in taken:
            return (
                RejectReason.BAD_KEY,
                "public keys must be distinct from each other and all others",
            )
        self._keys[msg.sender] = (msg.c_pk, msg.s_pk)
        return None

    def _absorb_shares(self, msg: ShareKeys) -> tuple[RejectReason, str] | None:
        want = self._graph[msg.sender] & self._sets[Stage.SHARE_KEYS]
        got = set(msg.ciphertexts)
        if got - want:
            return RejectReason.WRONG_RECIPIENTS, f"bundles for non-neighbours {sorted(got - want)}"
        if got != want:
            return (
                RejectReason.WRONG_SHARE_COUNT,
                f"{len(got)} bundles, expected one for each of its {len(want)} neighbours",
            )
        for v, ct in msg.ciphertexts.items():
            if not isinstance(ct, bytes) or len(ct) != BUNDLE_BYTES:
                return RejectReason.MALFORMED, f"bundle for {v} is not {BUNDLE_BYTES} bytes"
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)
        return None

    def _absorb_masked(self, msg: MaskedInput) -> tuple[RejectReason, str] | None:
        y = msg.masked
        if not isinstance(y, np.ndarray) or y.ndim != 1 or y.shape[0] != self.params.vector_len:
            shape = getattr(y, "shape", None)
            return (
                RejectReason.WRONG_LENGTH,
                f"vector of shape {shape}, expected ({self.params.vector_len},)",
            )
        if y.dtype != self._acc.dtype:
            return RejectReason.MALFORMED, f"vector dtype {y.dtype}, expected {self._acc.dtype}"
        if (
            self.params.bits < y.dtype.itemsize * 8
            and y.size
            and int(y.max()) > self.params.modulus_mask
        ):
            return RejectReason.OUT_OF_RANGE, f"values ≥ 2^{self.params.bits}"
        peers = self._graph[msg.sender] & self._sets[Stage.MASKED_INPUT]
        bad = set(msg.bad_ciphertexts)
        if not bad <= peers or len(bad) != len(msg.bad_ciphertexts):
            return RejectReason.MALFORMED, "bad-bundle report names non-neighbours or repeats"
        np.add(self._acc, y, out=self._acc)
        for v in sorted(bad):
            self._bad_pairs.add((msg.sender, v))
            self.reject(
                v,
                RejectReason.BAD_CIPHERTEXT,
                f"bundle {v}→{msg.sender} failed authentication at {msg.sender}; "
                f"{msg.sender} holds no share of {v}",
                stage=Stage.SHARE_KEYS,
            )
        return None

    def _absorb_unmask(self, msg: Unmask) -> tuple[RejectReason, str] | None:
        u = msg.sender
        u2, u3 = self._sets[Stage.MASKED_INPUT], self._sets[Stage.UNMASKING]
        nb = self._graph[u]
        want_b = {v for v in nb & u3 if (u, v) not in self._bad_pairs}
        want_s = {v for v in nb & (u2 - u3) if (u, v) not in self._bad_pairs}
        for label, got, want in (("b", msg.b_shares, want_b), ("s", msg.s_shares, want_s)):
            if set(got) - want:
                return (
                    RejectReason.WRONG_RECIPIENTS,
                    f"{label}-shares of unrequested {sorted(set(got) - want)}",
                )
            if set(got) != want:
                return (
                    RejectReason.WRONG_SHARE_COUNT,
                    f"{len(got)} {label}-shares, expected {len(want)}",
                )
            for v, share in got.items():
                try:
                    x, _ = shamir.decode_share(share, SEED_BYTES)
                except (shamir.ShamirError, TypeError) as exc:
                    return RejectReason.BAD_SHARE, f"{label}-share of {v}: {exc}"
                if x != u:
                    return RejectReason.BAD_SHARE, f"{label}-share of {v} has x={x}, not the sender"
        for v, share in msg.b_shares.items():
            self._b_shares.setdefault(v, []).append(share)
        for v, share in msg.s_shares.items():
            self._s_shares.setdefault(v, []).append(share)
        return None

    # ------------------------------------------------------------------ stage close
    def _abort(self, reason: str, **extra: int) -> SecAggAborted:
        counts = self.counts()
        counts.update(extra)
        self.aborted = SecAggAborted(self.stage.name, reason, counts)
        self._acc = np.zeros(0, dtype=self._acc.dtype)  # nothing is output
        return self.aborted

    def _raise_if_aborted(self) -> None:
        if self.aborted is not None:
            raise self.aborted

    def _prune(self, alive: set[int]) -> set[int]:
        """Drop phones with fewer than t neighbours alive (their secrets could not be
        rebuilt); repeat until stable."""
        t = self.params.threshold
        alive = set(alive)
        while True:
            weak = {u for u in alive if len(self._graph[u] & alive) < t}
            if not weak:
                return alive
            alive -= weak

    def close_stage(self) -> None:
        """End the current stage: fix the next participant set, check thresholds, advance."""
        self._raise_if_aborted()
        ok = set(self._ok)
        n_ok = len(ok)
        if self.stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS):
            ok = self._prune(ok)
        if self.stage is not Stage.UNMASKING and len(ok) < self.min_survivors:
            raise self._abort(
                f"only {len(ok)} phones can continue ({n_ok} replied), at least "
                f"{self.min_survivors} needed",
                continuing=len(ok),
            )
        if self.stage is Stage.MASKED_INPUT:
            self._check_recoverable(ok)
        if self.stage is Stage.UNMASKING:
            self._unmask(ok)
            self.stage = Stage.DONE
            return
        self.stage = Stage(self.stage + 1)
        self._sets[self.stage] = ok
        self._replied, self._ok = set(), set()
        if self.stage is Stage.UNMASKING:  # ciphertexts are no longer needed
            self._ciphertexts = {}

    def _holders(self, owner: int, u3: set[int]) -> int:
        return sum(1 for w in self._graph[owner] & u3 if (w, owner) not in self._bad_pairs)

    def _check_recoverable(self, u3: set[int]) -> None:
        t = self.params.threshold
        for v in sorted(self._sets[Stage.MASKED_INPUT]):
            h = self._holders(v, u3)
            if h < t:
                what = "b" if v in u3 else "s^SK"
                raise self._abort(
                    f"the {what} of phone {v} is shared with only {h} surviving neighbours, "
                    f"t={t} are needed to unmask",
                    continuing=len(u3),
                )

    def _unmask(self, u4: set[int]) -> None:
        p, t = self.params, self.params.threshold
        u2, u3 = self._sets[Stage.MASKED_INPUT], self._sets[Stage.UNMASKING]
        secrets: dict[int, bytes] = {}
        for v in sorted(u2):
            kind, pool = ("b", self._b_shares) if v in u3 else ("s^SK", self._s_shares)
            shares = pool.get(v, [])
            if len(shares) < t:
                raise self._abort(
                    f"only {len(shares)} shares of the {kind} of phone {v} arrived, t={t} needed",
                    unmasked=len(u4),
                )
            try:
                secrets[v] = shamir.combine(shares, t, SEED_BYTES)
            except shamir.ShamirError as exc:
                raise self._abort(
                    f"shares of the {kind} of phone {v}: {exc}", unmasked=len(u4)
                ) from exc
            if v not in u3 and keys.public_from_private(secrets[v]) != self._keys[v][1]:
                raise self._abort(
                    f"rebuilt s^SK of phone {v} does not match its s^PK", unmasked=len(u4)
                )
        expander = MaskExpander(p.vector_len, p.bits)
        acc = self._acc
        for v in sorted(u3):
            expander.subtract(acc, secrets[v])
        for v in sorted(u2 - u3):
            s_sk = keys.load_private(secrets[v])
            for w in sorted(self._graph[v] & u3):
                seed = keys.mask_seed(
                    s_sk, self._keys[w][1], salt=p.round_seed, round_id=p.round_id, u=v, v=w
                )
                # w added +PRG(s_{w,v}) if w < v, else −PRG(s_{w,v}); take it out again.
                if w < v:
                    expander.subtract(acc, seed)
                else:
                    expander.add(acc, seed)
        self._result = from_ring(acc, p.bits)
        self._b_shares, self._s_shares = {}, {}

    # ------------------------------------------------------------------ output
    def result(self) -> np.ndarray:
        """The exact signed sum of the survivors' vectors (int64)."""
        self._raise_if_aborted()
        if self._result is None:
            raise SecAggError(f"the round is not finished (stage {self.stage.name})")
        return self._result.copy()
