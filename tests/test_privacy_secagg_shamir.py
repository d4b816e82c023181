"""Shamir sharing over GF(2^127 − 1), the AES-CTR PRG, and the key/bundle primitives."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.privacy.secagg import keys, shamir
from fedlora.privacy.secagg.prg import MaskExpander, prg, word_dtype


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    holders=st.sets(st.integers(1, 2**64 - 1), min_size=1, max_size=12),
    data=st.data(),
)
def test_any_t_shares_rebuild_the_secret(
    secret: bytes, holders: set[int], data: st.DataObject
) -> None:
    ids = sorted(holders)
    t = data.draw(st.integers(1, len(ids)))
    shares = shamir.split(secret, t, ids)
    chosen = data.draw(st.lists(st.sampled_from(ids), min_size=t, max_size=len(ids), unique=True))
    assert shamir.combine([shares[h] for h in chosen], t, len(secret)) == secret


def test_share_layout_and_field() -> None:
    assert shamir.PRIME == 2**127 - 1
    shares = shamir.split(bytes(32), 2, [7, 8, 9])
    assert all(len(s) == shamir.share_size(32) == 8 + 3 * 16 for s in shares.values())
    x, ys = shamir.decode_share(shares[8], 32)
    assert x == 8 and len(ys) == 3 and all(0 <= y < shamir.PRIME for y in ys)


def test_inconsistent_or_bad_shares_are_detected() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    ok = [shares[i] for i in (1, 2, 3, 4, 5)]
    bad = bytearray(shares[5])
    bad[-1] ^= 1
    with pytest.raises(shamir.ShamirError, match="inconsistent"):
        shamir.combine([*ok[:4], bytes(bad)], 3, 32)
    with pytest.raises(shamir.ShamirError, match="same x"):
        shamir.combine([ok[0], ok[0], ok[1]], 3, 32)
    with pytest.raises(shamir.ShamirError):
        shamir.combine([ok[0][:-1], ok[1], ok[2]], 3, 32)
    with pytest.raises(shamir.ShamirError):
        shamir.split(secret, 4, [1, 2, 3])
    with pytest.raises(shamir.ShamirError):
        shamir.split(secret, 1, [0, 1])


def test_t_minus_one_shares_of_different_secrets_can_coincide() -> None:
    """Below the threshold the shares carry no information: with t = 2 a single share is a
    uniformly random field element whatever the secret (checked on its distribution)."""
    firsts = [
        shamir.decode_share(shamir.split(bytes(32), 2, [3, 4])[3], 32)[1][0] for _ in range(400)
    ]
    top_bits = np.array([f >> 123 for f in firsts])  # top 4 of 127 bits
    counts = np.bincount(top_bits, minlength=16)
    assert counts.min() > 5  # spread over the whole field, not near the secret (0)


def test_prg_is_deterministic_uniform_and_vectorized() -> None:
    seed = bytes(range(32))
    a = prg(seed, 10_000, 32)
    np.testing.assert_array_equal(a, prg(seed, 10_000, 32))
    assert a.dtype == np.uint32
    assert not np.array_equal(a, prg(bytes(32), 10_000, 32))
    b = prg(seed, 10_000, 20)
    assert int(b.max()) < 1 << 20
    np.testing.assert_array_equal(b, a & np.uint32((1 << 20) - 1))  # same stream, reduced
    assert word_dtype(33) == np.uint64 and word_dtype(8) == np.uint32
    exp = MaskExpander(5, 64)
    acc = np.zeros(5, dtype=np.uint64)
    exp.add(acc, seed)
    exp.subtract(acc, seed)
    assert not acc.any()
    with pytest.raises(ValueError):
        exp.expand(b"short")


def test_pairwise_seeds_agree_and_bundles_authenticate() -> None:
    u, v = keys.KeyPair.generate(), keys.KeyPair.generate()
    common = dict(salt=bytes(32), round_id=9)
    s_uv = keys.mask_seed(u.sk, v.pk, u=1, v=2, **common)
    assert s_uv == keys.mask_seed(v.sk, u.pk, u=2, v=1, **common)
    assert s_uv != keys.mask_seed(u.sk, v.pk, u=1, v=3, **common)
    k = keys.encryption_key(u.sk, v.pk, u=1, v=2, **common)
    assert k == keys.encryption_key(v.sk, u.pk, u=2, v=1, **common) != s_uv
    ct = keys.encrypt_bundle(k, b"shares", round_id=9, src=1, dst=2)
    assert keys.decrypt_bundle(k, ct, round_id=9, src=1, dst=2) == b"shares"
    for kwargs in ({"round_id": 8, "src": 1, "dst": 2}, {"round_id": 9, "src": 2, "dst": 1}):
        with pytest.raises(keys.CiphertextError):
            keys.decrypt_bundle(k, ct, **kwargs)
    flipped = bytearray(ct)
    flipped[20] ^= 0x40
    with pytest.raises(keys.CiphertextError):
        keys.decrypt_bundle(k, bytes(flipped), round_id=9, src=1, dst=2)
    with pytest.raises(keys.CiphertextError):
        keys.decrypt_bundle(k, ct[:10], round_id=9, src=1, dst=2)
    assert keys.public_from_private(u.sk) == u.pk
    with pytest.raises(ValueError):
        keys.check_public_key(b"\x00" * 31)


def test_every_t_subset_of_a_small_sharing() -> None:
    secret = b"\xff" * 32
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for combo in itertools.combinations(shares.values(), 3):
        assert shamir.combine(list(combo), 3, 32) == secret
