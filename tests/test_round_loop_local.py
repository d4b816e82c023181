"""The round loop with the real ClientApp on an in-process grid: dropouts at secure
aggregation stages, aborted rounds that leave the community adapter untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from fedlora.client.app import make_client_app
from fedlora.config import FedloraSettings, load_settings
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
