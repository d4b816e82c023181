"""User-level (ε, δ) over rounds, through Google's ``dp_accounting`` — never a hand formula.

Each round is one ``DpEvent`` on the phone-level neighbouring relation (add or remove one
phone's entire data), built from what the round actually used:

* ``central`` / ``distributed``: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` with
  ``q = sampling_rate`` (amplification by sampling, as in DP-FedAvg, McMahan et al. 2018),
  or ``GaussianDpEvent(z)`` when the ledger is built with ``amplification=False``;
* ``local``: ``GaussianDpEvent(z)`` without amplification — the server sees each report and
  knows who was sampled, so sampling hides nothing from it (worst case: a phone in every
  round);
* ``none`` (or z = 0): ``NonPrivateDpEvent`` — ε = ∞, honestly.

:class:`PrivacyLedger` composes the events with an RDP (default; Mironov 2017, Mironov et
al. 2019) or PLD (tighter; Koskela et al. 2020, Doroshenko et al. 2022) accountant, reports
ε after every round, refuses a round that would exceed ``epsilon_budget`` *before* it runs
(:meth:`PrivacyLedger.check_can_run`), and round-trips through JSON so the server can keep
it in its database and resume.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Literal, get_args

import dp_accounting
from dp_accounting import pld, rdp

from .context import NoiseMode, RoundContext
from .errors import PrivacyBudgetExceeded, PrivacyConfigError

AccountantKind = Literal["rdp", "pld"]
LEDGER_FORMAT = "fedlora.privacy-ledger"
LEDGER_VERSION = 1


@dataclass(frozen=True)
class RoundPrivacy:
    """What a round costs: its noise mode, target multiplier z and sampling rate q."""

    round: int
    noise_mode: NoiseMode
    noise_multiplier: float
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_mode not in get_args(NoiseMode):
            raise PrivacyConfigError(f"unknown noise mode {self.noise_mode!r}")
        if not (self.noise_multiplier >= 0 and 0 < self.sampling_rate <= 1):
            raise PrivacyConfigError(
                f"round {self.round}: need noise_multiplier >= 0 and 0 < sampling_rate <= 1, "
                f"got {self.noise_multiplier}, {self.sampling_rate}"
            )

    @classmethod
    def from_context(cls, ctx: RoundContext) -> RoundPrivacy:
        """The round's cost as its context defines it (z is the *target* multiplier)."""
        return cls(ctx.round, ctx.noise_mode, ctx.noise_multiplier, ctx.sampling_rate)

    def _key(self) -> tuple[str, float, float]:
        return (self.noise_mode, self.noise_multiplier, self.sampling_rate)


