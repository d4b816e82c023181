"""Accounting: ε equals dp_accounting's own value, pinned anchors, budget cap, JSON ledger."""

from __future__ import annotations

import json
import math

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedlora.config import PrivacySettings
from fedlora.privacy.dp import (
    PrivacyBudgetExceeded,
    PrivacyConfigError,
    PrivacyLedger,
    RoundContext,
    RoundPrivacy,
    dp_event_for,
    make_ledger,
)

DELTA = 1e-5
PLD_ONE_ROUND = 0.7927264657557976  # q = 0.05, z = 1.1, δ = 1e-5, computed once


def ledger_dict(rounds: int, accountant: str, q: float = 0.01, z: float = 1.0) -> dict:
    return {
        "format": "fedlora.privacy-ledger",
        "version": 1,
        "delta": DELTA,
        "epsilon_budget": None,
        "accountant": accountant,
        "amplification": True,
        "rounds": [
            {
                "round": r,
                "noise_mode": "central",
                "noise_multiplier": z,
                "sampling_rate": q,
                "epsilon": 0.0,
            }
            for r in range(1, rounds + 1)
        ],
    }


def test_round_events_follow_the_mode() -> None:
    gaussian = dpa.GaussianDpEvent(1.2)
    sampled = dpa.PoissonSampledDpEvent(0.05, gaussian)
    assert dp_event_for(RoundPrivacy(1, "central", 1.2, 0.05)) == sampled
    assert dp_event_for(RoundPrivacy(1, "distributed", 1.2, 0.05)) == sampled
    assert dp_event_for(RoundPrivacy(1, "local", 1.2, 0.05)) == gaussian  # server sees reports
    assert dp_event_for(RoundPrivacy(1, "central", 1.2, 0.05), amplification=False) == gaussian
    assert dp_event_for(RoundPrivacy(1, "none", 1.2, 0.05)) == dpa.NonPrivateDpEvent()
    assert dp_event_for(RoundPrivacy(1, "central", 0.0, 0.05)) == dpa.NonPrivateDpEvent()


def test_rdp_epsilon_equals_dp_accounting_every_round() -> None:
    ledger = PrivacyLedger(DELTA)
    q, z = 0.05, 1.1
    for r in range(1, 6):
        rec = ledger.record(RoundPrivacy(r, "distributed", z, q))
        expected = (
            rdp.RdpAccountant()
            .compose(
                dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), r)
            )
            .get_epsilon(DELTA)
        )
        assert rec.epsilon == pytest.approx(expected, rel=1e-9)
        assert ledger.epsilon == rec.epsilon
    assert ledger.epsilon == pytest.approx(1.5557020486982485, rel=1e-6)  # pinned anchor


def test_mixed_rounds_equal_dp_accounting_composition() -> None:
    rounds = [
        RoundPrivacy(1, "central", 1.0, 1.0),
        RoundPrivacy(2, "central", 2.0, 1.0),
        RoundPrivacy(3, "local", 4.0, 0.3),
    ]
    ledger = PrivacyLedger(DELTA)
    for rp in rounds:
        ledger.record(rp)
    expected = (
        rdp.RdpAccountant()
        .compose(dpa.GaussianDpEvent(1.0))
        .compose(dpa.GaussianDpEvent(2.0))
        .compose(dpa.GaussianDpEvent(4.0))
        .get_epsilon(DELTA)
    )
    assert ledger.epsilon == pytest.approx(expected, rel=1e-9)


def test_local_mode_is_charged_without_amplification() -> None:
    ledger = PrivacyLedger(DELTA)
    for r in range(1, 11):
        ledger.record(RoundPrivacy(r, "local", 5.0, 0.01))
    expected = rdp.RdpAccountant().compose(dpa.GaussianDpEvent(5.0), 10).get_epsilon(DELTA)
    assert ledger.epsilon == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon == pytest.approx(2.8136532471298397, rel=1e-6)  # pinned anchor


def test_pinned_anchors_for_1000_rounds() -> None:
    """q = 0.01, z = 1, 1000 rounds, δ = 1e-5: RDP and PLD values computed once."""
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.0)), 1000)
    ledger_rdp = PrivacyLedger.from_dict(ledger_dict(1000, "rdp"))
    assert ledger_rdp.epsilon == pytest.approx(
        rdp.RdpAccountant().compose(event).get_epsilon(DELTA), rel=1e-9
    )
    assert ledger_rdp.epsilon == pytest.approx(2.101366525420273, rel=1e-6)
    ledger_pld = PrivacyLedger.from_dict(ledger_dict(1000, "pld"))
    assert ledger_pld.epsilon == pytest.approx(1.8282436455855091, rel=1e-4)
    assert ledger_pld.epsilon < ledger_rdp.epsilon  # PLD is the tighter accountant


