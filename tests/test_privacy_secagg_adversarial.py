"""Malformed, duplicate, stray and forged messages: rejected with a reason, never a crash."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.privacy.secagg import (
    RejectReason,
    SecAggClient,
    SecAggMessageRejected,
    SecAggParams,
    SecAggServer,
    Stage,
    codec,
)
from fedlora.privacy.secagg.messages import (
    AdvertiseKeys,
    AdvertiseKeysRequest,
    ClientMessage,
    MaskedInput,
    MaskedInputRequest,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
)

SEED = bytes(range(32))
Edit = Callable[[ClientMessage], ClientMessage | None]


class Round:
    """Drives clients and server stage by stage so a test can forge any message."""

    def __init__(
        self,
        n: int = 8,
        *,
        degree: int | None = None,
        threshold: int | None = None,
        length: int = 16,
        bits: int = 32,
    ) -> None:
        self.ids = list(range(1, n + 1))
        self.params = SecAggParams.create(
            1,
            self.ids,
            length,
            bits=bits,
            coordinate_bound=1000,
            degree=degree,
            threshold=threshold,
            round_seed=SEED,
        )
        self.server = SecAggServer(self.params)
        self.clients = {u: SecAggClient(u) for u in self.ids}
        rng = np.random.default_rng(4)
        self.xs = {u: rng.integers(-1000, 1001, length) for u in self.ids}
        self.replies: dict[int, ClientMessage] = {}

    def step(
        self, edits: dict[int, Edit] | None = None, extra: tuple[object, ...] = ()
    ) -> list[SecAggMessageRejected]:
        """Run the current stage; ``edits[u]`` rewrites u's reply (None: withheld)."""
        edits = edits or {}
        rejected = []
        self.replies = {}
        for u, req in self.server.requests().items():
            try:
                reply = self.clients[u].handle(req, self.xs[u])
            except SecAggMessageRejected as exc:
                rejected.append(exc)
                continue
            self.replies[u] = reply
            out = edits[u](reply) if u in edits else reply
            if out is not None:
                rejected += self.server.receive_all([out])
        rejected += self.server.receive_all(extra)  # type: ignore[arg-type]
        self.server.close_stage()
        return rejected

    def finish(self) -> np.ndarray:
        while self.server.stage is not Stage.DONE:
            self.step()
        total = self.server.result()
        np.testing.assert_array_equal(total, sum(self.xs[u] for u in self.server.survivors))
        return total


def reasons(rej: list[SecAggMessageRejected]) -> set[tuple[int | None, RejectReason]]:
    return {(r.sender, r.reason) for r in rej}


# ---------------------------------------------------------------------------- envelope checks
def test_unknown_sender_wrong_round_wrong_stage_duplicate() -> None:
    r = Round()
    stranger = AdvertiseKeys(round_id=1, sender=999, c_pk=b"a" * 32, s_pk=b"b" * 32)
    rej = r.step(extra=(stranger,))
    assert (999, RejectReason.UNKNOWN_SENDER) in reasons(rej)
    adv = r.replies[2]
    share_req = r.server.requests()[3]
    rej = r.step(
        edits={3: lambda m: dataclasses.replace(m, round_id=2)},  # wrong round → 3 is dropped
        extra=(adv, dataclasses.replace(adv, sender=4)),  # stage-0 message in stage 1
    )
    assert isinstance(share_req, ShareKeysRequest)
    got = reasons(rej)
    assert (3, RejectReason.WRONG_ROUND) in got
    assert (2, RejectReason.WRONG_STAGE) in got and (4, RejectReason.WRONG_STAGE) in got
    assert 3 not in r.server.participants_at(Stage.MASKED_INPUT)
    dup_rej: list[SecAggMessageRejected] = []

    def duplicate(m: ClientMessage) -> ClientMessage:
        dup_rej.extend(r.server.receive_all([m]))
        return m  # the same reply delivered a second time

    rej = r.step(edits={5: duplicate})
    assert (5, RejectReason.DUPLICATE) in reasons(rej)
    assert 5 in r.server.survivors  # the first copy counts, the duplicate is ignored
    r.finish()


