"""Registry rows → the plain dataclasses of :mod:`.registry_types`, and JSON helpers.

Kept apart from :mod:`.registry` (which decides *what* to read and write) so that the
mapping between tables and API objects is in one short place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import COMMITTED, COMMUNITY, FAILED, VIEW, AdapterVersionRow, RoundRow, RunRow
from .registry_types import AdapterVersionInfo, RoundInfo, RunInfo

_CHUNK = 500


def utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats with None so the stored JSON is standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, default=str, allow_nan=False)


def run_info(s: Session, row: RunRow) -> RunInfo:
    """A run row with its round counts."""
    counts = dict(
        s.execute(
            select(RoundRow.status, func.count())
            .where(RoundRow.run_id == row.id)
            .group_by(RoundRow.status)
        ).all()
    )
    latest = s.scalar(
        select(func.max(RoundRow.number)).where(
            RoundRow.run_id == row.id, RoundRow.status == COMMITTED
        )
    )
    return RunInfo(
        id=row.id,
        name=row.name,
        status=row.status,
        created_at=utc(row.created_at),
        config=json.loads(row.config_json or "{}"),
        rounds_committed=int(counts.get(COMMITTED, 0)),
        rounds_failed=int(counts.get(FAILED, 0)),
        latest_round=latest,
    )


def round_infos(s: Session, rows: list[RoundRow]) -> list[RoundInfo]:
    """Round rows with their adapter version ids (two queries, however many rounds)."""
    ids = [r.id for r in rows]
    versions: dict[int, list[tuple[int, str, int]]] = {}
    for i in range(0, len(ids), _CHUNK):
        for vid, rid, role, rank in s.execute(
            select(
                AdapterVersionRow.id,
                AdapterVersionRow.round_id,
                AdapterVersionRow.role,
                AdapterVersionRow.rank,
            ).where(AdapterVersionRow.round_id.in_(ids[i : i + _CHUNK]))
        ):
            versions.setdefault(rid, []).append((vid, role, rank))
    out = []
    for r in rows:
        vs = versions.get(r.id, [])
        community = next((vid for vid, role, _ in vs if role == COMMUNITY), None)
        out.append(
            RoundInfo(
                run_id=r.run_id,
                number=r.number,
                attempt=r.attempt,
                status=r.status,
                started_at=utc(r.started_at),
                finished_at=utc(r.finished_at) if r.finished_at else None,
                failure_reason=r.failure_reason,
                participants=r.participants or 0,
                dropouts=r.dropouts or 0,
                rank_mix=dict(
                    sorted((int(k), int(v)) for k, v in json.loads(r.rank_mix_json).items())
                ),
                timings={k: float(v) for k, v in json.loads(r.timings_json).items()},
                bytes_up=r.bytes_up or 0,
                bytes_down=r.bytes_down or 0,
                loss=r.loss,
                perplexity=r.perplexity,
                epsilon=r.epsilon,
                delta=r.delta,
                extra=json.loads(r.extra_json),
                community_version_id=community,
                view_ranks=tuple(sorted(rank for _, role, rank in vs if role == VIEW)),
            )
        )
    return out


def version_info(r: AdapterVersionRow) -> AdapterVersionInfo:
    return AdapterVersionInfo(
        id=r.id,
        run_id=r.run_id,
        round=r.round_number,
        role=r.role,
        rank=r.rank,
        content_hash=r.content_hash,
        size_bytes=r.size_bytes,
        parent_id=r.parent_id,
        signature_json=r.signature_json,
        key_id=r.key_id,
        metadata_json=r.metadata_json,
        created_at=utc(r.created_at),
    )
