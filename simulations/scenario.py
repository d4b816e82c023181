"""Scenarios: a simulated run described in one TOML file.

A scenario file is a ``fedlora.toml`` (any section: model, lora, client, privacy,
aggregation, server, data, simulation) plus a ``[scenario]`` table with what only a
simulation has: the device behaviour knobs (:class:`ScenarioKnobs`) and the end-of-run
evaluation. The number of simulated phones is ``data.num_clients`` (one phone per synthetic
user) and the device population is ``simulation.population``.

Bundled scenarios live in ``simulations/scenarios/<name>.toml``; ``--scenario`` takes such a
name or a path. ``--set`` overrides use the same dotted keys, ``scenario.*`` included, and a
bad value is a :class:`~fedlora.errors.ConfigError` naming the key and its allowed range.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedlora.aggregation import per_phone_privacy_problems
from fedlora.config import FedloraSettings, parse_override, settings_from_dict
from fedlora.errors import ConfigError
from fedlora.simulations.behaviour import BehaviourKnobs
from fedlora.simulations.population import POPULATIONS

SCENARIO_PACKAGE = "fedlora.simulations.scenarios"
LINEAR_RULES = ("rank_fedavg", "hetlora", "ffa", "fedsa", "flexlora")


class ScenarioKnobs(BaseModel):
    """The ``[scenario]`` table."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = ""
    description: str = ""
    deadline_s: float | None = Field(
        600.0, gt=0, description="simulated device seconds a phone has for its round"
    )
    step_seconds: float = Field(
        2.0, gt=0, le=3600, description="simulated seconds of one local step on a reference phone"
    )
    start_hour: float = Field(0.0, ge=0, lt=24, description="UTC hour of round 1")
    hours_per_round: float = Field(1.0, ge=0, le=24, description="simulated hours between rounds")
    dropout_scale: float = Field(1.0, ge=0, le=100, description="multiplies dropout chances")
    policy: Literal["default", "always"] = "default"
    evaluate: bool = Field(True, description="end-of-run triad: base/community/local/central")
    eval_phones: int = Field(16, ge=1, le=100_000, description="phones in the evaluation sample")
    eval_per_round: bool = Field(True, description="evaluate every round's community adapter")
    central_batch_size: int | None = Field(
        None, ge=1, le=65536, description="centralized baseline batch (default 4 x client batch)"
    )
    node_wait_s: float = Field(120.0, gt=0, description="how long round 1 waits for phones")

    def behaviour(self) -> BehaviourKnobs:
        return BehaviourKnobs(
            deadline_s=self.deadline_s,
            step_seconds=self.step_seconds,
            start_hour=self.start_hour,
            hours_per_round=self.hours_per_round,
            dropout_scale=self.dropout_scale,
            policy=self.policy,
        )


@dataclass(frozen=True)
class Scenario:
    """A loaded, validated scenario."""

    name: str
    source: str
    knobs: ScenarioKnobs
    settings: FedloraSettings

    @property
    def num_phones(self) -> int:
        return self.settings.data.num_clients

    def to_toml(self) -> str:
        """The effective scenario (every key), enough to rerun it exactly."""
        doc: dict[str, Any] = {"scenario": self.knobs.model_dump(exclude_none=True)}
        doc.update(self.settings.model_dump(exclude_none=True))
        return tomli_w.dumps(doc)


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``simulations/scenarios/``."""
    root = resources.files(SCENARIO_PACKAGE)
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def _read(ref: str) -> tuple[str, str, dict[str, Any]]:
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ConfigError([f"{path}: scenario file not found"])
        text, name, source = path.read_text(), path.stem, str(path)
    else:
        res = resources.files(SCENARIO_PACKAGE).joinpath(f"{ref}.toml")
        if not res.is_file():
            raise ConfigError(
                [
                    f"scenario {ref!r}: no such file and not a bundled scenario; bundled: "
                    + ", ".join(bundled_scenarios())
                ]
            )
        text, name, source = res.read_text(), ref, f"bundled:{ref}"
    try:
        return name, source, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None


def _knobs(table: dict[str, Any]) -> ScenarioKnobs:
    try:
        return ScenarioKnobs.model_validate(table)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = "scenario." + ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (see docs/simulation.md for the [scenario] keys)"
            problems.append(f"{key}: {msg}; got {err.get('input')!r}")
        raise ConfigError(problems) from None


def check_scenario(s: Scenario) -> None:
    """Cross-field checks a single section cannot make; raises ConfigError listing all."""
    cfg = s.settings
    problems: list[str] = []
    if cfg.simulation.population not in POPULATIONS:
        problems.append(
            f"simulation.population: unknown population {cfg.simulation.population!r}; "
            f"allowed values: {', '.join(sorted(POPULATIONS))}"
        )
    if cfg.server.clients_per_round > cfg.data.num_clients:
        problems.append(
            f"server.clients_per_round ({cfg.server.clients_per_round}) exceeds the number "
            f"of phones, data.num_clients ({cfg.data.num_clients})"
        )
    if cfg.privacy.secure_aggregation and cfg.aggregation.rule not in LINEAR_RULES:
        problems.append(
            f"aggregation.rule: {cfg.aggregation.rule!r} cannot run under secure aggregation; "
            f"allowed values: {', '.join(LINEAR_RULES)}"
        )
    # central / distributed noise protect a sum, which a per-phone rule (flora) never forms
    # (secure aggregation is reported just above)
    problems += per_phone_privacy_problems(
        cfg.aggregation, secure_aggregation=False, noise=cfg.privacy.noise
    )
    if cfg.data.source != "synthetic":
        problems.append("data.source: simulations generate their phones' data ('synthetic')")
    if problems:
        raise ConfigError(problems)


def load_scenario(ref: str, overrides: Iterable[str] = ()) -> Scenario:
    """A bundled scenario by name, or a scenario file by path, with ``--set`` overrides."""
    name, source, doc = _read(ref)
    table = doc.pop("scenario", {})
    if not isinstance(table, dict):
        raise ConfigError([f"{source}: [scenario] must be a table"])
    setting_overrides: list[str] = []
    for item in overrides:
        path, value = parse_override(item)
        if path[0] == "scenario":
            if len(path) != 2:
                raise ConfigError([f"{item}: scenario keys are one level deep (scenario.key)"])
            table[path[1]] = value
        else:
            setting_overrides.append(item)
    knobs = _knobs(table)
    settings = settings_from_dict(doc, setting_overrides)
    scenario = Scenario(name=knobs.name or name, source=source, knobs=knobs, settings=settings)
    check_scenario(scenario)
    return scenario
