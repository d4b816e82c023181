"""Device policy: a phone trains only when the user would not notice.

Federated training on phones is only acceptable when it costs the user nothing: the phone
is charging (and the battery is not low), on an unmetered network (no mobile data bill),
and cool (training heats the SoC; a hot phone throttles and annoys). :func:`evaluate` turns a
:class:`DeviceState` and a :class:`DevicePolicy` into a :class:`PolicyDecision`; a phone that
may not train answers the round with status ``not_allowed`` and the reason — not an error.

Where the state comes from is a :class:`DeviceProbe` (a Protocol with one method, ``read``):

* :class:`fedlora.client.device_probe.SysfsProbe` reads Linux/Android sysfs under a root
  path (tests point it at a fake tree) and asks Termux or NetworkManager about the network;
* :class:`StaticProbe` returns a fixed state, for simulated populations.

Unknown values (a sysfs the OS hides, a network nobody can classify) are decided by
``DevicePolicy.unknown``: ``deny`` (the default, the safe choice on a real phone) or
``allow`` (desktops and development machines, which have no battery or metered network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

NetworkKind = Literal["unmetered", "metered", "unknown"]
UnknownRule = Literal["allow", "deny"]


@dataclass(frozen=True)
class DeviceState:
    """What the phone knows about itself right now; ``None`` means could not be read."""

    charging: bool | None = None
    battery_pct: float | None = None
    has_battery: bool | None = None
    network: NetworkKind = "unknown"
    temperature_c: float | None = None
    source: str = ""


class DeviceProbe(Protocol):
    """Anything that can tell the current :class:`DeviceState`."""

    def read(self) -> DeviceState: ...


@dataclass(frozen=True)
class StaticProbe:
    """A probe that always reports the same state (simulated phones, tests, demos)."""

    state: DeviceState

    def read(self) -> DeviceState:
        return self.state


@dataclass(frozen=True)
class DevicePolicy:
    """When a phone may train. Thresholds are inclusive (battery ≥ min, temperature ≤ max)."""

    require_charging: bool = True
    min_battery_pct: float = 50.0
    require_unmetered: bool = True
    max_temperature_c: float = 40.0
    unknown: UnknownRule = "deny"


ALWAYS_ALLOW = DevicePolicy(
    require_charging=False,
    min_battery_pct=0.0,
    require_unmetered=False,
    max_temperature_c=float("inf"),
    unknown="allow",
)


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    reason: str


def evaluate(policy: DevicePolicy, state: DeviceState) -> PolicyDecision:
    """Allowed, or the first reason why not (short, for the round report)."""
    deny_unknown = policy.unknown == "deny"
    if policy.require_charging:
        if state.charging is None and deny_unknown:
            return PolicyDecision(False, "power state unknown")
        if state.charging is False:
            return PolicyDecision(False, "not charging")
    if policy.min_battery_pct > 0 and state.has_battery is not False:
        if state.battery_pct is None and deny_unknown:
            return PolicyDecision(False, "battery level unknown")
        if state.battery_pct is not None and state.battery_pct < policy.min_battery_pct:
            return PolicyDecision(
                False, f"battery {state.battery_pct:.0f}% < {policy.min_battery_pct:.0f}%"
            )
    if policy.require_unmetered:
        if state.network == "unknown" and deny_unknown:
            return PolicyDecision(False, "network metering unknown")
        if state.network == "metered":
            return PolicyDecision(False, "metered network")
    if policy.max_temperature_c != float("inf"):
        if state.temperature_c is None and deny_unknown:
            return PolicyDecision(False, "temperature unknown")
        if state.temperature_c is not None and state.temperature_c > policy.max_temperature_c:
            return PolicyDecision(
                False,
                f"temperature {state.temperature_c:.1f}C > {policy.max_temperature_c:.1f}C",
            )
    return PolicyDecision(True, "allowed")
