"""The registry's API as the round loop uses it, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_server_support import fresh_postgres_url

from fedlora.adapter_io import from_safetensors_bytes
from fedlora.privacy.dp.accounting import PrivacyLedger, RoundPrivacy
from fedlora.privacy.signing import (
    AdapterSignature,
    SignatureError,
    generate_signing_key,
    load_verified,
    sign_adapter,
)
from fedlora.server.blobstore import BlobIntegrityError
from fedlora.server.demo import demo_publication, make_demo_adapter
from fedlora.server.registry import Registry
from fedlora.server.registry_types import (
    NotFoundError,
    PrivacySnapshot,
    RegistryError,
    RoundMetrics,
    RoundPublication,
    RoundStateError,
)


@pytest.fixture(params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return fresh_postgres_url()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_signing_key()


@pytest.fixture
def reg(backend_url: str, tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[Registry]:
    r = Registry.open(database_url=backend_url, blob_dir=tmp_path / "blobs", signing_key=key)
    yield r
    r.close()


def test_round_lifecycle_publishes_signed_versions_with_parents(
    reg: Registry, key: Ed25519PrivateKey
) -> None:
    run = reg.begin_run("exp", config={"server": {"rounds": 3}})
    assert run.config == {"server": {"rounds": 3}}
    assert reg.latest_committed_round(run.id) is None
    first = reg.start_round(run.id)
    assert (first.number, first.status) == (1, "running")
    c1 = reg.publish_round(run.id, 1, demo_publication(1))
    assert c1.round.status == "committed" and sorted(c1.views) == [4, 8]
    assert c1.community.parent_id is None
    assert all(v.parent_id == c1.community.id for v in c1.views.values())
    n2 = reg.start_round(run.id).number
    c2 = reg.publish_round(run.id, n2, demo_publication(n2))
    assert c2.community.parent_id == c1.community.id  # lineage of community adapters

    # Every blob verifies under the server's public key, as a phone would check it.
    for v in [c2.community, *c2.views.values()]:
        adapter = load_verified(reg.read_bytes(v), v.signature, key.public_key())
        assert adapter.max_rank == v.rank
    other = generate_signing_key().public_key()
    with pytest.raises(SignatureError):
        load_verified(reg.read_bytes(c2.community), c2.community.signature, other)

    rounds = reg.list_rounds(run.id)
    assert [r.number for r in rounds] == [1, 2]
    assert rounds[1].community_version_id == c2.community.id
    assert rounds[1].view_ranks == (4, 8)
    assert rounds[1].rank_mix and rounds[1].timings["train"] > 0
    assert list(rounds[1].timings) == ["configure", "train", "secagg", "aggregate", "publish"]
    info = reg.get_run(run.id)
    assert (info.rounds_committed, info.rounds_failed, info.latest_round) == (2, 0, 2)


def test_latest_version_by_rank_and_run(reg: Registry) -> None:
    a = reg.begin_run("a")
    b = reg.begin_run("b")
    reg.publish_round(a.id, 1, demo_publication(1))
    cb = reg.publish_round(b.id, 1, demo_publication(2))
    ca = reg.publish_round(a.id, 2, demo_publication(3))
    assert reg.latest_version().id == ca.community.id  # newest published overall: run a
    assert reg.latest_version(run_id=b.id).id == cb.community.id
    assert reg.latest_version(rank=4).id == ca.views[4].id
    assert reg.latest_version(rank=16).id == ca.community.id
    with pytest.raises(NotFoundError, match=r"available ranks: \[4, 8, 16\]"):
        reg.latest_version(rank=2)
    with pytest.raises(NotFoundError):
        reg.latest_version(run_id=999)
    assert reg.find_version_by_hash(ca.views[8].content_hash).id == ca.views[8].id


def test_latest_version_cache_sees_publishes_by_other_processes(
    reg: Registry, backend_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    run = reg.begin_run("cache")
    reg.publish_round(run.id, 1, demo_publication(1))
    first = reg.latest_version(rank=4)
    assert reg.latest_version(rank=4) is first  # served from the cache
    other = Registry.open(database_url=backend_url, blob_dir=tmp_path / "blobs", signing_key=key)
    c2 = other.publish_round(run.id, 2, demo_publication(2))  # e.g. the ServerApp process
    other.close()
    assert reg.latest_version(rank=4).id == c2.views[4].id


def test_round_attempts_and_states_are_enforced(reg: Registry) -> None:
    run = reg.begin_run("states")
    reg.start_round(run.id, 1)
    failed = reg.fail_round(run.id, 1, "only 1 survivor, min_clients=2")
    assert failed.status == "failed" and "survivor" in (failed.failure_reason or "")
    with pytest.raises(RoundStateError, match="marked failed"):
        reg.publish_round(run.id, 1, demo_publication(1))
    # The same round number may be attempted again; the failure stays in the history.
    again = reg.start_round(run.id, 1)
    assert (again.number, again.attempt, again.status) == (1, 2, "running")
    # Starting it once more supersedes the running attempt (a crash left it running).
    assert reg.start_round(run.id, 1).attempt == 3
    committed = reg.publish_round(run.id, 1, demo_publication(1))
    assert committed.number == 1 and committed.round.attempt == 3
    assert committed.community_version_id == committed.community.id
    history = [(r.number, r.attempt, r.status) for r in reg.list_rounds(run.id)]
    assert history == [(1, 1, "failed"), (1, 2, "failed"), (1, 3, "committed")]
    assert reg.get_round(run.id, 1).status == "committed"
    # Publishing the identical round again is a no-op (a retry after an uncertain crash) …
    assert reg.publish_round(run.id, 1, demo_publication(1)) == committed
    # … but a different adapter for a committed round is refused, and so is re-running it.
    with pytest.raises(RoundStateError, match="already committed"):
        reg.publish_round(run.id, 1, demo_publication(3))
    with pytest.raises(RoundStateError, match="committed rounds are final"):
        reg.start_round(run.id, 1)
    with pytest.raises(RoundStateError):
        reg.fail_round(run.id, 1, "too late")
    assert reg.start_round(run.id).number == 2
    # Rounds commit in order: with round 3 committed, the running round 2 can no longer.
    reg.publish_round(run.id, 3, demo_publication(3))
    with pytest.raises(RoundStateError, match="commit in order"):
        reg.publish_round(run.id, 2, demo_publication(2))
    with pytest.raises(RegistryError):
        reg.begin_run("states", resume=False)
    with pytest.raises(NotFoundError):
        reg.start_round(12345)
    info = reg.get_run(run.id)
    assert (info.rounds_committed, info.rounds_failed) == (2, 2)


def test_recover_run_fails_interrupted_rounds_and_resumes_from_last_commit(
    reg: Registry,
) -> None:
    run = reg.begin_run("resume")
    reg.publish_round(run.id, 1, demo_publication(1))
    reg.start_round(run.id, 2)  # … and the server dies here
    again = reg.begin_run("resume")  # restart: same run
    assert again.id == run.id
    last = reg.recover_run(run.id)
    assert last is not None and last.round.number == 1
    assert reg.get_round(run.id, 2).status == "failed"
    assert "interrupted" in (reg.get_round(run.id, 2).failure_reason or "")
    retry = reg.start_round(run.id, 2)  # the restarted server re-runs the round it was in
    assert retry.attempt == 2
    reg.publish_round(run.id, 2, demo_publication(2))
    assert reg.recover_run(run.id).number == 2  # type: ignore[union-attr]


def test_privacy_ledger_round_trips_for_resume(reg: Registry) -> None:
    run = reg.begin_run("dp")
    ledger = PrivacyLedger(delta=1e-5)
    for n in (1, 2):
        ledger.record(RoundPrivacy(n, "central", 1.2, 0.1))
        pub = demo_publication(n)
        pub = RoundPublication(
            community=pub.community,
            views=pub.views,
            metrics=pub.metrics,
            privacy=PrivacySnapshot.from_ledger(ledger, clip_norm=0.7),
            participants=pub.participants,
        )
        reg.publish_round(run.id, n, pub)
    last = reg.latest_committed_round(run.id)
    assert last is not None and last.ledger_json is not None
    restored = PrivacyLedger.from_json(last.ledger_json)
    assert restored.epsilon == pytest.approx(ledger.epsilon)
    assert [r.round for r in restored.records] == [1, 2]
    assert reg.get_round(run.id, 2).epsilon == pytest.approx(ledger.epsilon)
    # A failed round that spent budget is what a restart must resume from.
    ledger.record(RoundPrivacy(3, "central", 1.2, 0.1))
    snap = PrivacySnapshot.from_ledger(ledger)
    reg.fail_round(run.id, 3, "aggregation failed after unmasking", privacy=snap)
    latest = reg.latest_ledger_json(run.id)
    assert latest is not None
    assert [r.round for r in PrivacyLedger.from_json(latest).records] == [1, 2, 3]


def test_non_private_round_stores_infinite_epsilon(reg: Registry) -> None:
    run = reg.begin_run("nodp")
    ledger = PrivacyLedger(delta=1e-5)
    ledger.record(RoundPrivacy(1, "none", 0.0, 1.0))
    pub = demo_publication(1)
    snap = PrivacySnapshot.from_ledger(ledger)
    assert math.isinf(snap.epsilon)
    reg.publish_round(run.id, 1, RoundPublication(community=pub.community, privacy=snap))
    assert reg.get_round(run.id, 1).epsilon == math.inf


def test_participation_counts_hashed_ids(reg: Registry) -> None:
    run = reg.begin_run("people")
    adapter = make_demo_adapter(4)
    reg.publish_round(
        run.id, 1, RoundPublication(community=adapter, participants=["a", "b"], dropouts=["c"])
    )
    reg.publish_round(
        run.id,
        2,
        RoundPublication(community=adapter.with_meta(round=2), participants=["a", 17]),
    )
    counts = reg.participation_counts(run.id)
    assert sorted(counts.values()) == [(0, 1), (1, 0), (1, 0), (2, 0)]
    assert all(len(h) == 32 and h not in {"a", "b", "c", "17"} for h in counts)
    assert reg.participation_histogram(run.id) == {0: 1, 1: 2, 2: 1}
    r1 = reg.get_round(run.id, 1)
    assert (r1.participants, r1.dropouts) == (2, 1)
    # Same client id in another run hashes differently (per-run salt).
    other = reg.begin_run("people2")
    reg.publish_round(other.id, 1, RoundPublication(community=adapter, participants=["a"]))
    assert not set(reg.participation_counts(other.id)) & set(counts)


def test_metrics_explicit_counts_override_id_lists(reg: Registry) -> None:
    run = reg.begin_run("m")
    pub = RoundPublication(
        community=make_demo_adapter(4),
        metrics=RoundMetrics(participants=50, dropouts=3, loss=float("nan"), bytes_up=10),
        participants=["x"],
    )
    reg.publish_round(run.id, 1, pub)
    r = reg.get_round(run.id, 1)
    assert (r.participants, r.dropouts, r.loss, r.bytes_up) == (50, 3, None, 10)


def test_unsigned_publish_is_refused_and_presigned_accepted(
    backend_url: str, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    reg = Registry.open(database_url=backend_url, blob_dir=tmp_path / "b2")
    run = reg.begin_run("unsigned")
    adapter = make_demo_adapter(4)
    with pytest.raises(RegistryError, match="unsigned"):
        reg.publish_round(run.id, 1, RoundPublication(community=adapter))
    sig = sign_adapter(adapter, key)
    bad = AdapterSignature(
        signature=sig.signature,
        key_id=sig.key_id,
        content_hash="0" * 64,
        metadata_sha256=sig.metadata_sha256,
        tensors_sha256=sig.tensors_sha256,
    )
    with pytest.raises(RegistryError, match="covers content hash"):
        reg.publish_round(
            run.id, 1, RoundPublication(community=adapter, signatures={sig.content_hash: bad})
        )
    c = reg.publish_round(
        run.id, 1, RoundPublication(community=adapter, signatures={sig.content_hash: sig})
    )
    assert c.community.key_id == sig.key_id
    reg.close()


def test_view_rank_must_match_its_key(reg: Registry) -> None:
    run = reg.begin_run("views")
    with pytest.raises(RegistryError, match="view for rank 8"):
        reg.publish_round(
            run.id,
            1,
            RoundPublication(community=make_demo_adapter(16), views={8: make_demo_adapter(4)}),
        )


def test_publish_external_derives_views(reg: Registry) -> None:
    run = reg.begin_run("ext")
    adapter = make_demo_adapter(8)
    c = reg.publish_external(run.id, adapter, [2, 4], method="svd")
    assert sorted(c.views) == [2, 4] and c.round.number == 1
    assert c.round.extra == {"source": "external"}
    with pytest.raises(RegistryError, match="above the adapter's rank"):
        reg.publish_external(run.id, adapter, [16])
    assert reg.load_adapter(c.views[2].id).max_rank == 2


def test_corrupt_blob_is_refused_and_fsck_reports_it(reg: Registry) -> None:
    run = reg.begin_run("rot")
    c = reg.publish_round(run.id, 1, demo_publication(1))
    assert reg.fsck().ok
    path = reg.blobs.path_for(c.views[4].content_hash)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    reg.blobs.forget_cache()
    with pytest.raises(BlobIntegrityError, match="corrupt"):
        reg.read_bytes(c.views[4])
    rep = reg.fsck()
    assert not rep.ok and rep.corrupt == [c.views[4].content_hash]
    reg.blobs.path_for(c.views[8].content_hash).unlink()
    assert reg.fsck().missing == [c.views[8].content_hash]
    # The community blob is untouched and still loads exactly.
    loaded = from_safetensors_bytes(reg.read_bytes(c.community))
    assert loaded.meta == demo_publication(1).community.meta


def test_gc_removes_only_unreferenced_files(reg: Registry) -> None:
    run = reg.begin_run("gc")
    c = reg.publish_round(run.id, 1, demo_publication(1))
    orphan = reg.blobs.put(b"not referenced by any row")
    tmp = reg.blobs.path_for(orphan).parent / ".leftover.tmp"
    tmp.write_bytes(b"torn")
    assert reg.gc(grace_s=3600) == []  # young files are protected (a publish may be in flight)
    removed = reg.gc(grace_s=0)
    assert orphan in removed and ".leftover.tmp" in removed
    assert reg.fsck().ok and reg.blobs.exists(c.community.content_hash)


def test_check_ready(reg: Registry) -> None:
    reg.check_ready()
