"""Device policy: the real sysfs probe run on fake device trees, and the round's answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedlora.client.device_probe import SysfsProbe, read_network, read_power, read_temperature
from fedlora.client.policy import (
    ALWAYS_ALLOW,
    DevicePolicy,
    DeviceState,
    StaticProbe,
    evaluate,
)


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def phone_tree(
    root: Path,
    *,
    status: str = "Charging",
    capacity: int = 80,
    usb_online: int = 1,
    zone_temps_milli: Sequence[int] = (31000, 35500),
    battery_temp_tenths: int = 300,
    route_iface: str | None = "wlan0",
    up: Sequence[str] = ("wlan0",),
) -> Path:
    """An Android-like /sys + /proc tree (what a phone exposes)."""
    write(root, "sys/class/power_supply/battery/type", "Battery")
    write(root, "sys/class/power_supply/battery/status", status)
    write(root, "sys/class/power_supply/battery/capacity", str(capacity))
    write(root, "sys/class/power_supply/battery/temp", str(battery_temp_tenths))
    write(root, "sys/class/power_supply/usb/type", "USB")
    write(root, "sys/class/power_supply/usb/online", str(usb_online))
    for i, t in enumerate(zone_temps_milli):
        write(root, f"sys/class/thermal/thermal_zone{i}/temp", str(t))
    for iface in ("wlan0", "rmnet_data0", "lo"):
        write(root, f"sys/class/net/{iface}/operstate", "up" if iface in up else "down")
    (root / "sys/class/net/wlan0/wireless").mkdir(parents=True, exist_ok=True)
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT"
    rows = [header]
    if route_iface:
        rows.append(f"{route_iface}\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0")
    write(root, "proc/net/route", "\n".join(rows))
    return root


def test_charging_cool_wifi_phone_may_train(tmp_path: Path) -> None:
    state = SysfsProbe(phone_tree(tmp_path)).read()
    assert state.charging is True
    assert state.battery_pct == 80
    assert state.has_battery is True
    assert state.network == "unmetered"
    assert state.temperature_c == pytest.approx(35.5)
    assert evaluate(DevicePolicy(), state).allowed


@pytest.mark.parametrize(
    ("tree", "reason"),
    [
        ({"status": "Discharging", "usb_online": 0}, "not charging"),
        ({"capacity": 20}, "battery 20% < 50%"),
        ({"zone_temps_milli": (31000, 47000)}, "temperature 47.0C > 40.0C"),
        ({"battery_temp_tenths": 452}, "temperature 45.2C > 40.0C"),
        ({"route_iface": "rmnet_data0", "up": ("rmnet_data0",)}, "metered network"),
        ({"route_iface": None, "up": ("rmnet_data0",)}, "metered network"),
    ],
)
def test_policy_denies_with_reason(tmp_path: Path, tree: dict, reason: str) -> None:
    state = SysfsProbe(phone_tree(tmp_path, **tree)).read()
    decision = evaluate(DevicePolicy(), state)
    assert not decision.allowed
    assert decision.reason == reason


def test_full_battery_on_charger_counts_as_charging(tmp_path: Path) -> None:
    root = phone_tree(tmp_path, status="Full", usb_online=0, capacity=100)
    assert read_power(root).charging is True


def test_empty_tree_is_unknown_and_policy_decides(tmp_path: Path) -> None:
    (tmp_path / "sys/class/power_supply").mkdir(parents=True)
    state = SysfsProbe(tmp_path).read()
    assert state.charging is None and state.battery_pct is None
    assert state.network == "unknown" and state.temperature_c is None
    denied = evaluate(DevicePolicy(), state)
    assert not denied.allowed and denied.reason == "power state unknown"
    assert evaluate(DevicePolicy(unknown="allow"), state).allowed
    assert evaluate(ALWAYS_ALLOW, state).allowed


def test_desktop_on_mains_without_battery(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/power_supply/AC/type", "Mains")
    write(tmp_path, "sys/class/power_supply/AC/online", "1")
    write(tmp_path, "sys/class/net/eth0/operstate", "up")
    state = SysfsProbe(tmp_path).read()
    assert state.charging is True and state.has_battery is False
    assert state.network == "unmetered"
    # no battery: the battery threshold does not apply; temperature unknown denies by default
    assert evaluate(DevicePolicy(max_temperature_c=float("inf")), state).allowed


def test_thermal_units_and_implausible_readings(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "42")  # already in C
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "-273000")  # broken sensor
    write(tmp_path, "sys/class/thermal/thermal_zone2/temp", "38500")
    assert read_temperature(tmp_path) == pytest.approx(42.0)


def test_nmcli_metered_flag_is_used(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def nmcli(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        if argv[0] != "nmcli":
            return None
        return (
            "GENERAL.DEVICE:wlp2s0\nGENERAL.STATE:100 (connected)\nGENERAL.METERED:yes (guessed)\n"
            "\nGENERAL.DEVICE:lo\nGENERAL.STATE:100 (connected (externally))\n"
            "GENERAL.METERED:no\n"
        )

    kind, source = read_network(tmp_path, nmcli)
    assert (kind, source) == ("metered", "nmcli")
    assert calls[0][0] == "termux-wifi-connectioninfo"


def test_termux_wifi_info(tmp_path: Path) -> None:
    def termux(info: dict) -> object:
        def run(argv: Sequence[str]) -> str | None:
            return json.dumps(info) if argv[0] == "termux-wifi-connectioninfo" else None

        return run

    wifi = {"supplicant_state": "COMPLETED", "ip": "192.168.1.5", "ssid": "home"}
    assert read_network(tmp_path, termux(wifi)) == ("unmetered", "termux")  # type: ignore[arg-type]
    off = {"supplicant_state": "DISCONNECTED", "ip": "0.0.0.0"}
    assert read_network(tmp_path, termux(off)) == ("metered", "termux")  # type: ignore[arg-type]


def test_fake_tree_never_consults_host_commands(tmp_path: Path) -> None:
    assert SysfsProbe(tmp_path).commands is None
    assert SysfsProbe("/").commands is not None


def test_static_probe_for_simulations() -> None:
    state = DeviceState(charging=True, battery_pct=90, network="unmetered", temperature_c=30)
    assert evaluate(DevicePolicy(), StaticProbe(state).read()).allowed
    hot = DeviceState(charging=True, battery_pct=90, network="unmetered", temperature_c=41)
    assert not evaluate(DevicePolicy(), StaticProbe(hot).read()).allowed
