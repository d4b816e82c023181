"""Rank views: padding is exact, truncation is nested, SVD re-factoring is optimal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.errors import AdapterValidationError
from fedlora.ranks import (
    factor_dense,
    pad_to_rank,
    refactor_pair,
    refactor_to_rank,
    truncate_to_rank,
    view_error,
)


def adapter_of(rank: int, d_in: int, d_out: int, seed: int, alpha: float = 16.0) -> LoraAdapter:
    rng = np.random.default_rng(seed)
    pairs = {
        "m.layers.0.q_proj": LoraPair(
            rng.standard_normal((rank, d_in)), rng.standard_normal((d_out, rank))
        ),
        "m.layers.1.q_proj": LoraPair(
            rng.standard_normal((rank, d_in)), rng.standard_normal((d_out, rank))
        ),
    }
    return LoraAdapter.create(pairs, base_fingerprint="fp", alpha=alpha, dtype="float64")


dims = st.integers(min_value=2, max_value=12)


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 6), extra=st.integers(0, 6), d_in=dims, d_out=dims, seed=st.integers(0, 999)
)
def test_pad_is_exact_and_truncate_inverts_it(
    r: int, extra: int, d_in: int, d_out: int, seed: int
) -> None:
    a = adapter_of(r, d_in, d_out, seed)
    padded = pad_to_rank(a, r + extra)
    assert set(padded.meta.ranks.values()) == {r + extra}
    for m in a.modules:
        # factors are copied exactly; alpha/r may differ from the original in the last ulp
        np.testing.assert_allclose(padded.delta_weight(m), a.delta_weight(m), rtol=1e-14, atol=0)
        np.testing.assert_array_equal(padded.pairs[m].A[:r], a.pairs[m].A)
        np.testing.assert_array_equal(padded.pairs[m].A[r:], 0)
        assert padded.meta.scaling(m) == pytest.approx(a.meta.scaling(m))
    back = truncate_to_rank(padded, r)
    for m in a.modules:
        np.testing.assert_array_equal(back.pairs[m].A, a.pairs[m].A)
        np.testing.assert_array_equal(back.pairs[m].B, a.pairs[m].B)
    assert back.meta.alphas == pytest.approx(a.meta.alphas)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(2, 6), d_in=dims, d_out=dims, seed=st.integers(0, 999))
def test_truncation_keeps_leading_slots(r: int, d_in: int, d_out: int, seed: int) -> None:
    a = adapter_of(r, d_in, d_out, seed)
    t = truncate_to_rank(a, 1)
    m = a.modules[0]
    s = a.meta.scaling(m)
    expected = s * np.outer(a.pairs[m].B[:, 0], a.pairs[m].A[0])
    np.testing.assert_allclose(t.delta_weight(m), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 5), target=st.integers(1, 8), d_in=dims, d_out=dims, seed=st.integers(0, 999)
)
def test_refactor_matches_dense_eckart_young(
    r: int, target: int, d_in: int, d_out: int, seed: int
) -> None:
    a = adapter_of(r, d_in, d_out, seed)
    view = refactor_to_rank(a, target)
    for m in a.modules:
        dense = a.delta_weight(m)
        s = np.linalg.svd(dense, compute_uv=False)
        best = float(np.sqrt(np.sum(s[target:] ** 2)))  # Eckart–Young optimum
        err = float(np.linalg.norm(dense - view.delta_weight(m)))
        assert err == pytest.approx(best, rel=1e-6, abs=1e-8)
        if target >= min(r, d_in, d_out):  # exact when the target rank suffices
            np.testing.assert_allclose(view.delta_weight(m), dense, rtol=1e-8, atol=1e-8)
        assert view.pairs[m].rank == target
        assert view.meta.scaling(m) == pytest.approx(a.meta.scaling(m))


def test_factor_dense_and_refactor_pair_agree() -> None:
    rng = np.random.default_rng(1)
    dw = rng.standard_normal((9, 7)) @ np.diag(np.linspace(3, 0.1, 7)) @ rng.standard_normal((7, 7))
    p = factor_dense(dw, 3, scaling=0.5, dtype="float64")
    assert p.A.shape == (3, 7) and p.B.shape == (9, 3)
    q = refactor_pair(LoraPair(np.eye(7), dw), 1.0, 3, 0.5)
    np.testing.assert_allclose(0.5 * p.B @ p.A, 0.5 * q.B @ q.A, rtol=1e-8, atol=1e-8)


def test_view_error_reports_approximation() -> None:
    a = adapter_of(6, 10, 10, 0)
    assert view_error(a, pad_to_rank(a, 8)) == 0.0
    e2, e4 = view_error(a, refactor_to_rank(a, 2)), view_error(a, refactor_to_rank(a, 4))
    assert 0 < e4 < e2 < 1


def test_rank_view_errors() -> None:
    a = adapter_of(4, 5, 5, 0)
    with pytest.raises(AdapterValidationError, match="above the padding rank"):
        pad_to_rank(a, 2)
    with pytest.raises(AdapterValidationError, match="below the truncation rank"):
        truncate_to_rank(a, 8)
    with pytest.raises(AdapterValidationError, match="positive integer"):
        refactor_to_rank(a, 0)
    with pytest.raises(AdapterValidationError, match="non-finite"):
        factor_dense(np.full((3, 3), np.nan), 1, 1.0)
