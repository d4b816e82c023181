"""The round loop with the real ClientApp on an in-process grid: dropouts at secure
aggregation stages, aborted rounds that leave the community adapter untouched, and a rule
that needs each phone's own delta (FLoRA) running on per-phone uploads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import (
    Contribution,
    FlexLoRA,
    FLoRA,
    finish_round,
    make_server_optimizer,
)
from fedlora.client.app import RoundOutcome, RoundTrainer, make_client_app
from fedlora.client.round_training import train_round
from fedlora.config import FedloraSettings, load_settings
from fedlora.data.federated import ClientData
from fedlora.errors import ConfigError
from fedlora.protocol import REPORT, VECTOR, PhoneReport, RoundInstructions
from fedlora.server.app import open_registry
from fedlora.server.round_loop import BaseInfo, RoundLoop
from fedlora.simulations.local_grid import LocalGrid


def settings_for(tmp_path: Path, *extra: str) -> FedloraSettings:
    return load_settings(
        None,
        [
            "data.num_clients=5",
            "server.clients_per_round=5",
            "client.local_steps=1",
            "client.batch_size=4",
            f'server.database_url="sqlite:///{tmp_path}/registry.db"',
            f'server.blob_dir="{tmp_path}/blobs"',
            *extra,
        ],
    )


def make_loop(settings: FedloraSettings, tmp_path: Path, model_dir: Path) -> RoundLoop:
    registry = open_registry(settings, tmp_path / "key.pem")
    base = BaseInfo.from_dir(model_dir, settings.lora.target_modules)
    return RoundLoop(settings, registry, base, run_name="local", node_wait_s=0.1)


def secagg_stage(msg: Message) -> str:
    rec = msg.content.config_records.get("fedlora.secagg")
    return str(rec["stage"]) if rec is not None else ""


@pytest.mark.slow
def test_dropout_during_secure_aggregation_still_publishes(
    default_model_dir: Path, tmp_path: Path
) -> None:
    s = settings_for(
        tmp_path,
        "server.rounds=1",
        "server.min_clients=3",
        "privacy.secure_aggregation=true",
        "privacy.noise=distributed",
        "privacy.noise_multiplier=0.3",
    )
    loop = make_loop(s, tmp_path, default_model_dir)
    vanish = {105}
    seen_stages: set[str] = set()

    def drop(node: int, msg: Message) -> bool:
        stage = secagg_stage(msg)
        seen_stages.add(stage)
        # node 105 vanishes after sharing its keys: its masks must be removed via shares
        return node in vanish and stage not in ("", "0", "1")  # 0 AdvertiseKeys, 1 ShareKeys

    grid = LocalGrid(
        make_client_app(s), {100 + i: {"partition-id": i} for i in range(6)}, drop=drop
    )
    before = loop.community
    [summary] = loop.run(grid)
    assert summary.status == "published", summary.reason
    assert summary.contributors == 4  # 5 sampled of 6, one vanished mid-protocol
    assert loop.community is not before
    assert {"0", "1", "2", "3"} <= seen_stages  # every SecAgg+ stage ran


@pytest.mark.slow
def test_too_few_survivors_abort_and_keep_the_adapter(
    default_model_dir: Path, tmp_path: Path
) -> None:
    s = settings_for(tmp_path, "server.rounds=2", "server.min_clients=4")
    loop = make_loop(s, tmp_path, default_model_dir)

    def drop(node: int, msg: Message) -> bool:  # round 1: two phones never answer training
        return msg.metadata.group_id == "1" and msg.metadata.message_type == "train" and node < 2

    grid = LocalGrid(make_client_app(s), {i: {"partition-id": i} for i in range(5)}, drop=drop)
    initial = loop.community
    first, second = loop.run(grid)
    assert first.status == "aborted" and "min_clients is 4" in first.reason
    assert second.status == "published"
    rounds = loop.registry.list_rounds(loop.run_info.id)
    assert rounds[0].number == 1 and rounds[0].status != "committed"
    committed = loop.registry.latest_committed_round(loop.run_info.id)
    assert committed is not None and committed.round.number == 2
    assert initial.meta.version == 0


# ---------------------------------------------------------------- rules that need each phone
def flora_settings(tmp_path: Path, *extra: str) -> FedloraSettings:
    return settings_for(
        tmp_path,
        'aggregation.rule="flora"',
        "privacy.secure_aggregation=false",
        "server.min_clients=3",
        *extra,
    )


def recording_trainer(deltas: dict[int, tuple[LoraAdapter, int]]) -> RoundTrainer:
    """The deployment trainer, recording each phone's delta and example count by node id."""

    def trainer(
        instr: RoundInstructions,
        community: LoraAdapter,
        data: ClientData,
        settings: FedloraSettings,
        context: Context,
    ) -> RoundOutcome:
        out = train_round(instr, community, data, settings, context)
        assert out.delta is not None
        deltas[int(context.node_id)] = (out.delta, out.report.num_examples)
        return out

    return trainer


