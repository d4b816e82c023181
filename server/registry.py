"""The adapter registry: runs, rounds, signed adapter versions, privacy ledger, participation.

The round loop drives it::

    reg = Registry.open(settings.server, signing_key=key)
    run = reg.begin_run("exp-1", config=settings.model_dump())   # resumes if it exists
    last = reg.recover_run(run.id)          # stale 'running' attempts → failed; latest commit
    n = 1 if last is None else last.number + 1
    reg.start_round(run.id, n)              # a new attempt (after a failure: attempt 2, …)
    ...                                     # the round happens
    reg.publish_round(run.id, n, RoundPublication(community, views, metrics, privacy, ids))
    # or, on failure:
    reg.fail_round(run.id, n, "only 1 survivor, min_clients=2")

**Crash safety.** :meth:`Registry.publish_round` first writes every blob durably
(content-addressed, atomic) and only then runs ONE database transaction that inserts the
adapter versions (with signatures), the privacy-ledger snapshot and participation counts and
flips the round to ``committed``. A process killed at any point leaves the previous state
(plus, at worst, unreferenced blobs that :meth:`Registry.gc` removes) or the new one — never
a row pointing at a missing or partial blob. Reads verify every blob against its hash.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fedlora.adapter import LoraAdapter
from fedlora.adapter_io import from_safetensors_bytes, to_safetensors_bytes
from fedlora.config import ServerSettings
from fedlora.privacy.signing import AdapterSignature, canonical_metadata_json, sign_adapter

from . import paths
from .blobstore import BlobError, BlobStore, sha256_hex
from .db import make_engine
from .models import (
    COMMITTED,
    COMMUNITY,
    FAILED,
    RUNNING,
    VIEW,
    AdapterVersionRow,
    ParticipationRow,
    PrivacyRow,
    RoundRow,
    RunRow,
)
from .registry_participation import count_participation
from .registry_rows import dumps, json_safe, round_infos, run_info, version_info
from .registry_types import (
    AdapterVersionInfo,
    CommittedRound,
    FsckReport,
    NotFoundError,
    PrivacySnapshot,
    RegistryError,
    RegistryUnavailable,
    RoundInfo,
    RoundMetrics,
    RoundPublication,
    RoundStateError,
    RunInfo,
)

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped while this round was running"


def _now() -> datetime:
    return datetime.now(UTC)


def _opt_float(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class Registry:
    """Database + blob store behind one API; safe to share between threads."""

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.signing_key = signing_key
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._latest_cache: dict[tuple[int | None, int | None], Any] = {}
        self._latest_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        settings: ServerSettings | None = None,
        *,
        database_url: str | None = None,
        blob_dir: str | Path | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        create_schema: bool = True,
    ) -> Registry:
        """Open (and create) the registry the settings name; explicit arguments win."""
        url = database_url or paths.database_url(settings)
        root = Path(blob_dir) if blob_dir is not None else paths.blob_dir(settings)
        return cls(make_engine(url, create_schema=create_schema), BlobStore(root), signing_key)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def public_key(self) -> Ed25519PublicKey | None:
        return None if self.signing_key is None else self.signing_key.public_key()

    @contextmanager
    def _tx(self) -> Any:
        """One transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    # ================================================================== runs
    def begin_run(
        self,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        resume: bool = True,
    ) -> RunInfo:
        """Create a run, or (``resume``) return the existing run of that name.

        Resuming does not touch the stored config: the run keeps the configuration it
        started with, which is what its privacy accounting was computed under.
        """
        if name is None:
            name = f"run-{_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        with self._tx() as s:
            row = s.scalars(select(RunRow).where(RunRow.name == name)).one_or_none()
            if row is not None and not resume:
                raise RegistryError(f"run {name!r} already exists (id {row.id})")
            if row is None:
                row = RunRow(
                    name=name,
                    status="active",
                    created_at=_now(),
                    config_json=dumps(dict(config or {})),
                    client_salt=secrets.token_hex(16),
                )
                s.add(row)
                try:
                    s.flush()
                except IntegrityError:
                    raise RegistryError(f"run {name!r} was created concurrently") from None
            run_id = row.id
        return self.get_run(run_id)

    def finish_run(self, run_id: int, status: str = "finished") -> RunInfo:
        with self._tx() as s:
            self._run_row(s, run_id).status = status
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> RunInfo:
        with self._sessions() as s:
            return run_info(s, self._run_row(s, run_id))

    def list_runs(self) -> list[RunInfo]:
        with self._sessions() as s:
            rows = s.scalars(select(RunRow).order_by(RunRow.id)).all()
            return [run_info(s, r) for r in rows]

    def _run_row(self, s: Session, run_id: int) -> RunRow:
        row = s.get(RunRow, run_id)
        if row is None:
            raise NotFoundError(f"no run with id {run_id}")
        return row

    # ================================================================== rounds (writes)
    def start_round(self, run_id: int, number: int | None = None) -> RoundInfo:
        """Record that a round started; ``number`` defaults to one past the highest so far.

        A number that already failed (or was left running by a crash) may be started again:
        that is a new *attempt*, and the earlier one stays in the history as failed. A number
        at or before the latest committed round is refused — committed history is final.
        """
        with self._tx() as s:
            self._run_row(s, run_id)
            if number is None:
                highest = s.scalar(
                    select(func.max(RoundRow.number)).where(RoundRow.run_id == run_id)
                )
                number = 1 if highest is None else highest + 1
            committed = self._latest_committed_number(s, run_id)
            if committed is not None and number <= committed:
                raise RoundStateError(
                    f"run {run_id}: round {number} is not after the latest committed round "
                    f"{committed}; committed rounds are final"
                )
            prev = self._latest_attempt(s, run_id, number)
            if prev is not None and prev.status == RUNNING:
                prev.status = FAILED
                prev.failure_reason = "superseded: the round was started again"
                prev.finished_at = _now()
            attempt = 1 if prev is None else prev.attempt + 1
            s.add(
                RoundRow(
                    run_id=run_id,
                    number=number,
                    attempt=attempt,
                    status=RUNNING,
                    started_at=_now(),
                )
            )
            try:
                s.flush()
            except IntegrityError:
                raise RoundStateError(
                    f"run {run_id}: round {number} was started concurrently"
                ) from None
        return self.get_round(run_id, number)

    def _latest_attempt(
        self, s: Session, run_id: int, number: int, *, lock: bool = False
    ) -> RoundRow | None:
        q = (
            select(RoundRow)
            .where(RoundRow.run_id == run_id, RoundRow.number == number)
            .order_by(RoundRow.attempt.desc())
            .limit(1)
        )
        return s.scalars(q.with_for_update() if lock else q).one_or_none()

    def _latest_committed_number(self, s: Session, run_id: int) -> int | None:
        return s.scalar(
            select(func.max(RoundRow.number)).where(
                RoundRow.run_id == run_id, RoundRow.status == COMMITTED
            )
        )

    def publish_round(self, run_id: int, number: int, pub: RoundPublication) -> CommittedRound:
        """Commit a round: blobs first (durable), then one transaction for everything else.

        Idempotent for an identical community adapter (a retry after an uncertain crash
        returns the committed round); a different one for a committed round is refused.
        """
        blobs = self._prepare_blobs(pub)
        community_hash = blobs[0][1]
        existing = self._committed_or_none(run_id, number)
        if existing is not None:
            if existing.community.content_hash == community_hash:
                return existing
            raise RoundStateError(
                f"run {run_id}: round {number} is already committed with another adapter"
            )
        for data, _h, _a, _s, _r, _role in blobs:
            self.blobs.put(data)  # durable before any row can point at it
        with self._tx() as s:
            run = self._run_row(s, run_id)
            rnd = self._round_for_commit(s, run_id, number)
            parent = s.scalars(
                select(AdapterVersionRow)
                .where(
                    AdapterVersionRow.run_id == run_id,
                    AdapterVersionRow.role == COMMUNITY,
                    AdapterVersionRow.round_number < number,
                )
                .order_by(AdapterVersionRow.round_number.desc())
                .limit(1)
            ).one_or_none()
            now = _now()
            community_row: AdapterVersionRow | None = None
            for data, h, adapter, sig, rank, role in blobs:
                row = AdapterVersionRow(
                    run_id=run_id,
                    round_id=rnd.id,
                    round_number=number,
                    role=role,
                    rank=rank,
                    content_hash=h,
                    size_bytes=len(data),
                    parent_id=(parent.id if parent else None)
                    if community_row is None
                    else community_row.id,
                    signature_json=sig.to_json(),
                    key_id=sig.key_id,
                    metadata_json=canonical_metadata_json(adapter.meta),
                    created_at=now,
                )
                s.add(row)
                s.flush()
                if community_row is None:
                    community_row = row
            self._apply_metrics(rnd, pub.metrics, len(pub.participants), len(pub.dropouts))
            if pub.privacy is not None:
                self._add_privacy(s, rnd, pub.privacy)
            count_participation(s, run, number, pub.participants, pub.dropouts)
            rnd.status = COMMITTED
            rnd.finished_at = now
            rnd.failure_reason = None
        committed = self._committed_or_none(run_id, number)
        assert committed is not None
        return committed

    def publish_external(
        self,
        run_id: int,
        adapter: LoraAdapter,
        view_ranks: Iterable[int] = (),
        *,
        method: str = "truncate",
        note: str = "external",
    ) -> CommittedRound:
        """Publish an adapter made outside the round loop (an operator's upload, a seed) as
        the next round of ``run_id``, with views derived at ``view_ranks``.

        ``method`` is ``truncate`` (the nested view: first r rank slots) or ``svd`` (best
        rank-r approximation); see :mod:`fedlora.ranks`.
        """
        from fedlora import ranks as rank_views

        derive = {"truncate": rank_views.truncate_to_rank, "svd": rank_views.refactor_to_rank}
        if method not in derive:
            raise RegistryError(f"view method must be 'truncate' or 'svd', got {method!r}")
        views: dict[int, LoraAdapter] = {}
        for r in sorted(set(view_ranks)):
            if r > adapter.max_rank:
                raise RegistryError(f"view rank {r} is above the adapter's rank {adapter.max_rank}")
            views[r] = derive[method](adapter, r)
        self.get_run(run_id)
        number = self.start_round(run_id).number
        pub = RoundPublication(
            community=adapter, views=views, metrics=RoundMetrics(extra={"source": note})
        )
        try:
            return self.publish_round(run_id, number, pub)
        except BaseException as exc:
            self._fail_quietly(run_id, number, f"external publish failed: {exc}")
            raise

    def _fail_quietly(self, run_id: int, number: int, reason: str) -> None:
        try:
            self.fail_round(run_id, number, reason)
        except RegistryError:
            log.exception("could not mark run %s round %s failed", run_id, number)

    def _prepare_blobs(
        self, pub: RoundPublication
    ) -> list[tuple[bytes, str, LoraAdapter, AdapterSignature, int, str]]:
        """Serialize and sign everything up front, so the slow part happens before writing."""
        items: list[tuple[LoraAdapter, str]] = [(pub.community, COMMUNITY)]
        for rank in sorted(pub.views):
            view = pub.views[rank]
            if view.max_rank != rank:
                raise RegistryError(f"view for rank {rank} has max rank {view.max_rank}")
            items.append((view, VIEW))
        out = []
        for adapter, role in items:
            data = to_safetensors_bytes(adapter)
            h = sha256_hex(data)
            out.append((data, h, adapter, self._signature(adapter, h, pub), adapter.max_rank, role))
        return out

    def _signature(self, adapter: LoraAdapter, h: str, pub: RoundPublication) -> AdapterSignature:
        if self.signing_key is not None:
            sig = sign_adapter(adapter, self.signing_key)
        elif h in pub.signatures:
            sig = pub.signatures[h]
        else:
            raise RegistryError(
                "cannot publish an unsigned adapter: open the registry with a signing key or "
                f"pass a signature for content hash {h}"
            )
        if sig.content_hash != h:
            raise RegistryError(
                f"signature covers content hash {sig.content_hash}, but the blob is {h}"
            )
        return sig

    def _round_for_commit(self, s: Session, run_id: int, number: int) -> RoundRow:
        committed = self._latest_committed_number(s, run_id)
        if committed is not None and number <= committed:
            raise RoundStateError(
                f"run {run_id}: round {number} is not after the latest committed round "
                f"{committed}; rounds commit in order"
            )
        rnd = self._latest_attempt(s, run_id, number, lock=True)
        if rnd is None:
            rnd = RoundRow(run_id=run_id, number=number, status=RUNNING, started_at=_now())
            s.add(rnd)
            s.flush()
        elif rnd.status == FAILED:
            raise RoundStateError(
                f"run {run_id}: round {number} (attempt {rnd.attempt}) was marked failed "
                f"({rnd.failure_reason}); start it again before publishing"
            )
        elif rnd.status == COMMITTED:
            raise RoundStateError(f"run {run_id}: round {number} is already committed")
        return rnd

    def _apply_metrics(
        self, rnd: RoundRow, m: RoundMetrics, n_participants: int, n_dropouts: int
    ) -> None:
        rnd.participants = m.participants if m.participants is not None else n_participants
        rnd.dropouts = m.dropouts if m.dropouts is not None else n_dropouts
        rnd.rank_mix_json = dumps({str(int(k)): int(v) for k, v in m.rank_mix.items()})
        # Phase order is meaningful (configure → train → …): keep it, do not sort.
        timings = {str(k): float(v) for k, v in m.timings.items()}
        rnd.timings_json = json.dumps(json_safe(timings), allow_nan=False)
        rnd.extra_json = dumps(dict(m.extra))
        rnd.bytes_up = int(m.bytes_up)
        rnd.bytes_down = int(m.bytes_down)
        rnd.loss = _opt_float(m.loss)
        rnd.perplexity = _opt_float(m.perplexity)

    def _add_privacy(self, s: Session, rnd: RoundRow, p: PrivacySnapshot) -> None:
        json.loads(p.ledger_json)  # refuse garbage before it becomes the resume point
        rnd.epsilon = float(p.epsilon)
        rnd.delta = float(p.delta)
        s.add(
            PrivacyRow(
                run_id=rnd.run_id,
                round_id=rnd.id,
                round_number=rnd.number,
                epsilon=float(p.epsilon),
                delta=float(p.delta),
                noise_mode=p.noise_mode,
                noise_multiplier=float(p.noise_multiplier),
                sampling_rate=float(p.sampling_rate),
                clip_norm=p.clip_norm,
                ledger_json=p.ledger_json,
                created_at=_now(),
            )
        )

    def fail_round(
        self,
        run_id: int,
        number: int,
        reason: str,
        *,
        metrics: RoundMetrics | None = None,
        privacy: PrivacySnapshot | None = None,
    ) -> RoundInfo:
        """Mark a round failed with a reason (a round that never started is recorded too).

        Pass ``privacy`` when the failed round still spent privacy budget — e.g. the
        aggregate was unmasked before a later step failed — so that a restart resumes from
        that ledger (:meth:`latest_ledger_json` includes failed rounds).
        """
        with self._tx() as s:
            self._run_row(s, run_id)
            rnd = self._latest_attempt(s, run_id, number, lock=True)
            if rnd is None:
                rnd = RoundRow(run_id=run_id, number=number, status=RUNNING, started_at=_now())
                s.add(rnd)
                s.flush()
            if rnd.status == COMMITTED:
                raise RoundStateError(f"run {run_id}: round {number} is committed; cannot fail it")
            rnd.status = FAILED
            rnd.failure_reason = reason[:4000]
            rnd.finished_at = _now()
            if metrics is not None:
                self._apply_metrics(rnd, metrics, 0, 0)
            if privacy is not None:
                existing = s.scalars(
                    select(PrivacyRow).where(PrivacyRow.round_id == rnd.id)
                ).one_or_none()
                if existing is None:
                    self._add_privacy(s, rnd, privacy)
        return self.get_round(run_id, number)

    def recover_run(self, run_id: int, reason: str = INTERRUPTED) -> CommittedRound | None:
        """After a restart: mark rounds left ``running`` as failed; return the latest commit."""
        with self._tx() as s:
            self._run_row(s, run_id)
            for rnd in s.scalars(
                select(RoundRow).where(RoundRow.run_id == run_id, RoundRow.status == RUNNING)
            ):
                rnd.status = FAILED
                rnd.failure_reason = reason
                rnd.finished_at = _now()
        return self.latest_committed_round(run_id)

    # ================================================================== rounds (reads)
    def get_round(self, run_id: int, number: int) -> RoundInfo:
        """A round's committed attempt if there is one, else its latest attempt."""
        with self._sessions() as s:
            rnd = s.scalars(
                select(RoundRow)
                .where(RoundRow.run_id == run_id, RoundRow.number == number)
                .order_by((RoundRow.status == COMMITTED).desc(), RoundRow.attempt.desc())
                .limit(1)
            ).one_or_none()
            if rnd is None:
                raise NotFoundError(f"run {run_id} has no round {number}")
            return round_infos(s, [rnd])[0]

    def list_rounds(self, run_id: int) -> list[RoundInfo]:
        with self._sessions() as s:
            self._run_row(s, run_id)
            rows = s.scalars(
                select(RoundRow)
                .where(RoundRow.run_id == run_id)
                .order_by(RoundRow.number, RoundRow.attempt)
            ).all()
            return round_infos(s, list(rows))

    def latest_committed_round(self, run_id: int) -> CommittedRound | None:
        """The newest committed round of a run (what a restarted server resumes from)."""
        with self._sessions() as s:
            self._run_row(s, run_id)
            number = s.scalar(
                select(func.max(RoundRow.number)).where(
                    RoundRow.run_id == run_id, RoundRow.status == COMMITTED
                )
            )
        return None if number is None else self._committed_or_none(run_id, number)

    def _committed_or_none(self, run_id: int, number: int) -> CommittedRound | None:
        with self._sessions() as s:
            rnd = s.scalars(
                select(RoundRow).where(
                    RoundRow.run_id == run_id,
                    RoundRow.number == number,
                    RoundRow.status == COMMITTED,
                )
            ).one_or_none()
            if rnd is None:
                return None
            rows = s.scalars(
                select(AdapterVersionRow).where(AdapterVersionRow.round_id == rnd.id)
            ).all()
            ledger = s.scalar(select(PrivacyRow.ledger_json).where(PrivacyRow.round_id == rnd.id))
            info = round_infos(s, [rnd])[0]
        community = next(version_info(r) for r in rows if r.role == COMMUNITY)
        views = {r.rank: version_info(r) for r in rows if r.role == VIEW}
        return CommittedRound(run_id, info, community, views, ledger)

    def latest_ledger_json(self, run_id: int) -> str | None:
        """The newest privacy-ledger snapshot of a run, committed or failed round alike:
        budget spent in a failed round is still spent."""
        with self._sessions() as s:
            return s.scalar(
                select(PrivacyRow.ledger_json)
                .where(PrivacyRow.run_id == run_id)
                .order_by(PrivacyRow.round_number.desc(), PrivacyRow.id.desc())
                .limit(1)
            )

    def participation_histogram(self, run_id: int) -> dict[int, int]:
        """How many clients took part in k rounds, for each k (no client ids leave)."""
        with self._sessions() as s:
            self._run_row(s, run_id)
            rows = s.execute(
                select(ParticipationRow.rounds, func.count())
                .where(ParticipationRow.run_id == run_id)
                .group_by(ParticipationRow.rounds)
            ).all()
        return {int(k): int(v) for k, v in rows}

    def participation_counts(self, run_id: int) -> dict[str, tuple[int, int]]:
        """Hashed client id → (rounds participated, rounds dropped)."""
        with self._sessions() as s:
            rows = s.scalars(select(ParticipationRow).where(ParticipationRow.run_id == run_id))
            return {r.client_hash: (r.rounds, r.dropouts) for r in rows}

    # ================================================================== adapters
    def get_version(self, version_id: int) -> AdapterVersionInfo:
        with self._sessions() as s:
            row = s.get(AdapterVersionRow, version_id)
            if row is None:
                raise NotFoundError(f"no adapter version {version_id}")
            return version_info(row)

    def find_version_by_hash(self, content_hash: str) -> AdapterVersionInfo:
        with self._sessions() as s:
            row = s.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.content_hash == content_hash)
                .order_by(AdapterVersionRow.id.desc())
                .limit(1)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"no adapter with content hash {content_hash}")
            return version_info(row)

    def latest_version(
        self, run_id: int | None = None, rank: int | None = None
    ) -> AdapterVersionInfo:
        """The newest committed adapter: the community one, or the view at ``rank``.

        This is the hub's hot path (every phone polls it), so answers are cached per
        ``(run_id, rank)`` and validated by one cheap query: adapter versions are only ever
        inserted, so the highest version id changes exactly when something was published,
        by this process or any other.
        """
        generation = self._generation()
        key = (run_id, rank)
        with self._latest_lock:
            hit = self._latest_cache.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
        info = self._latest_version_uncached(run_id, rank)
        with self._latest_lock:
            if len(self._latest_cache) >= 1024:
                self._latest_cache.clear()
            self._latest_cache[key] = (generation, info)
        return info

    def _generation(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(AdapterVersionRow.id))).scalar()

    def _latest_version_uncached(self, run_id: int | None, rank: int | None) -> AdapterVersionInfo:
        """See :meth:`latest_version`.

        Without ``run_id``, the most recently published round of any run is used. A round
        that has no view at ``rank`` is *not* skipped for an older one: serving a stale
        adapter silently would be worse than a clear 404.
        """
        with self._sessions() as s:
            q = select(AdapterVersionRow).where(AdapterVersionRow.role == COMMUNITY)
            if run_id is not None:
                self._run_row(s, run_id)
                q = q.where(AdapterVersionRow.run_id == run_id)
            # Rounds commit in increasing number (enforced on publish), so the newest row is
            # also the highest round of its run.
            community = s.scalars(q.order_by(AdapterVersionRow.id.desc()).limit(1)).one_or_none()
            if community is None:
                where = f"run {run_id}" if run_id is not None else "the registry"
                raise NotFoundError(f"{where} has no published adapter yet")
            if rank is None:
                return version_info(community)
            rows = s.scalars(
                select(AdapterVersionRow).where(AdapterVersionRow.round_id == community.round_id)
            ).all()
            for row in sorted(rows, key=lambda r: r.role != VIEW):
                if row.rank == rank:
                    return version_info(row)
            ranks = sorted({r.rank for r in rows})
            raise NotFoundError(
                f"round {community.round_number} of run {community.run_id} has no adapter at "
                f"rank {rank}; available ranks: {ranks}"
            )

    def read_bytes(self, version: AdapterVersionInfo) -> bytes:
        """The version's safetensors bytes, verified against its content hash."""
        return self.blobs.get(version.content_hash)

    def load_adapter(self, version_id: int) -> LoraAdapter:
        return from_safetensors_bytes(self.read_bytes(self.get_version(version_id)))

    def referenced_hashes(self) -> set[str]:
        with self._sessions() as s:
            return set(s.scalars(select(AdapterVersionRow.content_hash).distinct()))

    # ================================================================== operations
    def check_ready(self) -> None:
        """Raise :class:`RegistryUnavailable` unless the DB answers and blobs are readable."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise RegistryUnavailable(f"database unreachable: {exc.__class__.__name__}") from exc
        if not self.blobs.readable():
            raise RegistryUnavailable(f"blob store {self.blobs.root} is not readable")

    def fsck(self) -> FsckReport:
        """Verify every referenced blob; list unreferenced blobs and temp files."""
        referenced = self.referenced_hashes()
        missing: list[str] = []
        corrupt: list[str] = []
        self.blobs.forget_cache()
        for h in sorted(referenced):
            try:
                self.blobs.get(h)
            except FileNotFoundError:
                missing.append(h)
            except BlobError:
                corrupt.append(h)
        on_disk = {b.content_hash for b in self.blobs.iter_blobs()}
        temps = sum(1 for _ in self.blobs.iter_temp_files())
        return FsckReport(
            versions_checked=len(referenced),
            missing=missing,
            corrupt=corrupt,
            unreferenced=sorted(on_disk - referenced),
            temp_files=temps,
        )

    def gc(self, grace_s: float = 3600.0) -> list[str]:
        """Remove unreferenced blobs/temp files older than ``grace_s`` (see BlobStore)."""
        return self.blobs.remove_unreferenced(self.referenced_hashes(), grace_s=grace_s)

    def stats(self) -> list[tuple[int, str, int | None, float | None, int, int]]:
        """Per run: (id, name, latest committed round, latest ε, committed, failed)."""
        out = []
        for run in self.list_runs():
            eps = None
            if run.latest_round is not None:
                eps = self.get_round(run.id, run.latest_round).epsilon
            out.append(
                (run.id, run.name, run.latest_round, eps, run.rounds_committed, run.rounds_failed)
            )
        return out

    def next_round_number(self, run_id: int) -> int:
        with self._sessions() as s:
            highest = s.scalar(select(func.max(RoundRow.number)).where(RoundRow.run_id == run_id))
        return 1 if highest is None else int(highest) + 1

    def iter_versions(self, run_id: int) -> Iterable[AdapterVersionInfo]:
        with self._sessions() as s:
            rows = s.scalars(
                select(AdapterVersionRow)
                .where(AdapterVersionRow.run_id == run_id)
                .order_by(AdapterVersionRow.id)
            ).all()
            return [version_info(r) for r in rows]
