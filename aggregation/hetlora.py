"""HetLoRA: zero-pad, norm-weighted aggregation, truncate back.

Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
EMNLP 2024. Heterogeneous-rank factors are zero-padded to the largest rank and averaged with
*sparsity-weighted* aggregation — each client's weight is proportional to the Frobenius norm
of its LoRA update, so clients whose update carries little (a near-zero norm) count less —
then each client receives the global factors truncated to its rank. (The paper's local
rank self-pruning is a phone-side matter and is not part of the server rule.)

Here a phone's weight is ``wᵢ = weight · normᵢ``, where ``normᵢ`` is the contribution's
``norm`` (the phone may set it to ``‖scaling · B A‖_F`` of its trained adapter, the paper's
choice; see :func:`adapter_norm`) or, if absent, the L2 norm of the delta's factors. The norm
is a per-phone scalar the phone can apply before masking, so the rule stays **linear**:
the server needs only ``Σ wᵢ pad(xᵢ)`` and ``Σ wᵢ``. Every slot is divided by the total
weight (zero-padding: a phone without a slot counts as zero there). **Not exact.** Nested.
"""

from __future__ import annotations

import math

import numpy as np

from fedlora.adapter import LoraAdapter

from .contribution import Contribution
from .padded import PaddedFactorRule


def factor_norm(adapter: LoraAdapter) -> float:
    """L2 norm of all factors of ``adapter`` (the default HetLoRA norm of a delta)."""
    total = 0.0
    for _, p in adapter:
        total += float(np.sum(np.square(p.A, dtype=np.float64)))
        total += float(np.sum(np.square(p.B, dtype=np.float64)))
    return math.sqrt(total)


def adapter_norm(adapter: LoraAdapter) -> float:
    """Frobenius norm of the whole ``ΔW = scaling · B A`` over modules, without dense ΔW.

    ``‖B A‖²_F = Σ (BᵀB) ⊙ (A Aᵀ)`` needs only ``r × r`` products. This is the norm HetLoRA
    weights by; a phone computes it on its trained adapter and puts it in
    :attr:`Contribution.norm`.
    """
    total = 0.0
    for module, p in adapter:
        a = p.A.astype(np.float64)
        b = p.B.astype(np.float64)
        s = adapter.meta.scaling(module)
        total += s * s * float(np.sum((b.T @ b) * (a @ a.T)))
    return math.sqrt(max(total, 0.0))


class HetLoRA(PaddedFactorRule):
    """Norm-weighted zero-padded mean over all phones (linear, not exact, nested)."""

    name = "hetlora"
    exact = False
    per_slot = False

    def client_weight(self, c: Contribution) -> float:
        norm = c.norm if c.norm is not None else factor_norm(c.delta)
        return float(c.weight) * float(norm)
