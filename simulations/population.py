"""Device populations: named distributions of phone profiles.

A federated run on real handsets is shaped less by the model than by the phones: how much
RAM they have (which rank they can train), how fast they are (whether they make the round
deadline), when they charge (whether the device policy lets them train at all), what network
they are on and how often they disappear mid-protocol. A :class:`Population` is a mixture of
:class:`DeviceClass` distributions; :func:`profile_for` draws one phone's
:class:`PhoneProfile` from it.

Profiles are a pure function of ``(population, seed, partition-id)`` (a NumPy generator seeded
from :func:`fedlora.data.stable_seed`), so every Ray worker computes the same phone without
the driver storing anything per phone, and a run is reproducible from its scenario file.

The numbers are plausible rather than measured fleet statistics: RAM tiers of current
Android phones, a ~4× spread in training speed between budget and flagship SoCs, home Wi-Fi
vs. mobile data bandwidths, nightly charging windows spread over time zones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedlora.data.seeding import stable_seed
from fedlora.errors import ConfigError

Range = tuple[float, float]


@dataclass(frozen=True)
class DeviceClass:
    """One kind of handset and how its owners use it; ``(lo, hi)`` ranges are uniform,
    speeds and bandwidths log-uniform (they vary by multiples, not by offsets)."""

    name: str
    weight: float
    ram_mb: tuple[int, ...]
    speed: Range
    backends: tuple[tuple[str, float], ...]
    wifi_prob: Range
    down_mbps: Range
    up_mbps: Range
    latency_ms: Range
    dropout_prob: Range
    battery_pct: Range
    topup_prob: Range
    charge_hours: Range = (6.0, 9.0)


@dataclass(frozen=True)
class Population:
    """A named mixture of device classes, with the spread of time zones and bedtimes."""

    name: str
    description: str
    classes: tuple[DeviceClass, ...]
    tz_offsets_h: tuple[float, ...] = (0.0,)
    charge_start_h: Range = (21.0, 25.0)
    cycle_ranks: bool = False
    """True: rank tiers cycle through the run's ranks by partition id instead of RAM."""


@dataclass(frozen=True)
class PhoneProfile:
    """One simulated phone. ``rank`` is its tier from RAM, before fitting to a run's ranks."""

    partition_id: int
    device_class: str
    ram_mb: int
    speed: float
    backend: str
    rank: int
    tz_offset_h: float
    charge_start_h: float
    charge_hours: float
    topup_prob: float
    battery_pct: float
    wifi_prob: float
    down_mbps: float
    up_mbps: float
    latency_ms: float
    dropout_prob: float


def rank_for_ram(ram_mb: int) -> int:
    """The LoRA rank a phone with this much RAM trains: a background job gets about a third
    of RAM (see :class:`fedlora.client.memory_plan.DeviceProfile`), so ≤ 4 GB phones train
    rank 4, ≤ 8 GB rank 8 and larger ones rank 16."""
    if ram_mb <= 4 * 1024:
        return 4
    if ram_mb <= 8 * 1024:
        return 8
    return 16


def fit_rank(tier: int, ranks: Sequence[int]) -> int:
    """The largest of the run's ``ranks`` not above ``tier`` (the smallest if none is)."""
    allowed = sorted(set(ranks))
    fitting = [r for r in allowed if r <= tier]
    return fitting[-1] if fitting else allowed[0]


def run_rank(population: str, profile: PhoneProfile, ranks: Sequence[int]) -> int:
    """The rank this phone announces in a run with rank groups ``ranks``."""
    allowed = sorted(set(ranks))
    if get_population(population).cycle_ranks:
        return allowed[profile.partition_id % len(allowed)]
    return fit_rank(profile.rank, allowed)


# ---------------------------------------------------------------------------- classes
_ANDROID = (("cpu", 0.6), ("gpu", 0.3), ("npu", 0.1))
_FLAGSHIP_BACKENDS = (("gpu", 0.5), ("npu", 0.4), ("cpu", 0.1))

