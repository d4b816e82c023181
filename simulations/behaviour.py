"""What a simulated phone does in one round: may it train, is it fast enough, does it vanish.

:func:`round_behaviour` turns a :class:`~fedlora.simulations.population.PhoneProfile` and a
round number into the phone's situation at that moment — charging or not, battery level,
metered or unmetered network, temperature (a :class:`~fedlora.client.policy.DeviceState`
judged by the real :func:`~fedlora.client.policy.evaluate` device policy) — and whether, and
at which protocol stage, it drops out. :func:`simulated_seconds` estimates how long its round
would take on the device (download, local steps, upload) for the deadline check.

:class:`PopulationHook` is the ClientApp's ``conditions`` hook
(:class:`fedlora.client.app.PhoneConditions`): a small, picklable object that Ray ships to
every worker. It keeps no per-phone state: every decision is recomputed from ``(seed,
partition-id, round)``. Optionally it appends one line per decision to a trace file
(``round,partition,event,value``) — the driver reads it afterwards for participation
counts and the outcome breakdown, instead of holding anything per phone in memory.

Simulated time is a model, not a measurement: ``step_seconds`` is a reference phone's time
for one local step (batch 8, rank 8); a phone's time scales with batch size, slightly with
rank, and inversely with its speed; transfers take bytes / bandwidth plus one latency per
message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from flwr.app import Context, Message

from fedlora.client.app import PhoneConditions
from fedlora.client.policy import ALWAYS_ALLOW, DevicePolicy, DeviceState, PolicyDecision, evaluate
from fedlora.protocol import COMMUNITY, ROUND, PhoneReport, RoundInstructions
from fedlora.simulations.population import PhoneProfile, phone_rng, profile_for, run_rank

PolicyName = Literal["default", "always"]
SECURE_STAGES = ("train", "secagg.0", "secagg.1", "secagg.2", "secagg.3")
PLAIN_STAGES = ("train",)
SECAGG_RECORD = "fedlora.secagg"


@dataclass(frozen=True)
class BehaviourKnobs:
    """Scenario knobs that shape behaviour (see :class:`fedlora.simulations.scenario`)."""

    deadline_s: float | None = 600.0
    step_seconds: float = 2.0
    start_hour: float = 0.0
    hours_per_round: float = 1.0
    dropout_scale: float = 1.0
    policy: PolicyName = "default"


@dataclass(frozen=True)
class RoundBehaviour:
    """One phone in one round."""

    round: int
    local_hour: float
    state: DeviceState
    decision: PolicyDecision
    vanish_stage: str | None


def _in_window(hour: float, start: float, length: float) -> bool:
    return (hour - start) % 24.0 < length


def policy_for(name: PolicyName) -> DevicePolicy:
    return ALWAYS_ALLOW if name == "always" else DevicePolicy()


def round_behaviour(
    profile: PhoneProfile, rnd: int, seed: int, knobs: BehaviourKnobs, secure: bool
) -> RoundBehaviour:
    """The phone's state in round ``rnd`` (a fixed number of draws, in a fixed order)."""
    rng = phone_rng(seed, profile.partition_id, "round", rnd)
    u_topup, u_batt, u_noise, u_wifi, u_temp, u_drop, u_stage = (float(u) for u in rng.random(7))
    hour = (knobs.start_hour + (rnd - 1) * knobs.hours_per_round + profile.tz_offset_h) % 24.0
    nightly = _in_window(hour, profile.charge_start_h, profile.charge_hours)
    charging = bool(nightly or u_topup < profile.topup_prob)  # a Python bool: the policy
    # checks `charging is False`, which a NumPy bool would silently pass
    if nightly:  # plugged in at 15-60 %, +25 %/h
        since = (hour - profile.charge_start_h) % 24.0
        battery = min(100.0, 15.0 + 45.0 * u_batt + 25.0 * since)
    elif charging:
        battery = 20.0 + 70.0 * u_batt
    else:
        battery = min(100.0, max(1.0, profile.battery_pct + 30.0 * (u_noise - 0.5)))
    wifi_prob = min(1.0, profile.wifi_prob + (0.15 if nightly else 0.0))
    network = "unmetered" if u_wifi < wifi_prob else "metered"
    temperature = 26.0 + 12.0 * u_temp + (3.0 if charging else 0.0)
    state = DeviceState(
        charging=charging,
        battery_pct=battery,
        has_battery=True,
        network=network,
        temperature_c=temperature,
        source="simulated",
    )
    decision = evaluate(policy_for(knobs.policy), state)
    stages = SECURE_STAGES if secure else PLAIN_STAGES
    vanish = None
    if u_drop < min(1.0, profile.dropout_prob * knobs.dropout_scale):
        vanish = stages[min(int(u_stage * len(stages)), len(stages) - 1)]
    return RoundBehaviour(rnd, hour, state, decision, vanish)


