"""FedSA-LoRA: share A, keep B local.

Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning",
ICLR 2025. The paper observes that the learned A matrices capture general knowledge while B
captures client-specific knowledge, so only A is sent and averaged; each client keeps its B.

Here A deltas are zero-padded and averaged per slot (a slot only over the phones that have
it, as in rank-matched FedAvg); the community B is left unchanged (its update is zero), and
phones overlay their own B on the A of their view (:func:`personalize`). Phones may send
zeros for B — it is ignored — which also keeps their personal B off the wire. **Linear**,
**not exact** (ΔW mixes the shared A with personal Bs). Nested views.
"""

from __future__ import annotations

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.errors import AdapterValidationError

from .padded import PaddedFactorRule


class FedSALoRA(PaddedFactorRule):
    """Per-slot mean of A deltas; B stays local (linear, not exact, nested)."""

    name = "fedsa"
    exact = False
    share_b = False
    per_slot = True


def personalize(view: LoraAdapter, local: LoraAdapter) -> LoraAdapter:
    """Phone side: the community's shared A from ``view`` with the phone's own B.

    Both must have the same modules and shapes (the phone's rank).
    """
    pairs: dict[str, LoraPair] = {}
    for module, v in view:
        if module not in local.pairs:
            raise AdapterValidationError(module, "missing from the local adapter")
        own = local.pairs[module]
        if own.B.shape != v.B.shape:
            raise AdapterValidationError(
                f"{module}.lora_B.weight", f"local B {own.B.shape} vs view {v.B.shape}"
            )
        pairs[module] = LoraPair(A=v.A.copy(), B=own.B.copy())
    out = LoraAdapter(meta=view.meta, pairs=pairs)
    out.check_consistent()
    return out