def test_not_expected_after_dropping_out() -> None:
    r = Round()
    r.step(edits={6: lambda m: None})  # 6 never advertised keys
    late = AdvertiseKeys(round_id=1, sender=6, c_pk=b"x" * 32, s_pk=b"y" * 32)
    fake_share = ShareKeys(round_id=1, sender=6, ciphertexts={})
    rej = r.step(extra=(fake_share, late))
    got = reasons(rej)
    assert (6, RejectReason.NOT_EXPECTED) in got and (6, RejectReason.WRONG_STAGE) in got
    r.finish()
    assert 6 not in r.server.survivors


def test_non_messages_are_malformed() -> None:
    r = Round()
    rej = r.step(extra=("junk", 42, None))
    assert [x.reason for x in rej] == [RejectReason.MALFORMED] * 3
    r.finish()


# ---------------------------------------------------------------------------- Round 0
@pytest.mark.parametrize(
    "edit",
    [
        lambda m: dataclasses.replace(m, c_pk=m.c_pk[:31]),
        lambda m: dataclasses.replace(m, s_pk=m.c_pk),
        lambda m: dataclasses.replace(m, c_pk="not bytes"),
    ],
)
def test_bad_public_keys(edit: Edit) -> None:
    r = Round()
    rej = r.step(edits={2: edit})
    assert reasons(rej) == {(2, RejectReason.BAD_KEY)}
    r.finish()
    assert 2 not in r.server.survivors


def test_copied_public_key_is_refused() -> None:
    r = Round()
    first: dict[str, bytes] = {}

    def remember(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, AdvertiseKeys)
        first["c"] = m.c_pk
        return m

    rej = r.step(edits={1: remember, 2: lambda m: dataclasses.replace(m, c_pk=first["c"])})
    assert reasons(rej) == {(2, RejectReason.BAD_KEY)}
    r.finish()


# ---------------------------------------------------------------------------- Round 1
def test_wrong_share_counts_and_recipients() -> None:
    r = Round(12, degree=4, threshold=2)
    r.step()
    outsider = next(v for v in r.ids if v not in r.params.graph[1] and v != 1)

    def drop_one(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, ShareKeys)
        cts = dict(m.ciphertexts)
        cts.pop(min(cts))
        return dataclasses.replace(m, ciphertexts=cts)

    def misaddress(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, ShareKeys)
        cts = dict(m.ciphertexts)
        cts[outsider] = next(iter(cts.values()))
        return dataclasses.replace(m, ciphertexts=cts)

    def truncate(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, ShareKeys)
        return dataclasses.replace(m, ciphertexts={v: c[:-1] for v, c in m.ciphertexts.items()})

    rej = r.step(edits={3: drop_one, 1: misaddress, 7: truncate})
    assert reasons(rej) == {
        (3, RejectReason.WRONG_SHARE_COUNT),
        (1, RejectReason.WRONG_RECIPIENTS),
        (7, RejectReason.MALFORMED),
    }
    r.finish()
    assert {1, 3, 7}.isdisjoint(r.server.survivors)


def test_bad_ciphertext_is_reported_and_round_survives() -> None:
    r = Round(10, degree=6, threshold=3)
    r.step()

    def corrupt(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, ShareKeys)
        cts = dict(m.ciphertexts)
        victim = min(cts)
        flipped = bytearray(cts[victim])
        flipped[-1] ^= 1  # break the AES-GCM tag of one bundle
        cts[victim] = bytes(flipped)
        return dataclasses.replace(m, ciphertexts=cts)

    r.step(edits={4: corrupt})
    rej = r.step()  # Round 2: the recipient cannot open 4's bundle and reports it
    assert (4, RejectReason.BAD_CIPHERTEXT) in reasons(r.server.rejections)
    assert not rej
    reporter = next(
        u for u, m in r.replies.items() if isinstance(m, MaskedInput) and m.bad_ciphertexts
    )
    assert r.replies[reporter].bad_ciphertexts == (4,)  # type: ignore[union-attr]
    r.finish()  # 4 is still a survivor: its b_4 comes from its other neighbours
    assert 4 in r.server.survivors


