"""SecAgg+ end to end in one process: exact sums, dropouts, aborts, headroom, ranks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedlora.privacy.secagg import (
    ContributionLayout,
    SecAggAborted,
    SecAggError,
    SecAggHeadroomError,
    SecAggInputError,
    SecAggIntegrityError,
    SecAggParams,
    SecAggParamsError,
    SecAggServer,
    Stage,
    check_headroom,
    choose_neighbourhood,
    from_ring,
    payload_bound,
    required_bits,
    run_loopback,
    to_ring,
)
from fedlora.privacy.secagg.graph import neighbourhoods

SEED = bytes(range(32))


def quantize(values: np.ndarray, scale: float) -> np.ndarray:
    """Thin test helper standing in for the DP quantizer: round(x · scale) as int64."""
    return np.rint(np.asarray(values, dtype=np.float64) * scale).astype(np.int64)


def make_inputs(ids, length, bound, rng):
    return {u: rng.integers(-bound, bound + 1, length, dtype=np.int64) for u in ids}


# ---------------------------------------------------------------------------- the property
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_secure_sum_equals_plain_sum_with_dropouts(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 24), label="n")
    length = data.draw(st.integers(1, 48), label="length")
    bits = data.draw(st.sampled_from([16, 24, 32, 40, 64]), label="bits")
    sparse = n >= 8 and data.draw(st.booleans(), label="sparse")
    if sparse:
        degree = data.draw(st.sampled_from([k for k in range(2, n - 1, 2)]), label="k")
        threshold = data.draw(st.integers(1, degree), label="t")
    else:
        degree, threshold = None, None
    bound = max(1, min(5000, ((1 << (bits - 1)) - 1) // n))
    ids = sorted(data.draw(st.sets(st.integers(1, 2**64 - 1), min_size=n, max_size=n), label="ids"))
    stages = st.sampled_from(list(Stage)[:4])
    drop_at = data.draw(
        st.dictionaries(st.integers(0, n - 1), stages, max_size=n // 3), label="drops"
    )
    drops = {ids[i]: s for i, s in drop_at.items()}
    params = SecAggParams.create(
        7,
        ids,
        length,
        bits=bits,
        coordinate_bound=bound,
        degree=degree,
        threshold=threshold,
        round_seed=SEED,
    )
    rng = np.random.default_rng(n * 1000 + length)
    xs = make_inputs(ids, length, bound, rng)
    try:
        res = run_loopback(params, xs, drop_before=drops)
    except SecAggAborted as exc:
        event("aborted")
        assert drops, "a round without dropouts must never abort"
        assert exc.stage in {s.name for s in Stage}
        return
    event("completed")
    survivors = res.server.survivors
    # every survivor answered Round 2, nobody who vanished before it is counted
    assert all(drops.get(u, Stage.DONE) > Stage.MASKED_INPUT for u in survivors)
    if not drops:
        assert survivors == set(ids)
    expected = sum((xs[u] for u in survivors), np.zeros(length, dtype=np.int64))
    np.testing.assert_array_equal(res.total, expected)


@pytest.mark.parametrize(
    "drops",
    [
        {},
        {1: Stage.ADVERTISE_KEYS, 2: Stage.SHARE_KEYS},  # vanish before masking: not in the sum
        {3: Stage.MASKED_INPUT, 4: Stage.MASKED_INPUT},  # shared keys, no input: masks removed
        {5: Stage.UNMASKING, 6: Stage.UNMASKING},  # input counted, no shares from them
        {1: Stage.ADVERTISE_KEYS, 3: Stage.SHARE_KEYS, 5: Stage.MASKED_INPUT, 7: Stage.UNMASKING},
    ],
)
def test_dropouts_after_each_stage_sparse_graph(drops: dict[int, Stage]) -> None:
    ids = list(range(1, 31))
    params = SecAggParams.create(
        1, ids, 64, bits=32, coordinate_bound=10_000, degree=10, threshold=4, round_seed=SEED
    )
    assert params.degree == 10 and all(len(nb) == 10 for nb in params.graph.values())
    xs = make_inputs(ids, 64, 10_000, np.random.default_rng(0))
    res = run_loopback(params, xs, drop_before=drops)
    gone = {u for u, s in drops.items() if s <= Stage.MASKED_INPUT}
    assert res.server.survivors == set(ids) - gone
    np.testing.assert_array_equal(res.total, sum(xs[u] for u in res.server.survivors))


def test_float_vectors_through_quantization_round_trip() -> None:
    rng = np.random.default_rng(3)
    ids = list(range(1, 9))
    scale = 2.0**12
    floats = {u: rng.normal(0, 0.3, 100).clip(-1, 1) for u in ids}
    bound = payload_bound(1.0, 0.0, scale)
    params = SecAggParams.create(2, ids, 100, bits=32, coordinate_bound=bound)
    ints = {u: quantize(v, scale) for u, v in floats.items()}
    res = run_loopback(params, ints)
    np.testing.assert_array_equal(res.total, sum(ints.values()))
    np.testing.assert_allclose(res.total / scale, sum(floats.values()), atol=len(ids) / scale)


# ---------------------------------------------------------------------------- aborts
@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT])
def test_below_threshold_aborts_loudly_and_outputs_nothing(stage: Stage) -> None:
    ids = list(range(1, 11))
    params = SecAggParams.create(1, ids, 8, bits=32, coordinate_bound=100, round_seed=SEED)
    assert params.threshold == 5  # complete graph, majority threshold
    drops = dict.fromkeys(ids[:6], stage)
    with pytest.raises(SecAggAborted) as info:
        run_loopback(params, make_inputs(ids, 8, 100, np.random.default_rng(1)), drop_before=drops)
    exc = info.value
    assert exc.stage == stage.name
    assert exc.counts["sampled"] == 10 and exc.counts["needed"] == 5
    assert "aborted at stage" in str(exc) and "needed" in str(exc)


def test_too_few_unmask_replies_aborts_after_masking() -> None:
    ids = list(range(1, 11))
    params = SecAggParams.create(1, ids, 8, bits=32, coordinate_bound=100, round_seed=SEED)
    drops = dict.fromkeys(ids[:6], Stage.UNMASKING)
    with pytest.raises(SecAggAborted) as info:
        run_loopback(params, make_inputs(ids, 8, 100, np.random.default_rng(1)), drop_before=drops)
    assert info.value.stage == "UNMASKING"
    assert "shares" in info.value.reason


def test_aborted_server_never_outputs() -> None:
    ids = list(range(1, 6))
    params = SecAggParams.create(1, ids, 4, bits=32, coordinate_bound=10, round_seed=SEED)
    server = SecAggServer(params)
    with pytest.raises(SecAggAborted):
        server.close_stage()  # nobody answered Round 0
    for call in (server.result, server.requests, server.close_stage):
        with pytest.raises(SecAggAborted):
            call()


def test_result_before_the_end_is_an_error() -> None:
    params = SecAggParams.create(1, [1, 2, 3], 4, bits=32, coordinate_bound=10)
    with pytest.raises(SecAggError, match="not finished"):
        SecAggServer(params).result()


def test_min_survivors_above_sample_refused() -> None:
    params = SecAggParams.create(1, [1, 2, 3, 4], 4, bits=32, coordinate_bound=10)
    with pytest.raises(SecAggAborted, match="at least 9"):
        SecAggServer(params, min_survivors=9)


# ---------------------------------------------------------------------------- headroom
def test_headroom_refuses_the_round_before_it_starts() -> None:
    ids = list(range(1, 101))
    with pytest.raises(SecAggHeadroomError, match="needs 33 bits"):
        SecAggParams.create(1, ids, 10, bits=32, coordinate_bound=2**25)
    assert required_bits(100, 2**25) == 33
    check_headroom(100, 33, 2**25)  # fits exactly
    # the largest bound that fits is recovered exactly at the edge of the ring
    n, bits = 5, 16
    bound = ((1 << (bits - 1)) - 1) // n
    ids = list(range(1, n + 1))
    params = SecAggParams.create(1, ids, 3, bits=bits, coordinate_bound=bound)
    for sign in (1, -1):
        xs = {u: np.full(3, sign * bound, dtype=np.int64) for u in ids}
        np.testing.assert_array_equal(run_loopback(params, xs).total, np.full(3, sign * n * bound))


def test_payload_bound_from_clip_noise_scale() -> None:
    assert payload_bound(1.0, 0.5, 1000.0) == 1501
    assert payload_bound(1.0, 0.0, 4.0, weight=3) == 15
    with pytest.raises(SecAggParamsError):
        payload_bound(1.0, 0.0, 0.0)


def test_client_refuses_input_beyond_bound() -> None:
    ids = [1, 2, 3, 4, 5]
    params = SecAggParams.create(1, ids, 4, bits=32, coordinate_bound=10)
    xs = {u: np.full(4, u, dtype=np.int64) for u in ids}
    xs[2] = np.array([0, 0, 11, 0])
    res = run_loopback(params, xs)
    assert isinstance(res.client_errors[2], SecAggInputError)
    assert "coordinate bound" in str(res.client_errors[2])
    assert res.server.survivors == {1, 3, 4, 5}
    np.testing.assert_array_equal(res.total, np.full(4, 13))


# ---------------------------------------------------------------------------- parameters
def test_choose_neighbourhood_is_logarithmic_and_safe() -> None:
    ks = {n: choose_neighbourhood(n) for n in (100, 300, 1000, 10_000)}
    assert ks[100] == (52, 28)
    assert [k for k, _ in ks.values()] == sorted(k for k, _ in ks.values())
    assert ks[10_000][0] <= 64  # O(log n), far below n
    for _n, (k, t) in ks.items():
        assert k % 2 == 0 and k / 2 <= t < k
    # small rounds fall back to the complete graph with a majority threshold
    assert choose_neighbourhood(20) == (19, 10)
    assert choose_neighbourhood(3) == (2, 2)
    with pytest.raises(SecAggParamsError):
        choose_neighbourhood(2)


def test_params_validation() -> None:
    good = dict(
        round_id=1,
        participants=(1, 2, 3, 4),
        degree=3,
        threshold=2,
        bits=32,
        vector_len=4,
        coordinate_bound=1,
        round_seed=SEED,
    )
    SecAggParams(**good)
    for change in (
        {"participants": (1, 1, 2, 3)},
        {"participants": (0, 1, 2)},
        {"participants": (3, 2, 1)},
        {"participants": (1, 2)},
        {"threshold": 5},
        {"threshold": 0},
        {"bits": 7},
        {"bits": 65},
        {"vector_len": 0},
        {"round_seed": b"short"},
        {"participants": tuple(range(1, 11)), "degree": 3},
    ):
        with pytest.raises(SecAggParamsError):
            SecAggParams(**{**good, **change})


def test_graph_is_k_regular_symmetric_and_seeded() -> None:
    ids = list(range(100, 160))
    g = neighbourhoods(ids, 8, SEED)
    assert all(len(nb) == 8 and u not in nb for u, nb in g.items())
    assert all(u in g[v] for u, nb in g.items() for v in nb)
    assert neighbourhoods(ids, 8, SEED) == g
    assert neighbourhoods(ids, 8, bytes(32)) != g
    params = SecAggParams.create(
        1, ids, 1, bits=16, coordinate_bound=1, degree=8, threshold=3, round_seed=SEED
    )
    assert all(params.neighbours(u) == g[u] for u in ids)


def test_ring_mapping_round_trip() -> None:
    for bits in (8, 16, 31, 32, 33, 62, 63, 64):
        lim = (1 << (bits - 1)) - 1
        x = np.array([0, 1, -1, lim, -lim, 12345 % lim, -(54321 % lim)], dtype=np.int64)
        words = to_ring(x, bits)
        assert words.dtype == (np.uint32 if bits <= 32 else np.uint64)
        assert int(words.max()) < 1 << bits
        np.testing.assert_array_equal(from_ring(words, bits), x)
    with pytest.raises(ValueError):
        to_ring(np.array([0.5]), 32)


# ---------------------------------------------------------------------------- ranks + metadata
def test_heterogeneous_ranks_share_one_session() -> None:
    """Phones at ranks 4, 8, 16 send r_max-padded payloads + count/weight coordinates."""
    d, r_max = 6, 16
    ranks = (4, 8, 16)
    layout = ContributionLayout(payload_len=2 * d * r_max, ranks=ranks)
    rng = np.random.default_rng(5)
    ids = list(range(1, 13))
    phone_rank = {u: ranks[u % 3] for u in ids}
    weights = {u: int(rng.integers(1, 50)) for u in ids}
    vectors = {}
    for u in ids:
        a = np.zeros((r_max, d), dtype=np.int64)
        a[: phone_rank[u]] = rng.integers(-100, 101, (phone_rank[u], d))  # zero-padded rows
        b = np.zeros((d, r_max), dtype=np.int64)
        b[:, : phone_rank[u]] = rng.integers(-100, 101, (d, phone_rank[u]))
        vectors[u] = layout.pack(
            np.concatenate([a.ravel(), b.ravel()]), rank=phone_rank[u], weight=weights[u]
        )
    bound = layout.coordinate_bound(100, 50)
    params = SecAggParams.create(4, ids, layout.size, bits=32, coordinate_bound=bound)
    res = run_loopback(params, vectors, drop_before={5: Stage.MASKED_INPUT})
    survivors = res.server.survivors
    summed = layout.unpack(res.total, expected_contributors=len(survivors))
    np.testing.assert_array_equal(
        summed.payload, sum(vectors[u][: layout.payload_len] for u in survivors)
    )
    assert summed.counts == {r: sum(phone_rank[u] == r for u in survivors) for r in ranks}
    assert summed.weights == {
        r: sum(weights[u] for u in survivors if phone_rank[u] == r) for r in ranks
    }
    assert summed.total_weight == sum(weights[u] for u in survivors)
    assert summed.weight_at_least(5) == summed.weights[8] + summed.weights[16]
    # a contributor count that disagrees with the survivors is an integrity failure
    with pytest.raises(SecAggIntegrityError):
        layout.unpack(res.total, expected_contributors=len(survivors) + 1)


def test_contribution_layout_validation() -> None:
    layout = ContributionLayout(payload_len=3, ranks=(4, 8))
    assert layout.size == 7
    np.testing.assert_array_equal(
        layout.pack(np.array([1, -2, 3]), rank=8, weight=9), [1, -2, 3, 0, 1, 0, 9]
    )
    with pytest.raises(ValueError):
        layout.pack(np.array([1, 2]), rank=8, weight=1)
    with pytest.raises(ValueError):
        layout.pack(np.array([1, 2, 3]), rank=2, weight=1)
    with pytest.raises(ValueError):
        ContributionLayout(payload_len=3, ranks=(4, 4))