BUDGET = DeviceClass(
    name="budget",
    weight=0.30,
    ram_mb=(3 * 1024, 4 * 1024),
    speed=(0.35, 0.7),
    backends=(("cpu", 0.9), ("gpu", 0.1)),
    wifi_prob=(0.45, 0.8),
    down_mbps=(3.0, 40.0),
    up_mbps=(1.0, 10.0),
    latency_ms=(60.0, 250.0),
    dropout_prob=(0.03, 0.10),
    battery_pct=(30.0, 75.0),
    topup_prob=(0.05, 0.15),
)
MID = DeviceClass(
    name="mid",
    weight=0.45,
    ram_mb=(6 * 1024, 8 * 1024),
    speed=(0.8, 1.3),
    backends=_ANDROID,
    wifi_prob=(0.6, 0.9),
    down_mbps=(10.0, 100.0),
    up_mbps=(3.0, 30.0),
    latency_ms=(30.0, 120.0),
    dropout_prob=(0.01, 0.05),
    battery_pct=(40.0, 85.0),
    topup_prob=(0.08, 0.2),
)
FLAGSHIP = DeviceClass(
    name="flagship",
    weight=0.25,
    ram_mb=(12 * 1024, 16 * 1024),
    speed=(1.5, 2.8),
    backends=_FLAGSHIP_BACKENDS,
    wifi_prob=(0.7, 0.95),
    down_mbps=(30.0, 300.0),
    up_mbps=(10.0, 80.0),
    latency_ms=(20.0, 80.0),
    dropout_prob=(0.005, 0.03),
    battery_pct=(50.0, 90.0),
    topup_prob=(0.1, 0.25),
)
LAB = DeviceClass(
    name="lab",
    weight=1.0,
    ram_mb=(8 * 1024,),
    speed=(1.0, 1.0),
    backends=(("cpu", 1.0),),
    wifi_prob=(1.0, 1.0),
    down_mbps=(100.0, 100.0),
    up_mbps=(100.0, 100.0),
    latency_ms=(10.0, 10.0),
    dropout_prob=(0.0, 0.0),
    battery_pct=(100.0, 100.0),
    topup_prob=(1.0, 1.0),
)


def _flaky(c: DeviceClass) -> DeviceClass:
    """The same hardware on poor networks: less Wi-Fi, slow uplinks, frequent drops."""
    return DeviceClass(
        name=c.name,
        weight=c.weight,
        ram_mb=c.ram_mb,
        speed=c.speed,
        backends=c.backends,
        wifi_prob=(c.wifi_prob[0] * 0.8, c.wifi_prob[1] * 0.9),
        down_mbps=(c.down_mbps[0] / 4, c.down_mbps[1] / 4),
        up_mbps=(c.up_mbps[0] / 4, c.up_mbps[1] / 4),
        latency_ms=(c.latency_ms[0] * 3, c.latency_ms[1] * 3),
        dropout_prob=(0.08, 0.2),
        battery_pct=c.battery_pct,
        topup_prob=c.topup_prob,
    )


_WORLD_TZ = (-8.0, -5.0, -3.0, 0.0, 1.0, 2.0, 3.0, 5.5, 8.0, 9.0)

POPULATIONS: dict[str, Population] = {
    p.name: p
    for p in (
        Population(
            "mixed",
            "30% budget / 45% mid-range / 25% flagship phones in one time zone band "
            "(UTC-3..+3); nightly charging windows; rank tiers 4/8/16 by RAM",
            (BUDGET, MID, FLAGSHIP),
            tz_offsets_h=(-3.0, -1.0, 0.0, 1.0, 2.0, 3.0),
        ),
        Population(
            "world",
            "the 'mixed' hardware spread over ten time zones: who may train depends on "
            "the hour of the round",
            (BUDGET, MID, FLAGSHIP),
            tz_offsets_h=_WORLD_TZ,
        ),
        Population(
            "flagship",
            "high-end phones only: 12-16 GB, fast, on Wi-Fi, rarely drop (rank 16)",
            (FLAGSHIP,),
            tz_offsets_h=(0.0, 1.0, 2.0),
        ),
        Population(
            "budget",
            "3-4 GB phones only: slow, often on mobile data, drop more (rank 4)",
            (BUDGET,),
            tz_offsets_h=(0.0, 1.0, 2.0),
        ),
        Population(
            "flaky",
            "the 'mixed' hardware on poor networks: slow uplinks, high latency, 8-20% "
            "dropout per round",
            tuple(_flaky(c) for c in (BUDGET, MID, FLAGSHIP)),
            tz_offsets_h=(-3.0, -1.0, 0.0, 1.0, 2.0, 3.0),
        ),
        Population(
            "uniform",
            "identical lab phones: always charging on Wi-Fi, never drop; ranks cycle "
            "through the run's ranks by partition id (for benchmarks and CI)",
            (LAB,),
            cycle_ranks=True,
        ),
    )
}


