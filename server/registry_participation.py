"""Participation counts: how many rounds each (hashed) client took part in or dropped.

Client ids (e.g. Flower node ids) are never stored: each is replaced by a SHA-256 of the
id with a random per-run salt, so stored ids cannot be joined across runs or reversed by
trying likely ids. Counting happens inside the publishing transaction, so the counts always
match the committed rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ParticipationRow, RunRow

_CHUNK = 500


def hash_client_id(salt: str, client_id: str | int) -> str:
    """The stored form of a client id (32 hex digits)."""
    return hashlib.sha256(f"fedlora-client/v1\n{salt}\n{client_id}".encode()).hexdigest()[:32]


def count_participation(
    s: Session,
    run: RunRow,
    number: int,
    participants: Sequence[str | int],
    dropouts: Sequence[str | int],
) -> None:
    """Add one committed round to the counts (inside the caller's transaction)."""
    deltas: dict[str, list[int]] = {}
    for cid in participants:
        deltas.setdefault(hash_client_id(run.client_salt, cid), [0, 0])[0] += 1
    for cid in dropouts:
        deltas.setdefault(hash_client_id(run.client_salt, cid), [0, 0])[1] += 1
    keys = sorted(deltas)
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        existing = {
            r.client_hash: r
            for r in s.scalars(
                select(ParticipationRow).where(
                    ParticipationRow.run_id == run.id,
                    ParticipationRow.client_hash.in_(chunk),
                )
            )
        }
        for h in chunk:
            took, dropped = deltas[h]
            row = existing.get(h)
            if row is None:
                s.add(
                    ParticipationRow(
                        run_id=run.id,
                        client_hash=h,
                        rounds=took,
                        dropouts=dropped,
                        first_round=number,
                        last_round=number,
                    )
                )
            else:
                row.rounds += took
                row.dropouts += dropped
                row.last_round = max(row.last_round, number)
