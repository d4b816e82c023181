"""The real ClientApp and ServerApp on Flower's simulation engine: secure aggregation with
distributed DP, registry publication with signatures, and a round that must abort."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from flwr.simulation import run_simulation

from fedlora.client.app import make_client_app
from fedlora.config import load_settings
from fedlora.privacy.signing import verify_adapter
from fedlora.server.app import make_server_app, open_registry
from fedlora.server.registry import Registry
from fedlora.server.round_loop import RoundSummary


@pytest.mark.slow
def test_secure_dp_rounds_publish_signed_adapters(default_model_dir: Path, tmp_path: Path) -> None:
    settings = load_settings(
        None,
        [
            "data.num_clients=5",
            "server.rounds=3",
            "server.clients_per_round=4",
            "server.min_clients=2",
            "server.round_timeout_s=300",
            "client.local_steps=2",
            "client.batch_size=4",
            "privacy.secure_aggregation=true",
            "privacy.noise=distributed",
            "privacy.noise_multiplier=0.5",
            "privacy.clip_norm=0.5",
            f'server.database_url="sqlite:///{tmp_path}/registry.db"',
            f'server.blob_dir="{tmp_path}/blobs"',
        ],
    )
    key_path = tmp_path / "signing.pem"
    summaries: list[RoundSummary] = []
    server_app = make_server_app(
        settings,
        registry_factory=lambda s: open_registry(s, key_path),
        run_name="sim-test",
        progress=summaries.append,
        node_wait_s=30,
    )
    run_simulation(
        server_app,
        make_client_app(settings),
        num_supernodes=5,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    for s in summaries:
        print(s)
    assert [s.status for s in summaries] == ["published"] * 3
    assert all(s.contributors >= 2 for s in summaries)
    eps = [s.epsilon for s in summaries]
    assert all(e is not None and e > 0 for e in eps)
    assert eps == sorted(eps)  # ε only grows
    assert sum(sum(s.rank_mix.values()) for s in summaries) == sum(
        s.contributors for s in summaries
    )

    reg = Registry.open(settings.server)
    try:
        run = next(r for r in reg.list_runs() if r.name == "sim-test")
        committed = reg.latest_committed_round(run.id)
        assert committed is not None and committed.round.number == 3
        version = committed.community
        adapter = reg.load_adapter(version.id)
        assert adapter.meta.round == 3
        from fedlora.server.keys import load_signing_key

        verify_adapter(adapter, version.signature, load_signing_key(key_path).public_key())
        assert committed.ledger_json is not None
    finally:
        reg.close()