# ---------------------------------------------------------------------------- Round 2
@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: dataclasses.replace(m, masked=m.masked[:-1]), RejectReason.WRONG_LENGTH),
        (
            lambda m: dataclasses.replace(m, masked=m.masked.reshape(2, -1)),
            RejectReason.WRONG_LENGTH,
        ),
        (lambda m: dataclasses.replace(m, masked=list(m.masked)), RejectReason.WRONG_LENGTH),
        (
            lambda m: dataclasses.replace(m, masked=m.masked.astype(np.uint64)),
            RejectReason.MALFORMED,
        ),
        (lambda m: dataclasses.replace(m, bad_ciphertexts=(999,)), RejectReason.MALFORMED),
    ],
)
def test_bad_masked_vectors(edit: Edit, reason: RejectReason) -> None:
    r = Round()
    r.step()
    r.step()
    rej = r.step(edits={5: edit})
    assert reasons(rej) == {(5, reason)}
    r.finish()  # 5 is treated as dropped: its pairwise masks are removed via s_5^SK
    assert 5 not in r.server.survivors and len(r.server.survivors) == 7


def test_out_of_range_words() -> None:
    r = Round(bits=16)
    r.step()
    r.step()

    def big(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, MaskedInput)
        y = m.masked.copy()
        y[0] = 1 << 16
        return dataclasses.replace(m, masked=y)

    assert reasons(r.step(edits={2: big})) == {(2, RejectReason.OUT_OF_RANGE)}
    r.finish()


# ---------------------------------------------------------------------------- Round 3
@pytest.mark.parametrize("kind", ["wrong_x", "garbage", "missing", "extra"])
def test_bad_unmask_replies_lose_only_their_shares(kind: str) -> None:
    r = Round()
    for _ in range(3):
        r.step()

    def edit(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, Unmask)
        b = dict(m.b_shares)
        v = min(b)
        if kind == "wrong_x":
            b[v] = (99).to_bytes(8, "big") + b[v][8:]
        elif kind == "garbage":
            b[v] = b"\x00" * 5
        elif kind == "missing":
            del b[v]
        else:
            b[1000] = b[v]
        return dataclasses.replace(m, b_shares=b)

    expected = {
        "wrong_x": RejectReason.BAD_SHARE,
        "garbage": RejectReason.BAD_SHARE,
        "missing": RejectReason.WRONG_SHARE_COUNT,
        "extra": RejectReason.WRONG_RECIPIENTS,
    }[kind]
    assert reasons(r.step(edits={3: edit})) == {(3, expected)}
    total = r.server.result()
    np.testing.assert_array_equal(total, sum(r.xs.values()))  # 3's input still counts


def test_forged_share_is_detected_not_used() -> None:
    """A share whose value is altered (but well-formed) makes reconstruction inconsistent:
    the server aborts instead of outputting a wrong sum."""
    r = Round(5)
    for _ in range(3):
        r.step()

    def forge(m: ClientMessage) -> ClientMessage:
        assert isinstance(m, Unmask)
        b = dict(m.b_shares)
        v = min(b)
        b[v] = b[v][:-1] + bytes([b[v][-1] ^ 1])
        return dataclasses.replace(m, b_shares=b)

    from fedlora.privacy.secagg import SecAggAborted

    with pytest.raises(SecAggAborted, match="inconsistent"):
        r.step(edits={2: forge})


# ---------------------------------------------------------------------------- phone side
def test_phone_refuses_bad_requests() -> None:
    params = SecAggParams.create(
        1,
        list(range(1, 13)),
        4,
        bits=32,
        coordinate_bound=9,
        degree=4,
        threshold=3,
        round_seed=SEED,
    )
    outsider = next(v for v in params.participants if v not in params.graph[1] and v != 1)
    other = SecAggParams.create(1, [2, 3, 4], 4, bits=32, coordinate_bound=9)

    def fresh() -> SecAggClient:
        c = SecAggClient(1)
        c.advertise_keys(AdvertiseKeysRequest(params))
        return c

    cases: list[tuple[SecAggClient, object, RejectReason]] = [
        (SecAggClient(1), AdvertiseKeysRequest(other), RejectReason.BAD_PARAMS),
        (SecAggClient(1), ShareKeysRequest(1, {}), RejectReason.WRONG_STAGE),
        (fresh(), AdvertiseKeysRequest(params), RejectReason.WRONG_STAGE),
        (fresh(), ShareKeysRequest(2, {}), RejectReason.WRONG_ROUND),
        (
            fresh(),
            ShareKeysRequest(1, {outsider: (b"a" * 32, b"b" * 32)}),
            RejectReason.WRONG_RECIPIENTS,
        ),
        (
            fresh(),
            ShareKeysRequest(1, {v: (b"a" * 32, b"b" * 32) for v in list(params.graph[1])[:2]}),
            RejectReason.TOO_FEW_NEIGHBOURS,
        ),
        (fresh(), MaskedInputRequest(1, {}), RejectReason.WRONG_STAGE),
    ]
    for client, request, reason in cases:
        with pytest.raises(SecAggMessageRejected) as info:
            client.handle(request, np.zeros(4, dtype=np.int64))  # type: ignore[arg-type]
        assert info.value.reason == reason, (request, info.value)
        assert client.stage is Stage.DONE  # a phone that refused takes no further part


