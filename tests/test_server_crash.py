"""Crash safety of the registry's storage: SIGKILL a publisher anywhere, check invariants.

A forked child process publishes rounds (blobs + one DB transaction, with a real privacy
ledger resumed from the registry; full participation keeps its accounting quick). The
parent kills it with SIGKILL

* at every instrumented point of one publish — before each ``fsync``/``rename`` of the blob
  writes, before each SQL statement, before the COMMIT and right after it; and
* at random moments while it publishes round after round,

and after every kill checks, with a fresh registry: every referenced blob exists and hashes
to its name; no file under a final blob name is torn; committed rounds are complete
(community + views + signature + ledger snapshot + participation) and never lost; rounds
that did not commit have no adapter rows; the ledger resumes. The next child restarts from
the last committed round, as the ServerApp will.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from test_server_support import fresh_postgres_url

from fedlora.adapter_io import to_safetensors_bytes
from fedlora.privacy.dp.accounting import PrivacyLedger, RoundPrivacy
from fedlora.privacy.signing import (
    generate_signing_key,
    load_verified,
)
from fedlora.server.demo import demo_publication
from fedlora.server.registry import Registry
from fedlora.server.registry_types import PrivacySnapshot, RoundPublication

RUN = "crash"
_FORK = mp.get_context("fork")


def _publication(n: int, ledger: PrivacyLedger) -> RoundPublication:
    demo = demo_publication(n)
    return RoundPublication(
        community=demo.community,
        views=demo.views,
        metrics=demo.metrics,
        privacy=PrivacySnapshot.from_ledger(ledger, clip_norm=1.0),
        participants=demo.participants,
        dropouts=demo.dropouts,
    )


@functools.cache
def _expected_hash(n: int) -> str:
    return hashlib.sha256(to_safetensors_bytes(demo_publication(n).community)).hexdigest()


def _arm(reg: Registry, kill_at: int) -> None:
    """Kill this process at the ``kill_at``-th storage event from now on."""
    from sqlalchemy import event

    count = [0]

    def tick(*_a: Any, **_k: Any) -> None:
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        tick()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        tick()
        real_replace(src, dst, **kw)

    os.fsync = fsync  # type: ignore[assignment]
    os.replace = replace  # type: ignore[assignment]
    event.listen(reg.engine, "before_cursor_execute", tick)
    event.listen(reg.engine, "commit", tick)


def _publisher(reg: Registry, kill_at: int | None) -> None:
    """Child: resume the run like a restarted server, then publish (forever, or once).

    It inherits the parent's registry object through fork and, as SQLAlchemy prescribes
    for forked processes, drops the inherited pool without closing the parent's
    connections; the warm statement cache keeps each child's start cheap.
    """
    reg.engine.dispose(close=False)
    run = reg.begin_run(RUN)
    reg.recover_run(run.id)
    saved = reg.latest_ledger_json(run.id)
    ledger = PrivacyLedger.from_json(saved) if saved else PrivacyLedger(delta=1e-5)
    while True:
        n = reg.start_round(run.id).number
        ledger.record(RoundPrivacy(n, "central", 1.1, 1.0))
        pub = _publication(n, ledger)
        if kill_at is not None:
            _arm(reg, kill_at)
        reg.publish_round(run.id, n, pub)
        if kill_at is not None:
            os.kill(os.getpid(), signal.SIGKILL)  # "right after COMMIT" is a point too
            # (reached only when kill_at exceeds the events of one publish)


def _check(reg: Registry, key_pub: Any, before: set[int]) -> set[int]:
    """The invariants, read through the parent's registry (own connections, no cache);
    returns the committed round numbers. Signatures are verified for new rounds only."""
    try:
        report = reg.fsck()
        assert report.ok, report
        for blob in reg.blobs.iter_blobs():  # nothing torn under a final name
            assert hashlib.sha256(blob.path.read_bytes()).hexdigest() == blob.content_hash
        runs = [r for r in reg.list_runs() if r.name == RUN]
        if not runs:
            return set()
        run_id = runs[0].id
        rounds = reg.list_rounds(run_id)
        committed = {r.number for r in rounds if r.status == "committed"}
        assert before <= committed, f"committed rounds lost: {before - committed}"
        for r in rounds:
            if r.status != "committed":
                assert r.community_version_id is None and r.view_ranks == ()
                continue
            assert r.view_ranks == (4, 8), r
            assert r.epsilon is not None and r.participants > 0
            community = reg.get_version(r.community_version_id or 0)
            assert community.content_hash == _expected_hash(r.number)
            if r.number not in before:
                load_verified(reg.read_bytes(community), community.signature, key_pub)
        counts = reg.participation_counts(run_id).values()
        c_rounds = [r for r in rounds if r.status == "committed"]
        assert sum(c[0] for c in counts) == sum(r.participants for r in c_rounds)
        assert sum(c[1] for c in counts) == sum(r.dropouts for r in c_rounds)
        last = reg.latest_committed_round(run_id)
        if committed:
            assert last is not None and last.round.number == max(committed)
            assert last.ledger_json is not None
            ledger = PrivacyLedger.from_json(last.ledger_json)
            assert ledger.records[-1].round == max(committed)
        return committed
    finally:
        reg.engine.dispose()  # no pooled connection is inherited by the next child


def _run_child(reg: Registry, kill_at: int | None, delay: float) -> int:
    proc = _FORK.Process(target=_publisher, args=(reg, kill_at))
    proc.start()
    if kill_at is None:
        proc.join(delay)
        if proc.is_alive():
            os.kill(proc.pid or 0, signal.SIGKILL)
    proc.join(60)
    assert not proc.is_alive()
    return proc.exitcode or 0


def _crash_campaign(url: str, tmp_path: Path, random_kills: int, seed: int) -> None:
    key = generate_signing_key()
    pub = key.public_key()
    blobs = tmp_path / "blobs"
    committed: set[int] = set()
    parent = Registry.open(database_url=url, blob_dir=blobs, signing_key=key)
    _warm_up(parent)
    # 1) A few committed rounds, so that there is a previous state to keep.
    code = _run_child(parent, None, 0.5)
    assert code == -signal.SIGKILL
    committed = _check(parent, pub, committed)
    # 2) Every instrumented point of one publish.
    points = 0
    for kill_at in range(1, 400):
        code = _run_child(parent, kill_at, 0)
        assert code == -signal.SIGKILL, f"publisher died on its own (exit {code})"
        new = _check(parent, pub, committed)
        assert len(new - committed) <= 1  # one publish: old state or the new round
        committed, points = new, kill_at
        if _last_round_committed(parent):  # the kill came after COMMIT: all points seen
            break
    assert points >= 10, "the instrumented publish should have many kill points"
    print(f"killed at {points} instrumented points of one publish")
    # 3) Random moments.
    rng = random.Random(seed)
    for _ in range(random_kills):
        _run_child(parent, None, rng.uniform(0.02, 0.25))
        committed = _check(parent, pub, committed)
    # 4) A clean restart resumes from the last committed round and publishes the next one.
    reg = Registry.open(database_url=url, blob_dir=blobs, signing_key=key)
    run = reg.begin_run(RUN)
    last = reg.recover_run(run.id)
    assert last is not None and last.round.number == max(committed)
    n = reg.start_round(run.id).number
    assert n > max(committed)
    ledger = PrivacyLedger.from_json(reg.latest_ledger_json(run.id) or "")
    ledger.record(RoundPrivacy(n, "central", 1.1, 1.0))
    reg.publish_round(run.id, n, _publication(n, ledger))
    reg.gc(grace_s=0)
    reg.close()
    final = _check(parent, pub, committed)
    parent.close()
    assert n in final
    assert not any(p.name.startswith(".") for p in (blobs / "sha256").rglob("*"))


def _warm_up(reg: Registry) -> None:
    """Compile the registry's statements once in the parent (children inherit the cache)."""
    run = reg.begin_run("warm-up")
    reg.recover_run(run.id)
    reg.latest_ledger_json(run.id)
    n = reg.start_round(run.id).number
    reg.publish_round(run.id, n, _publication(n, _one_round_ledger(n)))


def _one_round_ledger(n: int) -> PrivacyLedger:
    ledger = PrivacyLedger(delta=1e-5)
    ledger.record(RoundPrivacy(n, "central", 1.1, 1.0))
    return ledger


def _last_round_committed(reg: Registry) -> bool:
    try:
        run = next(r for r in reg.list_runs() if r.name == RUN)
        return reg.list_rounds(run.id)[-1].status == "committed"
    finally:
        reg.engine.dispose()


def test_sigkill_during_publish_sqlite(tmp_path: Path) -> None:
    _crash_campaign(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, random_kills=20, seed=1)


@pytest.mark.slow
def test_sigkill_during_publish_postgres(tmp_path: Path) -> None:
    url = fresh_postgres_url()
    _crash_campaign(url, tmp_path, random_kills=8, seed=2)


@pytest.mark.slow
def test_sigkill_many_random_points_sqlite(tmp_path: Path) -> None:
    _crash_campaign(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path, random_kills=100, seed=3)
