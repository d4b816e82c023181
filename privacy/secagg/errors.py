"""Errors of secure aggregation: loud, specific, and never a silent halt.

* :class:`SecAggAborted` — the round cannot produce a correct sum (too few survivors, too few
  shares, an unusable reconstruction). Raised by the server *instead of* any output; it names
  the stage and the counts of every participant set so an operator can act on the message.
* :class:`SecAggMessageRejected` — one message was refused (malformed, duplicate, wrong round
  or stage, unknown sender, bad ciphertext, wrong length, …). The server records every
  rejection, treats the sender as dropped where the protocol allows, and carries on.
* :class:`SecAggHeadroomError` — the modulus ``2^b`` cannot hold the sum: the round is refused
  *before it starts*.
* :class:`SecAggIntegrityError` — the unmasked sum is inconsistent with the round (e.g. its
  contributor-count coordinates disagree with the number of survivors).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from fedlora.errors import FedloraError


class SecAggError(FedloraError):
    """Base class of every secure-aggregation error."""


class SecAggAborted(SecAggError):
    """The round aborted at ``stage``; nothing was (or will be) output.

    ``counts`` maps participant-set names (``sampled``, ``advertised``, ``shared``,
    ``masked``, ``unmasked``, ``needed``…) to sizes.
    """

    def __init__(self, stage: str, reason: str, counts: Mapping[str, int] | None = None) -> None:
        self.stage = stage
        self.reason = reason
        self.counts = dict(counts or {})
        shown = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        suffix = f" [{shown}]" if shown else ""
        super().__init__(f"secure aggregation aborted at stage {stage}: {reason}{suffix}")


class RejectReason(StrEnum):
    """Why a message was refused (stable codes: tests and logs match on them)."""

    MALFORMED = "malformed"
    DUPLICATE = "duplicate"
    WRONG_ROUND = "wrong_round"
    WRONG_STAGE = "wrong_stage"
    UNKNOWN_SENDER = "unknown_sender"
    NOT_EXPECTED = "not_expected"
    BAD_KEY = "bad_key"
    WRONG_SHARE_COUNT = "wrong_share_count"
    WRONG_RECIPIENTS = "wrong_recipients"
    BAD_CIPHERTEXT = "bad_ciphertext"
    WRONG_LENGTH = "wrong_length"
    OUT_OF_RANGE = "out_of_range"
    BAD_SHARE = "bad_share"
    BAD_PARAMS = "bad_params"
    TOO_FEW_NEIGHBOURS = "too_few_neighbours"
    ERROR_REPLY = "error_reply"


class SecAggMessageRejected(SecAggError):
    """One message from ``sender`` was refused at ``stage`` for ``reason``."""

    def __init__(self, sender: int | None, stage: str, reason: RejectReason, detail: str) -> None:
        self.sender = sender
        self.stage = stage
        self.reason = reason
        self.detail = detail
        who = "server" if sender is None else f"client {sender}"
        super().__init__(f"message from {who} rejected at stage {stage} ({reason}): {detail}")


class SecAggParamsError(SecAggError, ValueError):
    """Round parameters are invalid or unsafe; the round is refused before it starts."""


class SecAggHeadroomError(SecAggParamsError):
    """``2^bits`` cannot hold the sum of the round's vectors: refused before it starts."""


class SecAggInputError(SecAggError, ValueError):
    """A phone's own input vector does not fit the round (length, dtype, bound)."""


class SecAggIntegrityError(SecAggError):
    """The unmasked sum contradicts what the round knows (e.g. the contributor count)."""