def simulated_seconds(
    profile: PhoneProfile,
    *,
    steps: int,
    batch_size: int,
    rank: int,
    bytes_down: int,
    bytes_up: int,
    messages: int,
    step_seconds: float,
) -> float:
    """Device time of one round: download + local steps + upload (see module docstring)."""
    rank_cost = (1.0 + rank / 32.0) / (1.0 + 8 / 32.0)
    train = steps * step_seconds * (batch_size / 8.0) * rank_cost / profile.speed
    down = bytes_down * 8.0 / (profile.down_mbps * 1e6)
    up = bytes_up * 8.0 / (profile.up_mbps * 1e6)
    return train + down + up + messages * profile.latency_ms / 1000.0


def _round_of(message: Message) -> int:
    try:
        return int(message.metadata.group_id)
    except (TypeError, ValueError):
        return 0


def _stage_of(message: Message) -> str:
    kind = message.metadata.message_type
    if kind.startswith("train."):
        rec = message.content.config_records.get(SECAGG_RECORD)
        return f"secagg.{int(rec['stage'])}" if rec is not None and "stage" in rec else kind
    return kind


def _community_bytes(message: Message) -> int:
    rec = message.content.array_records.get(COMMUNITY)
    if rec is None:
        return 0
    return sum(int(arr.numpy().nbytes) for arr in rec.values())


@dataclass(frozen=True)
class PopulationHook:
    """The ClientApp ``conditions`` hook of a simulated device population."""

    population: str
    seed: int
    ranks: tuple[int, ...]
    knobs: BehaviourKnobs
    secure: bool
    trace_path: str | None = None

    def profile(self, partition_id: int) -> PhoneProfile:
        return profile_for(self.population, self.seed, partition_id)

    def __call__(self, message: Message, context: Context) -> PhoneConditions:
        pid = int(context.node_config.get("partition-id", 0))
        profile = self.profile(pid)
        rank = run_rank(self.population, profile, self.ranks)
        stage = _stage_of(message)
        if stage == "query":
            return PhoneConditions(max_rank=rank)
        rnd = _round_of(message)
        b = round_behaviour(profile, rnd, self.seed, self.knobs, self.secure)
        if stage == "train":
            return self._train(message, profile, rank, rnd, b)
        stages = SECURE_STAGES if self.secure else PLAIN_STAGES
        if b.vanish_stage is not None and stage in stages:
            at, now = stages.index(b.vanish_stage), stages.index(stage)
            if now >= at:
                if now == at:
                    self._trace(rnd, pid, f"vanished:{stage}")
                return PhoneConditions(max_rank=rank, vanish=True)
        return PhoneConditions(max_rank=rank)

    def _train(
        self, message: Message, profile: PhoneProfile, rank: int, rnd: int, b: RoundBehaviour
    ) -> PhoneConditions:
        pid = profile.partition_id
        if not b.decision.allowed:
            self._trace(rnd, pid, "not_allowed")
            report = PhoneReport(status="not_allowed", reason=b.decision.reason, rank=rank)
            return PhoneConditions(max_rank=rank, answer=report)
        instr = RoundInstructions.from_record(message.content.config_records.get(ROUND))
        down = _community_bytes(message)
        up = down * instr.r_max // max(instr.rank, 1) * (2 if self.secure else 1)
        seconds = simulated_seconds(
            profile,
            steps=instr.local_steps,
            batch_size=instr.batch_size,
            rank=instr.rank,
            bytes_down=down,
            bytes_up=up,
            messages=len(SECURE_STAGES if self.secure else PLAIN_STAGES) + 1,
            step_seconds=self.knobs.step_seconds,
        )
        deadline = self.knobs.deadline_s
        if deadline is not None and seconds > deadline:
            self._trace(rnd, pid, "deadline", seconds)
            reason = f"simulated round time {seconds:.0f}s > deadline {deadline:.0f}s"
            report = PhoneReport(status="deadline", reason=reason, rank=rank)
            return PhoneConditions(max_rank=rank, answer=report)
        if b.vanish_stage == "train":
            self._trace(rnd, pid, "vanished:train", seconds)
            return PhoneConditions(max_rank=rank, vanish=True)
        self._trace(rnd, pid, "trained", seconds)
        return PhoneConditions(max_rank=rank)

    def _trace(self, rnd: int, pid: int, event: str, value: float = 0.0) -> None:
        """One appended line per decision; O_APPEND keeps concurrent workers' lines whole."""
        if self.trace_path is None:
            return
        line = f"{rnd},{pid},{event},{value:.3f}\n".encode()
        fd = os.open(self.trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
