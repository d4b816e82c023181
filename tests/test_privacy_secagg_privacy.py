"""What the server sees: uniform masked vectors and a transcript free of plaintext."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedlora.privacy.secagg import SecAggParams, Stage, keys, run_loopback, shamir, to_ring
from fedlora.privacy.secagg.client import SecAggClient
from fedlora.privacy.secagg.messages import (
    AdvertiseKeysRequest,
    MaskedInputRequest,
    ShareKeysRequest,
)


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _limit(df: int) -> float:
    """Mean + 7 standard deviations of χ²(df): a false alarm is practically impossible."""
    return df + 7 * np.sqrt(2 * df)


def _single_masked_vector(x: np.ndarray, bits: int) -> np.ndarray:
    """Round 0–2 of one phone among three, returning its y_u."""
    ids = [11, 22, 33]
    params = SecAggParams.create(5, ids, x.shape[0], bits=bits, coordinate_bound=1 << (bits - 3))
    clients = {u: SecAggClient(u) for u in ids}
    adv = {u: c.advertise_keys(AdvertiseKeysRequest(params)) for u, c in clients.items()}
    shares = {
        u: c.share_keys(ShareKeysRequest(5, {v: (adv[v].c_pk, adv[v].s_pk) for v in ids if v != u}))
        for u, c in clients.items()
    }
    req = MaskedInputRequest(5, {v: shares[v].ciphertexts[22] for v in ids if v != 22})
    return clients[22].masked_input(req, x).masked


@pytest.mark.parametrize("bits", [32, 24, 64])
def test_a_masked_vector_is_statistically_uniform(bits: int) -> None:
    n = 1 << 15
    x = np.zeros(n, dtype=np.int64)
    x[::2] = 1000  # a very structured input
    y = _single_masked_vector(x, bits)
    assert y.dtype == (np.uint32 if bits <= 32 else np.uint64)
    # per-byte histogram of the low bytes of every word (the significant bytes of Z_(2^b))
    nbytes = (bits + 7) // 8
    raw = y.view(np.uint8).reshape(n, y.dtype.itemsize)[:, :nbytes]
    assert _chi_square(np.bincount(raw.ravel(), minlength=256)) < _limit(255)
    # the top 4 bits of every word of Z_(2^b)
    top = (y.astype(np.uint64) >> np.uint64(bits - 4)).astype(np.int64)
    assert _chi_square(np.bincount(top, minlength=16)) < _limit(15)
    # …and the test has power: the unmasked ring vector fails it badly
    plain = to_ring(x, bits).view(np.uint8).reshape(n, y.dtype.itemsize)[:, :nbytes]
    assert _chi_square(np.bincount(plain.ravel(), minlength=256)) > 100 * _limit(255)


def test_masked_vectors_of_two_rounds_are_independent() -> None:
    x = np.arange(4096, dtype=np.int64)
    y1, y2 = _single_masked_vector(x, 32), _single_masked_vector(x, 32)
    assert np.count_nonzero(y1 == y2) < 5  # fresh keys and b_u per round
    diff = (y1 - y2).view(np.uint8)
    assert _chi_square(np.bincount(diff, minlength=256)) < _limit(255)


def _windows(data: bytes, width: int, step: int) -> list[bytes]:
    return [data[i : i + width] for i in range(0, len(data) - width + 1, step)]


def test_server_transcript_holds_no_plaintext_input_or_secret() -> None:
    ids = [101, 202, 303, 404, 505, 606, 707]
    length = 512
    rng = np.random.default_rng(9)
    xs = {u: rng.integers(-30_000, 30_001, length, dtype=np.int64) for u in ids}
    params = SecAggParams.create(3, ids, length, bits=32, coordinate_bound=30_000)
    # 707 vanishes after Round 1 so its s^SK is rebuilt: still no raw key may be *sent*
    res = run_loopback(params, xs, drop_before={707: Stage.MASKED_INPUT})
    transcript = b"".join(res.transcript)
    assert len(res.transcript) == 4 * 6 + 2  # 6 phones × 4 stages + 707's first two replies

    needles: list[bytes] = []
    for x in xs.values():
        for encoding in (
            x.astype("<i8").tobytes(),
            x.astype("<i4").tobytes(),
            x.astype(">i4").tobytes(),
            to_ring(x, 32).tobytes(),
            x.astype("<i2").tobytes(),
        ):
            needles += _windows(encoding, 16, 64)
    for u, c in res.clients.items():
        assert c.c_keys is not None and c.s_keys is not None
        needles += [c.b_seed, c.c_keys.sk, c.s_keys.sk]
        for v, (c_pk, s_pk) in c.peer_keys.items():
            common = dict(salt=params.round_seed, round_id=3, u=u, v=v)
            needles.append(keys.mask_seed(c.s_keys.sk, s_pk, **common))
            needles.append(keys.encryption_key(c.c_keys.sk, c_pk, **common))
        # the secrets' Shamir field elements themselves (not shares) never travel either
        for secret in (c.b_seed, c.s_keys.sk):
            needles += [
                secret[i : i + 15] for i in range(0, 32, 15) if len(secret[i : i + 15]) == 15
            ]
    assert needles
    leaked = [n.hex() for n in needles if n in transcript]
    assert not leaked, f"plaintext found in the server transcript: {leaked[:3]}"
    # sanity: the search would find a value if it were there
    assert _windows(res.transcript[0], 16, 16)[0] in transcript
    # and the sum is still exact
    np.testing.assert_array_equal(res.total, sum(xs[u] for u in ids if u != 707))


def test_no_plaintext_metadata_fields_in_client_messages() -> None:
    """Client messages carry only keys, ciphertexts, masked words and shares."""
    from fedlora.privacy.secagg import messages

    allowed = {
        "AdvertiseKeys": {"round_id", "sender", "c_pk", "s_pk"},
        "ShareKeys": {"round_id", "sender", "ciphertexts"},
        "MaskedInput": {"round_id", "sender", "masked", "bad_ciphertexts"},
        "Unmask": {"round_id", "sender", "b_shares", "s_shares"},
    }
    for name, names in allowed.items():
        cls = getattr(messages, name)
        assert {f.name for f in dataclasses.fields(cls)} == names


def test_fewer_than_t_shares_are_refused() -> None:
    secret = bytes(range(32))
    holders = [5, 9, 13, 17]
    shares = shamir.split(secret, 3, holders)
    two = [shares[5], shares[9]]
    with pytest.raises(shamir.ShamirError):
        shamir.combine(two, 3, 32)
    assert shamir.combine([*two, shares[13]], 3, 32) == secret
