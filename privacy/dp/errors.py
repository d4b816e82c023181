"""Errors of the differential-privacy pipeline.

Every failure here is loud and names the numbers involved, so an operator can act on the
message alone (see :mod:`fedlora.errors`). A privacy mechanism that silently does less than
it claims is worse than one that stops: each check below guards a claim made in
docs/privacy.md.
"""

from __future__ import annotations

from fedlora.errors import FedloraError


class PrivacyError(FedloraError):
    """Base class of the privacy pipeline's errors."""


class PrivacyConfigError(PrivacyError, ValueError):
    """A privacy parameter is inconsistent (e.g. adaptive clipping with z ≥ 2σ_b)."""


class DeltaInputError(PrivacyError, ValueError):
    """A vector entering the pipeline is not a finite 1-D float LoRA-delta vector."""


class HeadroomError(PrivacyError, OverflowError):
    """The secure-aggregation modulus 2^b cannot hold the sum of the round's vectors."""


class InsufficientNoiseError(PrivacyError):
    """Too few phones contributed for distributed noise to reach its target variance."""


class PrivacyBudgetExceeded(PrivacyError):
    """The next round would push the spent ε over the run's budget; training must stop.

    Raised *before* the round runs, so the released adapters never exceed the budget.
    """

    def __init__(
        self, *, spent: float, projected: float, budget: float, delta: float, next_round: int
    ) -> None:
        self.spent = spent
        self.projected = projected
        self.budget = budget
        self.delta = delta
        self.next_round = next_round
        super().__init__(
            f"privacy budget exhausted: round {next_round} would raise ε from {spent:.4g} to "
            f"{projected:.4g} (δ={delta:g}), over the budget ε={budget:g}; stopping before "
            f"it. Spent so far: ε={spent:.4g}, budget ε={budget:g}."
        )
