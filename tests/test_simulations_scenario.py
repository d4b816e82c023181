"""Scenario files: every bundled scenario parses and validates; overrides and errors name keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.errors import ConfigError
from fedlora.simulations.scenario import bundled_scenarios, load_scenario

EXPECTED = {"smoke", "default", "phones-1000", "dp-strict", "hetero-ranks", "flaky-network"}


def test_every_bundled_scenario_loads_and_validates() -> None:
    names = set(bundled_scenarios())
    assert names >= EXPECTED
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.knobs.description, f"{name} has no description"
        assert sc.settings.server.clients_per_round <= sc.num_phones
        assert sc.source == f"bundled:{name}"


def test_scenarios_have_the_promised_shape() -> None:
    smoke = load_scenario("smoke")
    assert smoke.num_phones <= 10 and smoke.settings.server.rounds <= 2
    default = load_scenario("default")
    s = default.settings
    assert 150 <= default.num_phones <= 250 and 15 <= s.server.clients_per_round <= 25
    assert sorted(s.simulation.ranks) == [4, 8, 16]
    assert s.privacy.noise != "none" and s.privacy.secure_aggregation
    assert load_scenario("phones-1000").num_phones == 1000
    flaky = load_scenario("flaky-network")
    assert flaky.settings.simulation.population == "flaky"
    assert len(set(load_scenario("hetero-ranks").settings.simulation.ranks)) >= 3
    assert load_scenario("dp-strict").settings.privacy.epsilon_budget is not None


def test_overrides_reach_settings_and_knobs() -> None:
    sc = load_scenario(
        "smoke", ["server.rounds=3", "scenario.deadline_s=12.5", "privacy.clip_norm=0.25"]
    )
    assert sc.settings.server.rounds == 3
    assert sc.knobs.deadline_s == 12.5
    assert sc.settings.privacy.clip_norm == 0.25


def test_effective_scenario_round_trips(tmp_path: Path) -> None:
    sc = load_scenario("default", ["scenario.eval_phones=5", "data.seed=4"])
    path = tmp_path / "again.toml"
    path.write_text(sc.to_toml())
    again = load_scenario(str(path))
    assert again.settings == sc.settings
    assert again.knobs == sc.knobs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scenario.bogus=1"], "scenario.bogus: unknown key"),
        (["scenario.step_seconds=-1"], "scenario.step_seconds"),
        (["server.clients_per_round=50"], "exceeds the number of phones"),
        (["simulation.population=martian"], "unknown population 'martian'"),
        (
            ["privacy.secure_aggregation=true", "aggregation.rule=flora"],
            "cannot run under secure aggregation",
        ),
        (["privacy.clip_norm=-3"], "privacy.clip_norm"),
    ],
)
def test_bad_values_name_their_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_scenario("smoke", overrides)


def test_unknown_scenario_lists_the_bundled_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"bundled: .*smoke"):
        load_scenario("no-such-scenario")
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(str(bad))
