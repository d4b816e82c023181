"""The registry's tables (SQLAlchemy 2.x declarative models).

* ``runs`` — one federated training run (its config snapshot, a per-run salt for hashing
  client ids).
* ``rounds`` — one row per round *attempt*: ``running`` → ``committed`` or ``failed``; metrics
  (participants, dropouts, rank mix, bytes, loss/perplexity, ε, timings breakdown). A round
  number may be attempted again after a failure (a restarted server re-runs the round it
  was in), so failures stay in the history; at most one attempt per round number commits
  (a partial unique index enforces it in the database itself).
* ``adapter_versions`` — every published blob: the community adapter of a round and its
  per-rank views, with content hash, rank, parent, signature and metadata. Rows are only
  ever inserted in the same transaction that commits their round, after the blob is durable.
* ``privacy_ledger`` — per round: ε, δ, noise multiplier, sampling rate, clip norm and the
  whole ledger JSON snapshot, so a restarted server resumes accounting exactly.
* ``participation`` — per (run, hashed client id): rounds participated and dropped.

Floats may be ±inf (ε of a non-private run); the API layer turns them into ``null``.
JSON-ish fields are stored as ``Text`` for portability between SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUNNING = "running"
COMMITTED = "committed"
FAILED = "failed"

COMMUNITY = "community"
VIEW = "view"


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    client_salt: Mapped[str] = mapped_column(String(64))


class RoundRow(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("run_id", "number", "attempt", name="uq_round_attempt"),
        Index(
            "uq_round_committed",
            "run_id",
            "number",
            unique=True,
            sqlite_where=text(f"status = '{COMMITTED}'"),
            postgresql_where=text(f"status = '{COMMITTED}'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    participants: Mapped[int] = mapped_column(Integer, default=0)
    dropouts: Mapped[int] = mapped_column(Integer, default=0)
    rank_mix_json: Mapped[str] = mapped_column(Text, default="{}")
    timings_json: Mapped[str] = mapped_column(Text, default="{}")
    extra_json: Mapped[str] = mapped_column(Text, default="{}")
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    perplexity: Mapped[float | None] = mapped_column(Float, nullable=True)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("round_id", "role", "rank", name="uq_version_round_role_rank"),
        Index("ix_version_run_rank", "run_id", "rank"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    round_number: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"), nullable=True)
    signature_json: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PrivacyRow(Base):
    __tablename__ = "privacy_ledger"
    __table_args__ = (UniqueConstraint("round_id", name="uq_privacy_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    round_number: Mapped[int] = mapped_column(Integer)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    noise_mode: Mapped[str] = mapped_column(String(20))
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sampling_rate: Mapped[float] = mapped_column(Float)
    clip_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    ledger_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ParticipationRow(Base):
    __tablename__ = "participation"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    client_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    dropouts: Mapped[int] = mapped_column(Integer, default=0)
    first_round: Mapped[int] = mapped_column(Integer)
    last_round: Mapped[int] = mapped_column(Integer)
