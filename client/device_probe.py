"""Reading a Linux/Android device's power, temperature and network state.

Everything is read under a ``root`` path (``/`` on a real device), so tests run the very
same code on a fake sysfs tree in a temporary directory. Sources, in order of trust:

**Power** — ``<root>/sys/class/power_supply/*``: entries with ``type`` ``Battery`` give
``capacity`` (percent), ``status`` (``Charging``/``Full``/``Not charging`` = on external
power, ``Discharging`` = not) and ``temp`` (tenths of °C on Android); entries of type
``Mains``/``USB``/``Wireless``/... with ``online`` = 1 mean external power. No entries at all
(many containers and VMs): unknown.

**Temperature** — the hottest of ``<root>/sys/class/thermal/thermal_zone*/temp``
(millidegrees C; values that are clearly already in °C are taken as such) and the battery's
own temperature. Implausible readings (below −40 °C or above 150 °C) are ignored.

**Network metering** — the first of these that gives an answer:

1. Termux (Android): ``termux-wifi-connectioninfo``; a completed Wi-Fi association means
   unmetered, no Wi-Fi means the phone is on mobile data or offline: metered. (Android can
   mark a Wi-Fi network metered; Termux does not expose that flag, so a metered hotspot
   reads as unmetered — documented limitation.)
2. NetworkManager (Linux): ``nmcli -t -f GENERAL.DEVICE,GENERAL.STATE,GENERAL.METERED dev
   show``; any connected device with ``METERED`` ``yes``/``yes (guessed)`` means metered,
   otherwise ``no``/``no (guessed)`` on a connected device means unmetered.
3. Heuristic on the tree: the interface of the default route (``<root>/proc/net/route``),
   else the interfaces that are up (``<root>/sys/class/net/*/operstate``): cellular modem
   interfaces (``rmnet*``, ``ccmni*``, ``wwan*``, ``pdp*``...) are metered; Wi-Fi
   (``wlan*``/``wl*`` or a ``wireless`` directory) and Ethernet (``eth*``/``en*``) unmetered.
4. Otherwise ``unknown``, which the policy decides.

Commands are only run when ``root`` is ``/`` (a fake tree must not consult the host's
NetworkManager) unless a ``commands`` runner is passed explicitly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlora.client.policy import DeviceState, NetworkKind

CommandRunner = Callable[[Sequence[str]], str | None]
"""Runs a command; returns its stdout, or None when the tool is missing or fails."""

EXTERNAL_POWER_TYPES = ("Mains", "USB", "USB_C", "USB_PD", "USB_DCP", "USB_CDP", "Wireless")
ON_POWER_STATUS = ("Charging", "Full", "Not charging")
CELLULAR_PREFIXES = ("rmnet", "ccmni", "wwan", "pdp", "ppp", "seth_lte", "v4-rmnet", "usb")
WIFI_PREFIXES = ("wlan", "wlp", "wl", "wifi")
ETHERNET_PREFIXES = ("eth", "enp", "eno", "ens", "enx")
VIRTUAL_PREFIXES = ("lo", "docker", "veth", "br-", "virbr", "tun", "tap", "wg", "dummy", "bond")


def run_command(argv: Sequence[str], timeout: float = 3.0) -> str | None:
    """Run a tool if it is installed; its stdout, or None."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_number(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class PowerReading:
    charging: bool | None
    battery_pct: float | None
    has_battery: bool | None
    battery_temp_c: float | None


def read_power(root: Path) -> PowerReading:
    base = root / "sys/class/power_supply"
    entries = sorted(base.iterdir()) if base.is_dir() else []
    if not entries:
        return PowerReading(None, None, None, None)
    external: bool | None = None
    battery_on_power: bool | None = None
    levels: list[float] = []
    temps: list[float] = []
    has_battery = False
    for entry in entries:
        kind = _read(entry / "type") or ""
        if kind == "Battery":
            has_battery = True
            level = _read_number(entry / "capacity")
            if level is not None:
                levels.append(level)
            status = _read(entry / "status")
            if status is not None:
                on = status in ON_POWER_STATUS
                battery_on_power = on if battery_on_power is None else (battery_on_power or on)
            temp = _read_number(entry / "temp")
            if temp is not None:
                temps.append(temp / 10.0)
        elif kind in EXTERNAL_POWER_TYPES or kind.startswith("USB"):
            online = _read_number(entry / "online")
            if online is not None:
                external = bool(online) if external is None else (external or bool(online))
    if external:
        charging: bool | None = True
    elif battery_on_power is not None:
        charging = battery_on_power
    else:
        charging = external
    return PowerReading(
        charging=charging,
        battery_pct=min(levels) if levels else None,
        has_battery=has_battery,
        battery_temp_c=max(temps) if temps else None,
    )