def test_pld_ledger_matches_pld_accountant() -> None:
    ledger = PrivacyLedger(DELTA, accountant="pld")
    ledger.record(RoundPrivacy(1, "central", 1.1, 0.05))
    expected = (
        pld.PLDAccountant()
        .compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(1.1)))
        .get_epsilon(DELTA)
    )
    assert ledger.epsilon == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon == pytest.approx(PLD_ONE_ROUND, rel=1e-4)  # pinned anchor


def test_budget_cap_stops_before_the_round_that_would_exceed_it() -> None:
    ledger = PrivacyLedger(DELTA, epsilon_budget=3.0)
    ran = 0
    with pytest.raises(PrivacyBudgetExceeded) as err:
        for r in range(1, 100):
            rp = RoundPrivacy(r, "central", 2.0, 1.0)
            ledger.check_can_run(rp)
            ledger.record(rp)
            ran += 1
    exc = err.value
    assert ran >= 1
    assert ledger.epsilon <= 3.0  # never over budget
    assert exc.projected > 3.0 and exc.spent == ledger.epsilon and exc.budget == 3.0
    assert exc.next_round == ran + 1
    msg = str(exc)
    assert f"round {ran + 1}" in msg and "budget ε=3" in msg and f"{ledger.epsilon:.4g}" in msg
    assert ledger.rounds_within_budget(RoundPrivacy(ran + 1, "central", 2.0, 1.0)) == 0


def test_rounds_within_budget_is_exact() -> None:
    ledger = PrivacyLedger(DELTA, epsilon_budget=4.0)
    rp = RoundPrivacy(1, "central", 2.5, 1.0)
    k = ledger.rounds_within_budget(rp)
    assert k is not None and k >= 1
    assert ledger.projected_epsilon(rp, k) <= 4.0 < ledger.projected_epsilon(rp, k + 1)
    assert PrivacyLedger(DELTA).rounds_within_budget(rp) is None


def test_no_noise_means_infinite_epsilon_and_budget_refuses() -> None:
    ledger = PrivacyLedger(DELTA, epsilon_budget=10.0)
    with pytest.raises(PrivacyBudgetExceeded, match="inf"):
        ledger.check_can_run(RoundPrivacy(1, "none", 0.0, 0.1))
    open_ledger = PrivacyLedger(DELTA)
    open_ledger.record(RoundPrivacy(1, "none", 0.0, 0.1))
    assert math.isinf(open_ledger.epsilon)
    again = PrivacyLedger.from_json(open_ledger.to_json())  # inf survives JSON (as null)
    assert math.isinf(again.epsilon)


def test_ledger_json_round_trip_and_resume() -> None:
    ledger = PrivacyLedger(DELTA, epsilon_budget=50.0)
    for r in (1, 2, 3):
        ledger.record(RoundPrivacy(r, "central", 1.5, 1.0))
    ledger.record(RoundPrivacy(5, "local", 3.0, 0.2))
    ledger.record(RoundPrivacy(6, "central", 0.8, 1.0))
    text = ledger.to_json()
    data = json.loads(text)
    assert data["format"] == "fedlora.privacy-ledger" and len(data["rounds"]) == 5
    assert data["dp_accounting_version"]
    restored = PrivacyLedger.from_json(text)
    assert restored.records == ledger.records
    assert restored.epsilon == pytest.approx(ledger.epsilon, rel=1e-9)
    assert (restored.delta, restored.epsilon_budget) == (ledger.delta, ledger.epsilon_budget)
    assert restored.to_json() == text
    nxt = RoundPrivacy(7, "central", 1.0, 1.0)
    assert restored.record(nxt).epsilon == pytest.approx(ledger.record(nxt).epsilon, rel=1e-9)


def test_rounds_are_charged_once_and_in_order() -> None:
    ledger = PrivacyLedger(DELTA)
    ledger.record(RoundPrivacy(3, "central", 1.0, 1.0))
    with pytest.raises(PrivacyConfigError, match="charged once"):
        ledger.record(RoundPrivacy(3, "central", 1.0, 1.0))
    with pytest.raises(PrivacyConfigError, match="not a privacy ledger"):
        PrivacyLedger.from_dict({"format": "something"})


def test_ledger_from_settings_and_context() -> None:
    settings = PrivacySettings(
        noise="central", noise_multiplier=1.2, epsilon_budget=8.0, delta=1e-6
    )
    ledger = make_ledger(settings)
    assert (ledger.delta, ledger.epsilon_budget) == (1e-6, 8.0)
    ctx = RoundContext(
        round=1,
        clip_norm=1.0,
        num_sampled=10,
        noise_mode="central",
        noise_multiplier=1.2,
        sampling_rate=0.02,
    )
    rp = RoundPrivacy.from_context(ctx)
    assert (rp.noise_multiplier, rp.sampling_rate, rp.noise_mode) == (1.2, 0.02, "central")
    assert ledger.check_can_run(rp) == pytest.approx(ledger.record(rp).epsilon)
    assert ledger.report()["epsilon"] == ledger.epsilon
