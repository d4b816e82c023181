"""Rank views of an adapter: zero-pad to ``r_max``, truncate to ``r``, SVD re-factoring.

Convention: a view keeps each module's ``scaling = alpha / r`` constant, so alpha moves with
the rank. With that, zero-padding leaves ΔW = scaling · B @ A unchanged (exactly), and
truncation keeps the first ``r`` rank slots with the same meaning they had at the larger rank —
which is what nested schemes (HetLoRA, FFA-LoRA with a shared A) rely on.

SVD re-factoring never forms the dense ``d_out × d_in`` product when it is handed factors:
``B @ A = Q_B R_B R_Aᵀ Q_Aᵀ``, so only an ``r × r`` core is decomposed (Eckart–Young: the
result is the best rank-``r`` approximation in Frobenius norm).
"""

from __future__ import annotations

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.errors import AdapterValidationError


def _check_rank(r: int) -> None:
    if not isinstance(r, int | np.integer) or r < 1:
        raise AdapterValidationError("<all>", f"target rank must be a positive integer, got {r!r}")


def pad_to_rank(adapter: LoraAdapter, r_max: int) -> LoraAdapter:
    """Zero-pad every module to rank ``r_max``: factors copied exactly, ΔW unchanged (up to
    the last-ulp rounding of the re-expressed alpha / r)."""
    _check_rank(r_max)
    pairs: dict[str, LoraPair] = {}
    alphas: dict[str, float] = {}
    for name, p in adapter:
        if p.rank > r_max:
            raise AdapterValidationError(name, f"rank {p.rank} is above the padding rank {r_max}")
        A = np.zeros((r_max, p.in_features), dtype=p.A.dtype)
        B = np.zeros((p.out_features, r_max), dtype=p.B.dtype)
        A[: p.rank] = p.A
        B[:, : p.rank] = p.B
        pairs[name] = LoraPair(A, B)
        alphas[name] = adapter.meta.scaling(name) * r_max
    return _rebuild(adapter, pairs, alphas)


def truncate_to_rank(adapter: LoraAdapter, r: int) -> LoraAdapter:
    """Keep the first ``r`` rank slots of every module (the nested view)."""
    _check_rank(r)
    pairs: dict[str, LoraPair] = {}
    alphas: dict[str, float] = {}
    for name, p in adapter:
        if p.rank < r:
            raise AdapterValidationError(name, f"rank {p.rank} is below the truncation rank {r}")
        pairs[name] = LoraPair(p.A[:r].copy(), p.B[:, :r].copy())
        alphas[name] = adapter.meta.scaling(name) * r
    return _rebuild(adapter, pairs, alphas)


def factor_dense(delta_w: np.ndarray, r: int, scaling: float, dtype: str = "float32") -> LoraPair:
    """Best rank-``r`` factors of a dense ΔW so that ``scaling · B @ A ≈ ΔW``.

    The singular values are split evenly between B and A (balanced factors).
    """
    _check_rank(r)
    if scaling <= 0:
        raise AdapterValidationError("<dense>", f"scaling must be > 0, got {scaling}")
    if not np.all(np.isfinite(delta_w)):
        raise AdapterValidationError("<dense>", "ΔW has non-finite values")
    U, S, Vt = np.linalg.svd(np.asarray(delta_w, dtype=np.float64), full_matrices=False)
    return _split(U, S, Vt, r, scaling, dtype, delta_w.shape)


def _split(
    U: np.ndarray,
    S: np.ndarray,
    Vt: np.ndarray,
    r: int,
    scaling: float,
    dtype: str,
    shape: tuple[int, ...],
) -> LoraPair:
    k = min(r, S.shape[0])
    root = np.sqrt(S[:k] / scaling)
    A = np.zeros((r, shape[1]), dtype=np.float64)
    B = np.zeros((shape[0], r), dtype=np.float64)
    A[:k] = root[:, None] * Vt[:k]
    B[:, :k] = U[:, :k] * root[None, :]
    return LoraPair(A.astype(dtype), B.astype(dtype))


def refactor_pair(pair: LoraPair, scaling_in: float, r: int, scaling_out: float) -> LoraPair:
    """Re-factor ``scaling_in · B @ A`` to rank ``r`` at ``scaling_out`` without the dense ΔW."""
    _check_rank(r)
    A = pair.A.astype(np.float64)
    B = pair.B.astype(np.float64)
    qb, rb = np.linalg.qr(B)  # B = Qb Rb,   Qb: (d_out, k)
    qa, ra = np.linalg.qr(A.T)  # Aᵀ = Qa Ra, Qa: (d_in, k)
    core = scaling_in * (rb @ ra.T)  # ΔW = Qb · core · Qaᵀ
    uc, S, vct = np.linalg.svd(core)
    U = qb @ uc
    Vt = vct @ qa.T
    return _split(U, S, Vt, r, scaling_out, str(pair.A.dtype), (pair.B.shape[0], pair.A.shape[1]))


def refactor_to_rank(adapter: LoraAdapter, r: int) -> LoraAdapter:
    """Best rank-``r`` approximation of every module's ΔW, at the same scaling."""
    _check_rank(r)
    pairs: dict[str, LoraPair] = {}
    alphas: dict[str, float] = {}
    for name, p in adapter:
        s = adapter.meta.scaling(name)
        pairs[name] = refactor_pair(p, s, r, s)
        alphas[name] = s * r
    return _rebuild(adapter, pairs, alphas)


def view_error(reference: LoraAdapter, view: LoraAdapter) -> float:
    """Relative Frobenius error ‖ΔW_ref − ΔW_view‖ / ‖ΔW_ref‖ over all modules."""
    num = 0.0
    den = 0.0
    for name in reference.modules:
        ref = reference.delta_weight(name)
        num += float(np.sum((ref - view.delta_weight(name)) ** 2))
        den += float(np.sum(ref**2))
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def _rebuild(
    adapter: LoraAdapter, pairs: dict[str, LoraPair], alphas: dict[str, float]
) -> LoraAdapter:
    meta = adapter.meta.model_copy(
        update={"ranks": {n: p.rank for n, p in pairs.items()}, "alphas": alphas}
    )
    out = LoraAdapter(meta=meta, pairs=pairs)
    out.check_consistent()
    return out
