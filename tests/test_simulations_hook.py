"""The ClientApp's ``conditions`` hook on the real round loop (in-process grid, no Ray, a fake
trainer so no torch): refusals become reports, vanished phones answer nothing useful from
their stage on, secure aggregation absorbs them, and the population hook's trace agrees with
what the server counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.client.app import PENDING, PhoneConditions, RoundOutcome, make_client_app
from fedlora.config import FedloraSettings, load_settings
from fedlora.data.federated import ClientData
from fedlora.privacy.secagg.flower import STATE_RECORD
from fedlora.protocol import PhoneReport, RoundInstructions
from fedlora.server.app import open_registry
from fedlora.server.round_loop import BaseInfo, RoundLoop
from fedlora.simulations.behaviour import BehaviourKnobs, PopulationHook
from fedlora.simulations.local_grid import LocalGrid
from fedlora.simulations.population import profile_for, run_rank
from fedlora.simulations.trace import iter_events


def fake_trainer(
    instr: RoundInstructions,
    community: LoraAdapter,
    data: ClientData,
    settings: FedloraSettings,
    context: Context,
) -> RoundOutcome:
    """A 'trained' delta of the right layout without torch (B moves, A frozen as in FFA)."""
    rng = np.random.default_rng(instr.seed)
    pairs = {
        n: LoraPair(np.zeros_like(p.A), rng.normal(0, 0.01, p.B.shape).astype(np.float32))
        for n, p in community
    }
    delta = LoraAdapter(meta=community.meta.model_copy(update={"kind": "delta"}), pairs=pairs)
    report = PhoneReport(
        status="trained",
        num_examples=len(data.train),
        steps=instr.local_steps,
        loss_before=4.0,
        loss_after=3.5,
        rank=instr.rank,
    )
    return RoundOutcome(delta=delta, report=report)


def settings_for(tmp_path: Path, phones: int, per_round: int, rounds: int) -> FedloraSettings:
    return load_settings(
        None,
        [
            f"data.num_clients={phones}",
            f"server.clients_per_round={per_round}",
            f"server.rounds={rounds}",
            "server.min_clients=2",
            "privacy.secure_aggregation=true",
            "aggregation.rule=ffa",
            f'server.database_url="sqlite:///{tmp_path}/registry.db"',
            f'server.blob_dir="{tmp_path}/blobs"',
        ],
    )


def make_loop(s: FedloraSettings, tmp_path: Path, model_dir: Path) -> RoundLoop:
    registry = open_registry(s, tmp_path / "key.pem")
    base = BaseInfo.from_dir(model_dir, s.lora.target_modules)
    return RoundLoop(s, registry, base, run_name="hook", node_wait_s=0.1, population_size=None)


def secagg_stage(msg: Message) -> int | None:
    rec = msg.content.config_records.get("fedlora.secagg")
    return int(rec["stage"]) if rec is not None else None


def test_forced_refusal_and_vanishing(default_model_dir: Path, tmp_path: Path) -> None:
    s = settings_for(tmp_path, phones=8, per_round=8, rounds=1)
    errors: Counter[tuple[int, str]] = Counter()

    def conditions(message: Message, context: Context) -> PhoneConditions:
        pid = int(context.node_config["partition-id"])
        stage = secagg_stage(message)
        if message.metadata.message_type == "query":
            return PhoneConditions(max_rank=16 if pid % 2 else 4)
        if pid == 0 and message.metadata.message_type == "train":
            report = PhoneReport(status="not_allowed", reason="not charging")
            return PhoneConditions(answer=report)
        vanish = (pid == 1 and message.metadata.message_type == "train") or (
            pid == 2 and stage is not None and stage >= 2
        )
        if vanish:
            errors[(pid, message.metadata.message_type)] += 1
        return PhoneConditions(vanish=vanish)

    app = make_client_app(s, fake_trainer, conditions=conditions)
    grid = LocalGrid(app, {10 + i: {"partition-id": i} for i in range(8)})
    loop = make_loop(s, tmp_path, default_model_dir)
    [summary] = loop.run(grid)
    assert summary.status == "published", summary.reason
    assert summary.not_allowed == 1
    assert summary.contributors == 5  # 8 − refused − vanished in training − vanished at stage 2
    assert summary.rank_mix == {4: 3, 16: 3}  # phones 2..7 trained; odd ones announced 16
    assert errors[(1, "train")] == 1 and errors[(2, "train.secagg")] == 1
    stages_of_2 = [t for n, t in grid.delivered if n == 12]
    assert stages_of_2.count("train.secagg") == 3  # stage 2 reached it, stage 3 never did
    for ctx in grid._contexts.values():  # nothing of the round is left in any phone's state
        assert PENDING not in ctx.state and STATE_RECORD not in ctx.state


@pytest.mark.parametrize("secure", [True, False])
def test_population_hook_trace_matches_the_server(
    default_model_dir: Path, tmp_path: Path, secure: bool
) -> None:
    s = settings_for(tmp_path, phones=16, per_round=12, rounds=2)
    if not secure:
        s = load_settings(
            None,
            [
                "data.num_clients=16",
                "server.clients_per_round=12",
                "server.rounds=2",
                "server.min_clients=2",
                f'server.database_url="sqlite:///{tmp_path}/registry.db"',
                f'server.blob_dir="{tmp_path}/blobs"',
            ],
        )
    trace = tmp_path / "trace.csv"
    hook = PopulationHook(
        population="flaky",
        seed=3,
        ranks=(4, 8, 16),
        knobs=BehaviourKnobs(start_hour=2.0, dropout_scale=1.5, step_seconds=4.0, deadline_s=90),
        secure=secure,
        trace_path=str(trace),
    )
    app = make_client_app(s, fake_trainer, conditions=hook)
    grid = LocalGrid(app, {100 + i: {"partition-id": i} for i in range(16)})
    loop = make_loop(s, tmp_path, default_model_dir)
    summaries = loop.run(grid)
    events = Counter((e.round, e.event.split(":")[0]) for e in iter_events(trace))
    late = Counter(e.round for e in iter_events(trace) if e.event.startswith("vanished:secagg"))
    # a phone vanishing in stage 3 (unmasking) had sent its masked input: it is in the sum
    lost = Counter(
        e.round
        for e in iter_events(trace)
        if e.event in ("vanished:secagg.0", "vanished:secagg.1", "vanished:secagg.2")
    )
    for sm in summaries:
        r = sm.round
        decided = sum(events[(r, k)] for k in ("trained", "not_allowed", "deadline")) + (
            events[(r, "vanished")] - late[r]
        )
        assert decided == sm.sampled  # every sampled phone decided exactly once in training
        assert sm.not_allowed == events[(r, "not_allowed")]
        if sm.status == "published":
            assert sm.contributors == events[(r, "trained")] - lost[r]
    if secure:
        assert sum(late.values()) > 0  # some phones vanished mid-SecAgg and were absorbed
    for node, rank in loop.node_ranks.items():
        pid = node - 100
        assert rank == run_rank("flaky", profile_for("flaky", 3, pid), (4, 8, 16))
    assert sum(events.values()) > 0
