"""Partitioners and the train/held-out split: conservation, skew, determinism, errors."""

from __future__ import annotations

from collections import Counter

import pytest

from fedlora.data import (
    TOPICS,
    Example,
    partition_dirichlet,
    partition_iid,
    partition_natural,
    topic_skew,
    train_heldout_split,
)


def _pool(n: int = 1600, users: int = 10) -> list[Example]:
    """Distinct examples, topics balanced, writers interleaved."""
    return [
        Example(f"text {i}", TOPICS[i % len(TOPICS)], "message", f"u{i % users}") for i in range(n)
    ]


def _assert_conserved(parts: list[list[Example]], pool: list[Example]) -> None:
    flat = [e for part in parts for e in part]
    assert len(flat) == len(pool)
    assert Counter(flat) == Counter(pool)  # nothing lost, nothing duplicated


def test_iid_sizes_and_conservation() -> None:
    pool = _pool(1003)
    parts = partition_iid(pool, 10, seed=0)
    assert len(parts) == 10
    assert sorted(len(p) for p in parts) == [100] * 7 + [101] * 3
    _assert_conserved(parts, pool)
    assert parts == partition_iid(pool, 10, seed=0)
    assert parts != partition_iid(pool, 10, seed=1)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 5.0])
def test_dirichlet_conservation_and_min_size(alpha: float) -> None:
    pool = _pool()
    parts = partition_dirichlet(pool, 50, alpha, seed=3, min_size=5)
    assert len(parts) == 50
    assert min(len(p) for p in parts) >= 5
    _assert_conserved(parts, pool)
    assert parts == partition_dirichlet(pool, 50, alpha, seed=3, min_size=5)


def test_dirichlet_min_size_holds_even_with_many_clients() -> None:
    pool = _pool(300)
    parts = partition_dirichlet(pool, 300, 0.01, seed=0)  # exactly one example each
    assert [len(p) for p in parts] == [1] * 300
    _assert_conserved(parts, pool)


def test_skew_grows_as_alpha_shrinks() -> None:
    pool = _pool()
    skews = {
        alpha: sum(
            topic_skew(partition_dirichlet(pool, 20, alpha, seed=s), TOPICS) for s in range(3)
        )
        / 3
        for alpha in (100.0, 1.0, 0.1)
    }
    assert skews[100.0] < skews[1.0] < skews[0.1]
    assert skews[100.0] < 0.15 and skews[0.1] > 0.6
    iid = sum(topic_skew(partition_iid(pool, 20, seed=s), TOPICS) for s in range(3)) / 3
    assert iid < skews[1.0]


def test_topic_skew_values() -> None:
    a = [Example("x", "family", "note", "u")]
    b = [Example("y", "work", "note", "u")]
    assert topic_skew([a + b, b + a]) == 0.0
    assert topic_skew([a, b]) == pytest.approx(0.5)  # disjoint halves: TV 0.5 each
    assert topic_skew([a * 3, b]) == pytest.approx((0.25 + 0.75) / 2)
    assert topic_skew([[], a, b]) == pytest.approx(0.5)  # empty clients are skipped
    assert topic_skew([]) == 0.0
    # topics outside the given list are ignored
    c = [Example("z", "system", "system", "u")]
    assert topic_skew([a + c, a], ["family"]) == 0.0


def test_natural_groups_by_writer() -> None:
    pool = _pool(100, users=7)
    groups = partition_natural(pool)
    assert list(groups) == sorted(f"u{i}" for i in range(7))
    assert all(e.user_id == uid for uid, ex in groups.items() for e in ex)
    _assert_conserved(list(groups.values()), pool)
    assert groups["u3"] == [e for e in pool if e.user_id == "u3"]  # order kept


@pytest.mark.parametrize(
    ("num_clients", "alpha", "n", "match"),
    [
        (5, 0.0, 100, "alpha must be a positive"),
        (5, -1.0, 100, "alpha must be a positive"),
        (5, float("nan"), 100, "alpha must be a positive"),
        (0, 1.0, 100, "num_clients must be >= 1"),
        (50, 1.0, 20, r"too few examples: 20 .* 50 clients"),
    ],
)
def test_dirichlet_errors(num_clients: int, alpha: float, n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition_dirichlet(_pool(n), num_clients, alpha, seed=0)


def test_iid_errors() -> None:
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        partition_iid(_pool(10), 0, seed=0)
    with pytest.raises(ValueError, match="too few examples"):
        partition_iid(_pool(3), 4, seed=0)
    with pytest.raises(ValueError, match=r"too few examples: 30 .* at least 4"):
        partition_dirichlet(_pool(30), 10, 1.0, seed=0, min_size=4)


def test_train_heldout_split_properties() -> None:
    items = list(range(50))
    train, held = train_heldout_split(items, 0.2, seed=4)
    assert len(held) == 10 and len(train) == 40
    assert sorted(train + held) == items
    assert train == sorted(train) and held == sorted(held)  # original order kept
    assert (train, held) == train_heldout_split(items, 0.2, seed=4)
    assert held != train_heldout_split(items, 0.2, seed=5)[1]


@pytest.mark.parametrize(
    ("n", "fraction", "expected_heldout"),
    [
        (0, 0.2, 0),
        (1, 0.5, 0),
        (2, 0.01, 1),
        (2, 0.99, 1),
        (3, 0.2, 1),
        (10, 0.25, 2),
        (10, 0.9, 9),
    ],
)
def test_split_counts(n: int, fraction: float, expected_heldout: int) -> None:
    train, held = train_heldout_split(list(range(n)), fraction, seed=0)
    assert len(held) == expected_heldout
    assert len(train) == n - expected_heldout
    if n >= 2:
        assert train and held


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        train_heldout_split([1, 2, 3], fraction, seed=0)
