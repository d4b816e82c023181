"""Device populations: profiles are deterministic, follow their distributions, and drive
per-round behaviour (policy, deadline, dropouts) the same way in every process."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from fedlora.errors import ConfigError
from fedlora.simulations.behaviour import (
    PLAIN_STAGES,
    SECURE_STAGES,
    BehaviourKnobs,
    round_behaviour,
    simulated_seconds,
)
from fedlora.simulations.population import (
    POPULATIONS,
    describe,
    fit_rank,
    get_population,
    profile_for,
    rank_for_ram,
    run_rank,
)


def test_profiles_are_deterministic_and_seeded() -> None:
    fresh = profile_for.__wrapped__  # bypass the per-process cache
    for pid in (0, 7, 999):
        assert fresh("mixed", 3, pid) == profile_for("mixed", 3, pid)
    assert [fresh("mixed", 0, p) for p in range(20)] != [fresh("mixed", 1, p) for p in range(20)]
    assert fresh("mixed", 0, 5) != fresh("mixed", 0, 6)


def test_profiles_are_the_same_in_another_process() -> None:
    code = (
        "from fedlora.simulations.population import profile_for;"
        "print(repr(profile_for('flaky', 11, 42)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr(profile_for("flaky", 11, 42))


def test_mixed_population_follows_its_class_weights() -> None:
    n = 3000
    d = describe("mixed", 0, n)
    classes = d["classes"]
    assert isinstance(classes, dict)
    for cls in get_population("mixed").classes:
        assert classes[cls.name] / n == pytest.approx(cls.weight, abs=0.03)
    # RAM decides the rank tier: budget → 4, mid → 8, flagship → 16
    assert d["ranks"] == {4: classes["budget"], 8: classes["mid"], 16: classes["flagship"]}
    assert 0.8 < float(d["speed_median"]) < 1.3  # type: ignore[arg-type]


def test_profile_values_stay_in_their_class_ranges() -> None:
    for name, pop in POPULATIONS.items():
        by_name = {c.name: c for c in pop.classes}
        for pid in range(300):
            p = profile_for(name, 2, pid)
            c = by_name[p.device_class]
            assert p.ram_mb in c.ram_mb
            assert c.speed[0] <= p.speed <= c.speed[1] + 1e-9
            assert c.dropout_prob[0] <= p.dropout_prob <= c.dropout_prob[1] + 1e-12
            assert p.backend in {b for b, _ in c.backends}
            assert p.tz_offset_h in pop.tz_offsets_h


def test_rank_tiers_fit_the_runs_ranks() -> None:
    assert [rank_for_ram(m * 1024) for m in (3, 4, 6, 8, 12, 16)] == [4, 4, 8, 8, 16, 16]
    assert fit_rank(16, [4, 8]) == 8
    assert fit_rank(4, [8, 16]) == 8  # below every group: the smallest
    assert fit_rank(8, [2, 4, 8, 16]) == 8
    uniform = [run_rank("uniform", profile_for("uniform", 0, p), [4, 8, 16]) for p in range(6)]
    assert uniform == [4, 8, 16, 4, 8, 16]  # lab phones cycle like the default ClientApp


def test_unknown_population_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"allowed values: .*mixed"):
        get_population("nope")


def test_round_behaviour_is_deterministic_and_policy_driven() -> None:
    knobs = BehaviourKnobs()
    p = profile_for("mixed", 0, 12)
    assert round_behaviour(p, 3, 0, knobs, True) == round_behaviour(p, 3, 0, knobs, True)
    allowed = Counter(
        round_behaviour(profile_for("mixed", 0, pid), 1, 0, knobs, True).decision.allowed
        for pid in range(1000)
    )
    share = allowed[True] / 1000
    assert 0.2 < share < 0.95, share  # nightly chargers on Wi-Fi train; others may not
    reasons = Counter(
        round_behaviour(profile_for("mixed", 0, pid), 1, 0, knobs, True).decision.reason
        for pid in range(1000)
    )
    assert reasons["not charging"] > 0 and reasons["metered network"] > 0
    always = BehaviourKnobs(policy="always")
    assert all(
        round_behaviour(profile_for("mixed", 0, pid), 1, 0, always, True).decision.allowed
        for pid in range(200)
    )


def test_training_hours_follow_the_clock() -> None:
    """At 03:00 UTC most of a European-band population is on its charger; at 15:00 few are."""
    night = BehaviourKnobs(start_hour=3.0)
    day = BehaviourKnobs(start_hour=15.0)

    def charging(knobs: BehaviourKnobs) -> int:
        return sum(
            bool(round_behaviour(profile_for("mixed", 0, p), 1, 0, knobs, False).state.charging)
            for p in range(500)
        )

    assert charging(night) > 2 * charging(day)


def test_dropouts_spread_over_protocol_stages() -> None:
    knobs = BehaviourKnobs(dropout_scale=1000.0)  # everyone drops somewhere
    stages = Counter(
        round_behaviour(profile_for("flaky", 0, p), 2, 0, knobs, True).vanish_stage
        for p in range(1000)
    )
    assert set(stages) == set(SECURE_STAGES)
    assert min(stages.values()) > 120  # roughly uniform over the 5 stages
    plain = {
        round_behaviour(profile_for("flaky", 0, p), 2, 0, knobs, False).vanish_stage
        for p in range(100)
    }
    assert plain == set(PLAIN_STAGES)
    none = BehaviourKnobs(dropout_scale=0.0)
    assert all(
        round_behaviour(profile_for("flaky", 0, p), 2, 0, none, True).vanish_stage is None
        for p in range(200)
    )


def test_simulated_round_time_scales_with_speed_and_network() -> None:
    fast, slow = sorted((profile_for("mixed", 0, p) for p in range(200)), key=lambda p: p.speed)[
        ::199
    ][::-1]
    kw = dict(steps=10, batch_size=8, rank=8, bytes_down=1 << 20, bytes_up=1 << 21, messages=5)
    t_fast = simulated_seconds(fast, step_seconds=2.0, **kw)
    t_slow = simulated_seconds(slow, step_seconds=2.0, **kw)
    assert t_slow > t_fast > 10 * 2.0 / fast.speed