@pytest.mark.slow
def test_flora_publishes_the_stack_of_the_phones_own_deltas(
    default_model_dir: Path, tmp_path: Path
) -> None:
    # clip norm far above any delta, no noise: each upload is the phone's delta itself
    s = flora_settings(tmp_path, "server.rounds=1", "privacy.clip_norm=1e6")
    loop = make_loop(s, tmp_path, default_model_dir)
    deltas: dict[int, tuple[LoraAdapter, int]] = {}
    trainer = recording_trainer(deltas)

    sent: dict[int, tuple[np.ndarray, PhoneReport]] = {}

    class Recording(LocalGrid):
        def send_and_receive(
            self, messages: Iterable[Message], *, timeout: float | None = None
        ) -> Iterable[Message]:
            replies = list(super().send_and_receive(messages, timeout=timeout))
            for r in replies:
                if r.metadata.message_type == "train" and VECTOR in r.content.array_records:
                    report = PhoneReport.from_record(r.content.config_records.get(REPORT))
                    vec = r.content.array_records[VECTOR]["vector"].numpy()
                    sent[int(r.metadata.src_node_id)] = (vec, report)
            return replies

    grid = Recording(make_client_app(s, trainer), {i: {"partition-id": i} for i in range(5)})
    community_before, views_before = loop.community, loop.views
    [summary] = loop.run(grid)
    assert summary.status == "published", summary.reason
    assert summary.contributors == 5 and set(sent) == set(deltas)
    assert sum(summary.rank_mix.values()) == 5  # (phones of ranks 4, 8 and 16 here)

    # each upload is the phone's own delta at its rank, in the documented layout
    for node, (vec, report) in sent.items():
        delta, examples = deltas[node]
        assert report.rank == delta.max_rank and report.num_examples == examples
        np.testing.assert_array_equal(
            vec, loop.spec.rank_layout(report.rank).flatten(delta, dtype="float32")
        )

    # the published community is FLoRA on those deltas (weights: example counts), then the
    # server optimizer — computed here without the round loop
    expected_agg = FLoRA(loop.spec, views_before).aggregate(
        Contribution(delta=d, weight=float(n), client_id=str(node))
        for node, (d, n) in sorted(deltas.items())
    )
    expected = finish_round(
        community_before,
        expected_agg,
        make_server_optimizer(s.aggregation),
        None,
        loop.ranks,
    ).community
    version = loop.registry.latest_version(run_id=loop.run_info.id)
    published = loop.registry.load_adapter(version.id)
    moved = [
        float(np.abs(p.B @ p.A - community_before.pairs[m].B @ community_before.pairs[m].A).max())
        for m, p in expected
    ]
    assert max(moved) > 1e-4  # the round did change the community
    for got in (loop.community, published):
        assert got.modules == expected.modules
        for m, pair in expected:
            np.testing.assert_allclose(got.pairs[m].B @ got.pairs[m].A, pair.B @ pair.A, atol=1e-6)
    assert summary.version_hash == version.content_hash


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_flora_refuses_noise_on_a_sum_it_never_forms(
    default_model_dir: Path, tmp_path: Path, noise: str
) -> None:
    s = flora_settings(tmp_path, f'privacy.noise="{noise}"', "privacy.noise_multiplier=0.5")
    with pytest.raises(ConfigError, match="never forms a sum") as err:
        make_loop(s, tmp_path, default_model_dir)
    assert "'local'" in str(err.value)


@pytest.mark.slow
def test_flexlora_without_secure_aggregation_uses_its_linear_dense_form(
    default_model_dir: Path, tmp_path: Path
) -> None:
    """Plain (non-secure) sums use the same linear form as secure ones: FlexLoRA phones
    upload ΔWᵢ and the published community is FlexLoRA on the phones' deltas."""
    s = settings_for(
        tmp_path,
        'aggregation.rule="flexlora"',
        "privacy.secure_aggregation=false",
        "server.rounds=1",
        "server.min_clients=3",
        "privacy.clip_norm=1e6",
    )
    loop = make_loop(s, tmp_path, default_model_dir)
    deltas: dict[int, tuple[LoraAdapter, int]] = {}
    trainer = recording_trainer(deltas)

    grid = LocalGrid(make_client_app(s, trainer), {i: {"partition-id": i} for i in range(5)})
    community_before, views_before = loop.community, loop.views
    [summary] = loop.run(grid)
    assert summary.status == "published", summary.reason
    assert summary.contributors == 5

    # reference: the factor-upload form on each phone's delta (exact, not linear)
    expected_agg = FlexLoRA(loop.spec, views_before, dense_upload=False).aggregate(
        Contribution(delta=d, weight=float(n), client_id=str(node))
        for node, (d, n) in sorted(deltas.items())
    )
    expected = finish_round(
        community_before, expected_agg, make_server_optimizer(s.aggregation), None, loop.ranks
    ).community
    for m, pair in expected:
        got = loop.community.pairs[m]
        np.testing.assert_allclose(got.B @ got.A, pair.B @ pair.A, atol=1e-5)