def dp_event_for(rp: RoundPrivacy, amplification: bool = True) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of one round (see the module docstring)."""
    if rp.noise_mode == "none" or rp.noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(rp.noise_multiplier)
    if rp.noise_mode == "local" or not amplification or rp.sampling_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(rp.sampling_rate, gaussian)


def _new_accountant(kind: AccountantKind) -> dp_accounting.PrivacyAccountant:
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise PrivacyConfigError(f"accountant must be 'rdp' or 'pld', got {kind!r}")


def _epsilon(accountant: dp_accounting.PrivacyAccountant, delta: float) -> float:
    eps = float(accountant.get_epsilon(delta))
    return eps if math.isfinite(eps) else math.inf


@dataclass(frozen=True)
class RoundRecord:
    """One recorded round and the cumulative ε after it."""

    round: int
    noise_mode: NoiseMode
    noise_multiplier: float
    sampling_rate: float
    epsilon: float

    @property
    def privacy(self) -> RoundPrivacy:
        return RoundPrivacy(self.round, self.noise_mode, self.noise_multiplier, self.sampling_rate)


class PrivacyLedger:
    """Cumulative user-level (ε, δ) of a run, with an optional ε budget.

    Typical server loop::

        ledger.check_can_run(RoundPrivacy.from_context(ctx))   # raises before overspending
        ...run the round...
        ledger.record(RoundPrivacy.from_context(ctx))          # ε after the round
    """

    def __init__(
        self,
        delta: float,
        epsilon_budget: float | None = None,
        accountant: AccountantKind = "rdp",
        amplification: bool = True,
    ) -> None:
        if not 0 < delta < 1:
            raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")
        if epsilon_budget is not None and not epsilon_budget > 0:
            raise PrivacyConfigError(f"epsilon_budget must be > 0, got {epsilon_budget}")
        self.delta = float(delta)
        self.epsilon_budget = None if epsilon_budget is None else float(epsilon_budget)
        self.accountant_kind: AccountantKind = accountant
        self.amplification = bool(amplification)
        self._accountant = _new_accountant(accountant)
        self._records: list[RoundRecord] = []
        self._spent = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def records(self) -> tuple[RoundRecord, ...]:
        return tuple(self._records)

    @property
    def epsilon(self) -> float:
        """ε spent so far at the ledger's δ (0 before any round), from the accountant's state."""
        return self._spent

    def projected_epsilon(self, next_round: RoundPrivacy, count: int = 1) -> float:
        """ε after ``count`` more rounds like ``next_round`` (the ledger is not changed)."""
        trial = copy.deepcopy(self._accountant)
        event = dp_event_for(next_round, self.amplification)
        trial.compose(event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count))
        return _epsilon(trial, self.delta)

    def check_can_run(self, next_round: RoundPrivacy) -> float:
        """Projected ε of the next round; :class:`PrivacyBudgetExceeded` if over budget."""
        self._check_order(next_round)
        projected = self.projected_epsilon(next_round)
        if self.epsilon_budget is not None and projected > self.epsilon_budget:
            raise PrivacyBudgetExceeded(
                spent=self.epsilon,
                projected=projected,
                budget=self.epsilon_budget,
                delta=self.delta,
                next_round=next_round.round,
            )
        return projected

    def rounds_within_budget(self, next_round: RoundPrivacy, limit: int = 100_000) -> int | None:
        """How many more rounds like ``next_round`` fit the budget (None: no budget)."""
        if self.epsilon_budget is None:
            return None
        budget = self.epsilon_budget
        if self.projected_epsilon(next_round) > budget:
            return 0
        lo, hi = 1, limit
        if self.projected_epsilon(next_round, hi) <= budget:
            return hi
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            if self.projected_epsilon(next_round, mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ updates
    def _check_order(self, rp: RoundPrivacy) -> None:
        if self._records and rp.round <= self._records[-1].round:
            raise PrivacyConfigError(
                f"round {rp.round} is not after the last recorded round "
                f"{self._records[-1].round}; each round is charged once"
            )

    def record(self, rp: RoundPrivacy) -> RoundRecord:
        """Charge a round that ran (always recorded, even past the budget: it happened)."""
        self._check_order(rp)
        self._accountant.compose(dp_event_for(rp, self.amplification))
        rec = RoundRecord(
            round=rp.round,
            noise_mode=rp.noise_mode,
            noise_multiplier=rp.noise_multiplier,
            sampling_rate=rp.sampling_rate,
            epsilon=_epsilon(self._accountant, self.delta),
        )
        self._records.append(rec)
        self._spent = rec.epsilon
        return rec

    def report(self) -> dict[str, float]:
        """Scalars for metrics/dashboards: ε, δ, rounds charged and the budget (or -1)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rounds": float(len(self._records)),
            "epsilon_budget": -1.0 if self.epsilon_budget is None else self.epsilon_budget,
        }

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": self.accountant_kind,
            "amplification": self.amplification,
            "dp_accounting_version": _dp_accounting_version(),
            "rounds": [
                {**asdict(r), "epsilon": r.epsilon if math.isfinite(r.epsilon) else None}
                for r in self._records
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        """Restore a ledger: the accountant is rebuilt by replaying the recorded rounds."""
        if data.get("format") != LEDGER_FORMAT or data.get("version") != LEDGER_VERSION:
            raise PrivacyConfigError(
                f"not a privacy ledger of version {LEDGER_VERSION}: format="
                f"{data.get('format')!r}, version={data.get('version')!r}"
            )
        ledger = cls(
            delta=float(data["delta"]),
            epsilon_budget=data.get("epsilon_budget"),
            accountant=data.get("accountant", "rdp"),
            amplification=bool(data.get("amplification", True)),
        )
        records = [
            RoundRecord(
                round=int(r["round"]),
                noise_mode=r["noise_mode"],
                noise_multiplier=float(r["noise_multiplier"]),
                sampling_rate=float(r["sampling_rate"]),
                epsilon=math.inf if r["epsilon"] is None else float(r["epsilon"]),
            )
            for r in data.get("rounds", [])
        ]
        # Replay runs of identical rounds as one self-composed event (fast for PLD too).
        events: list[dp_accounting.DpEvent] = []
        i = 0
        while i < len(records):
            j = i
            while (
                j + 1 < len(records) and records[j + 1].privacy._key() == records[i].privacy._key()
            ):
                j += 1
            event = dp_event_for(records[i].privacy, ledger.amplification)
            events.append(event if j == i else dp_accounting.SelfComposedDpEvent(event, j - i + 1))
            i = j + 1
        if events:
            ledger._accountant.compose(dp_accounting.ComposedDpEvent(events))
        ledger._records = records
        # The recomputed value is authoritative; stored per-round values are history.
        ledger._spent = _epsilon(ledger._accountant, ledger.delta) if records else 0.0
        return ledger

    @classmethod
    def from_json(cls, text: str) -> PrivacyLedger:
        return cls.from_dict(json.loads(text))


def _dp_accounting_version() -> str:
    try:
        return metadata.version("dp-accounting")
    except metadata.PackageNotFoundError:  # pragma: no cover - vendored installs
        return "unknown"