def get_population(name: str) -> Population:
    try:
        return POPULATIONS[name]
    except KeyError:
        raise ConfigError(
            [
                f"simulation.population: unknown population {name!r}; "
                f"allowed values: {', '.join(sorted(POPULATIONS))}"
            ]
        ) from None


# ---------------------------------------------------------------------------- drawing
def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(r[0] + (r[1] - r[0]) * rng.random())


def _log_uniform(rng: np.random.Generator, r: Range) -> float:
    lo, hi = np.log(r[0]), np.log(r[1])
    return float(np.exp(lo + (hi - lo) * rng.random()))


def _pick(rng: np.random.Generator, weighted: Sequence[tuple[str, float]]) -> str:
    names = [n for n, _ in weighted]
    w = np.array([p for _, p in weighted], dtype=np.float64)
    u = rng.random() * w.sum()
    return names[min(int(np.searchsorted(np.cumsum(w), u, side="right")), len(names) - 1)]


def phone_rng(seed: int, partition_id: int, *parts: int | str) -> np.random.Generator:
    """The generator for one phone (and optionally one round or purpose)."""
    return np.random.default_rng(stable_seed("fedlora-phone", seed, partition_id, *parts))


@lru_cache(maxsize=4096)
def profile_for(population: str, seed: int, partition_id: int) -> PhoneProfile:
    """Phone ``partition_id`` of ``population`` under ``seed`` — the same in every process.

    A fixed number of draws happens in a fixed order, so adding a field at the end never
    changes the phones of existing scenarios.
    """
    pop = get_population(population)
    rng = phone_rng(seed, partition_id, "profile")
    cls = pop.classes[0]
    if len(pop.classes) > 1:
        names = [(c.name, c.weight) for c in pop.classes]
        chosen = _pick(rng, names)
        cls = next(c for c in pop.classes if c.name == chosen)
    else:
        rng.random()
    ram = int(cls.ram_mb[int(rng.random() * len(cls.ram_mb)) % len(cls.ram_mb)])
    speed = _log_uniform(rng, cls.speed)
    backend = _pick(rng, cls.backends)
    tz = pop.tz_offsets_h[int(rng.random() * len(pop.tz_offsets_h)) % len(pop.tz_offsets_h)]
    charge_start = _uniform(rng, pop.charge_start_h) % 24.0
    charge_hours = _uniform(rng, cls.charge_hours)
    topup = _uniform(rng, cls.topup_prob)
    battery = _uniform(rng, cls.battery_pct)
    wifi = _uniform(rng, cls.wifi_prob)
    down = _log_uniform(rng, cls.down_mbps)
    up = _log_uniform(rng, cls.up_mbps)
    latency = _log_uniform(rng, cls.latency_ms)
    dropout = _uniform(rng, cls.dropout_prob)
    return PhoneProfile(
        partition_id=partition_id,
        device_class=cls.name,
        ram_mb=ram,
        speed=speed,
        backend=backend,
        rank=rank_for_ram(ram),
        tz_offset_h=tz,
        charge_start_h=charge_start,
        charge_hours=charge_hours,
        topup_prob=topup,
        battery_pct=battery,
        wifi_prob=wifi,
        down_mbps=down,
        up_mbps=up,
        latency_ms=latency,
        dropout_prob=dropout,
    )


def describe(
    population: str, seed: int, phones: int, ranks: Sequence[int] = (4, 8, 16)
) -> dict[str, object]:
    """A summary of the first ``phones`` profiles (class mix, run ranks, medians), for
    reports and tests; computed phone by phone, nothing kept."""
    classes: dict[str, int] = {}
    rank_mix: dict[int, int] = {}
    backends: dict[str, int] = {}
    speeds: list[float] = []
    dropouts: list[float] = []
    for pid in range(phones):
        p = profile_for(population, seed, pid)
        classes[p.device_class] = classes.get(p.device_class, 0) + 1
        r = run_rank(population, p, ranks)
        rank_mix[r] = rank_mix.get(r, 0) + 1
        backends[p.backend] = backends.get(p.backend, 0) + 1
        speeds.append(p.speed)
        dropouts.append(p.dropout_prob)
    return {
        "population": population,
        "phones": phones,
        "classes": dict(sorted(classes.items())),
        "ranks": dict(sorted(rank_mix.items())),
        "backends": dict(sorted(backends.items())),
        "speed_median": float(np.median(speeds)) if speeds else 0.0,
        "dropout_prob_mean": float(np.mean(dropouts)) if dropouts else 0.0,
    }