def test_phone_never_reveals_both_secrets_of_a_neighbour() -> None:
    r = Round(5)
    for _ in range(3):
        r.step()
    c = r.clients[1]
    nb = sorted(c.mask_peers)
    with pytest.raises(SecAggMessageRejected, match="both survived and dropped"):
        c.unmask(UnmaskRequest(1, survivors=(nb[0],), dropped=(nb[0],)))
    c2 = r.clients[2]
    c2.unmask(UnmaskRequest(1, survivors=tuple(c2.mask_peers), dropped=()))
    with pytest.raises(SecAggMessageRejected, match=r"wrong_stage"):
        c2.unmask(UnmaskRequest(1, survivors=(), dropped=tuple(c2.mask_peers)))


def test_phone_state_round_trips_through_bytes() -> None:
    r = Round(5)
    r.step()
    r.step()
    for u, c in r.clients.items():
        again = SecAggClient.from_bytes(c.to_bytes())
        assert again == c, u
    r.clients = {u: SecAggClient.from_bytes(c.to_bytes()) for u, c in r.clients.items()}
    r.finish()


# ---------------------------------------------------------------------------- fuzzing
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), sender=st.integers(0, 20))
def test_random_bytes_never_crash_the_server(data: bytes, sender: int) -> None:
    r = Round(5, length=4)
    try:
        msg = codec.decode_client_message(data, sender)
    except codec.CodecError:
        return
    r.server.receive_all([msg])


@settings(max_examples=80, deadline=None)
@given(stage=st.integers(0, 3), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_bit_flips_in_valid_replies_never_crash_the_server(stage: int, pos: int, bit: int) -> None:
    """A corrupted reply is rejected (exact sum over the rest) or aborts cleanly. If the flip
    yields another *valid* message (e.g. a different public key), phone 2 behaved like a
    lying client — which secure aggregation cannot prevent; then only "no crash" holds."""
    from fedlora.privacy.secagg import SecAggAborted

    r = Round(5, length=4)
    for _ in range(stage):
        r.step()
    accepted_forgery = False

    def flip(m: ClientMessage) -> ClientMessage | None:
        nonlocal accepted_forgery
        raw = bytearray(codec.encode(m))
        raw[pos % len(raw)] ^= 1 << bit
        try:
            forged = codec.decode_client_message(bytes(raw), m.sender)
        except codec.CodecError:
            return None
        before = len(r.server.rejections)
        r.server.receive_all([forged])
        accepted_forgery = len(r.server.rejections) == before
        return None

    try:
        r.step(edits={2: flip})
        while r.server.stage is not Stage.DONE:
            r.step()
    except SecAggAborted:
        return
    total = r.server.result()
    if not accepted_forgery:
        np.testing.assert_array_equal(total, sum(r.xs[u] for u in r.server.survivors))


def test_codec_round_trips_every_message() -> None:
    r = Round(5, length=3)
    sent: list[object] = []
    while r.server.stage is not Stage.DONE:
        sent += list(r.server.requests().values())
        r.step()
        sent += list(r.replies.values())
    for m in sent:
        data = codec.encode(m)  # type: ignore[arg-type]
        back = (
            codec.decode_client_message(data, m.sender)  # type: ignore[attr-defined]
            if hasattr(m, "sender")
            else codec.decode_server_message(data)
        )
        if isinstance(m, MaskedInput):
            assert isinstance(back, MaskedInput)
            np.testing.assert_array_equal(back.masked, m.masked)
            assert back.bad_ciphertexts == m.bad_ciphertexts
        else:
            assert back == m
    with pytest.raises(codec.CodecError, match="trailing"):
        codec.decode_server_message(codec.encode(sent[0]) + b"\x00")  # type: ignore[arg-type]
