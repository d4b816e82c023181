"""Errors of the aggregation layer.

Each names what is wrong — the contribution (by client id) and the tensor, or the rule and
why it cannot run — so that an operator can act on the message alone. They subclass the
core's errors, so callers that catch :class:`~fedlora.errors.FedloraError` (or
:class:`~fedlora.errors.AdapterValidationError` for per-tensor problems) catch these too.
"""

from __future__ import annotations

from fedlora.errors import AdapterValidationError, FedloraError


class AggregationError(FedloraError, ValueError):
    """A round cannot be aggregated as asked (zero total weight, wrong sum layout, ...)."""


class ContributionError(AdapterValidationError):
    """One contribution does not fit the round; ``contribution`` names the phone.

    ``tensor`` names the offending tensor or module, or a pseudo-name in angle brackets
    (``<weight>``, ``<rank>``, ``<meta>``) for problems that are not in a tensor.
    """

    def __init__(self, contribution: str, tensor: str, reason: str) -> None:
        super().__init__(tensor, reason)
        self.contribution = contribution
        self.args = (f"contribution {contribution!r}, tensor {tensor!r}: {reason}",)


class NotLinearError(AggregationError):
    """The rule needs individual contributions, so it cannot run on secure-aggregation sums."""

    def __init__(self, rule: str, why: str) -> None:
        self.rule = rule
        self.why = why
        super().__init__(
            f"aggregation rule {rule!r} is not linear and cannot run under secure aggregation "
            f"(the server only sees a sum of phones' vectors): {why}"
        )