def _celsius(raw: float) -> float:
    return raw / 1000.0 if abs(raw) >= 200 else raw


def read_temperature(root: Path, battery_temp_c: float | None = None) -> float | None:
    """The hottest plausible thermal zone (and battery) temperature in °C."""
    readings = [] if battery_temp_c is None else [battery_temp_c]
    base = root / "sys/class/thermal"
    if base.is_dir():
        for zone in sorted(base.glob("thermal_zone*")):
            raw = _read_number(zone / "temp")
            if raw is not None:
                readings.append(_celsius(raw))
    plausible = [t for t in readings if -40.0 <= t <= 150.0]
    return max(plausible) if plausible else None


def _termux_network(commands: CommandRunner) -> NetworkKind | None:
    out = commands(["termux-wifi-connectioninfo"])
    if out is None:
        return None
    try:
        info = json.loads(out)
    except json.JSONDecodeError:
        return None
    if not isinstance(info, dict):
        return None
    connected = info.get("supplicant_state") == "COMPLETED" and info.get("ip") not in (
        None,
        "0.0.0.0",
    )
    return "unmetered" if connected else "metered"


def _nmcli_network(commands: CommandRunner) -> NetworkKind | None:
    fields = "GENERAL.DEVICE,GENERAL.STATE,GENERAL.METERED"
    out = commands(["nmcli", "-t", "-f", fields, "dev", "show"])
    if out is None:
        return None
    devices: list[dict[str, str]] = [{}]
    for line in out.splitlines():
        if not line.strip():
            devices.append({})
            continue
        key, _, value = line.partition(":")
        devices[-1][key.strip()] = value.strip()
    seen_unmetered = False
    for dev in devices:
        if not dev.get("GENERAL.STATE", "").startswith("100"):  # 100 = connected
            continue
        metered = dev.get("GENERAL.METERED", "unknown")
        if metered.startswith("yes"):
            return "metered"
        if metered.startswith("no"):
            seen_unmetered = True
    return "unmetered" if seen_unmetered else None


def _classify_interface(root: Path, name: str) -> NetworkKind | None:
    if name.startswith(VIRTUAL_PREFIXES):
        return None
    if name.startswith(CELLULAR_PREFIXES):
        return "metered"
    if (root / "sys/class/net" / name / "wireless").is_dir() or name.startswith(WIFI_PREFIXES):
        return "unmetered"
    if name.startswith(ETHERNET_PREFIXES):
        return "unmetered"
    return None


def _default_route_interfaces(root: Path) -> list[str]:
    text = _read(root / "proc/net/route")
    if text is None:
        return []
    out: list[str] = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 2 and cols[1] == "00000000":
            out.append(cols[0])
    return out


def _sysfs_network(root: Path) -> NetworkKind | None:
    by_route = (_classify_interface(root, i) for i in _default_route_interfaces(root))
    routed = [k for k in by_route if k is not None]
    if routed:
        return "metered" if "metered" in routed else "unmetered"
    base = root / "sys/class/net"
    if not base.is_dir():
        return None
    kinds: list[NetworkKind] = []
    for iface in sorted(base.iterdir()):
        if _read(iface / "operstate") != "up":
            continue
        kind = _classify_interface(root, iface.name)
        if kind is not None:
            kinds.append(kind)
    if "unmetered" in kinds:
        return "unmetered"
    return "metered" if kinds else None


def read_network(root: Path, commands: CommandRunner | None) -> tuple[NetworkKind, str]:
    """Metering of the current network and which source said so."""
    if commands is not None:
        for name, fn in (("termux", _termux_network), ("nmcli", _nmcli_network)):
            kind = fn(commands)
            if kind is not None:
                return kind, name
    kind = _sysfs_network(root)
    if kind is not None:
        return kind, "sysfs"
    return "unknown", "none"


class SysfsProbe:
    """A :class:`fedlora.client.policy.DeviceProbe` over a Linux/Android system tree."""

    def __init__(self, root: Path | str = "/", commands: CommandRunner | None = None) -> None:
        self.root = Path(root)
        if commands is None and self.root == Path("/"):
            commands = run_command
        self.commands = commands

    def read(self) -> DeviceState:
        power = read_power(self.root)
        network, source = read_network(self.root, self.commands)
        return DeviceState(
            charging=power.charging,
            battery_pct=power.battery_pct,
            has_battery=power.has_battery,
            network=network,
            temperature_c=read_temperature(self.root, power.battery_temp_c),
            source=f"sysfs:{self.root} network:{source}",
        )
