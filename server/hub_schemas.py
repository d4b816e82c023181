"""The hub's JSON shapes (pydantic), which also make its OpenAPI schema.

Conversions from the registry's dataclasses live here too, so the routes stay thin. Floats
that are not finite (ε of a non-private run, a NaN loss) become ``null``: JSON has no
infinity, and a 500 from the encoder must never be how a dashboard learns that.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from .registry_types import AdapterVersionInfo, CommittedRound, RoundInfo, RunInfo, finite_or_none

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_SECRET_KEY = re.compile(r"password|passwd|secret|token|credential|private", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


def redact(value: Any, key: str = "") -> Any:
    """A run's config as the public API may show it: secret-looking keys masked and
    passwords cut out of URLs (``server.database_url`` may carry one)."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key):
            return "***"
        return _URL_PASSWORD.sub(r"\g<head>***@", value)
    return value


class ErrorOut(BaseModel):
    detail: str


class RunOut(BaseModel):
    id: int
    name: str
    status: str
    created_at: datetime
    rounds_committed: int
    rounds_failed: int
    latest_round: int | None
    config: dict[str, Any]

    @classmethod
    def of(cls, r: RunInfo) -> RunOut:
        return cls(
            id=r.id,
            name=r.name,
            status=r.status,
            created_at=r.created_at,
            rounds_committed=r.rounds_committed,
            rounds_failed=r.rounds_failed,
            latest_round=r.latest_round,
            config=redact(r.config),
        )


class RoundOut(BaseModel):
    run_id: int
    number: int
    attempt: int = Field(description="1, or more when the round was started again")
    status: str = Field(description="running | committed | failed")
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    failure_reason: str | None
    participants: int
    dropouts: int
    rank_mix: dict[str, int] = Field(description="rank → phones that trained at it")
    timings: dict[str, float] = Field(description="seconds per phase of the round")
    bytes_up: int
    bytes_down: int
    loss: float | None
    perplexity: float | None
    epsilon: float | None = Field(description="cumulative ε after the round; null if unbounded")
    delta: float | None
    community_version: int | None
    view_ranks: list[int]
    extra: dict[str, Any]

    @classmethod
    def of(cls, r: RoundInfo) -> RoundOut:
        return cls(
            run_id=r.run_id,
            number=r.number,
            attempt=r.attempt,
            status=r.status,
            started_at=r.started_at,
            finished_at=r.finished_at,
            duration_s=r.duration_s,
            failure_reason=r.failure_reason,
            participants=r.participants,
            dropouts=r.dropouts,
            rank_mix={str(k): v for k, v in r.rank_mix.items()},
            timings={k: v for k, v in r.timings.items() if finite_or_none(v) is not None},
            bytes_up=r.bytes_up,
            bytes_down=r.bytes_down,
            loss=finite_or_none(r.loss),
            perplexity=finite_or_none(r.perplexity),
            epsilon=finite_or_none(r.epsilon),
            delta=finite_or_none(r.delta),
            community_version=r.community_version_id,
            view_ranks=list(r.view_ranks),
            extra={
                k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in r.extra.items()
            },
        )


class AdapterOut(BaseModel):
    version: int
    run_id: int
    round: int
    role: str = Field(description="community | view")
    rank: int
    content_hash: str = Field(description="SHA-256 of the safetensors bytes (the ETag)")
    size_bytes: int
    parent_version: int | None
    key_id: str
    created_at: datetime
    signature: dict[str, str]
    metadata: dict[str, Any]
    download_url: str
    peft_zip_url: str

    @classmethod
    def of(cls, v: AdapterVersionInfo) -> AdapterOut:
        return cls(
            version=v.id,
            run_id=v.run_id,
            round=v.round,
            role=v.role,
            rank=v.rank,
            content_hash=v.content_hash,
            size_bytes=v.size_bytes,
            parent_version=v.parent_id,
            key_id=v.key_id,
            created_at=v.created_at,
            signature=json.loads(v.signature_json),
            metadata=v.metadata,
            download_url=f"/v1/adapters/{v.id}",
            peft_zip_url=f"/v1/adapters/{v.id}/peft.zip",
        )


class CommittedOut(BaseModel):
    run_id: int
    round: RoundOut
    community: AdapterOut
    views: list[AdapterOut]

    @classmethod
    def of(cls, c: CommittedRound) -> CommittedOut:
        return cls(
            run_id=c.run_id,
            round=RoundOut.of(c.round),
            community=AdapterOut.of(c.community),
            views=[AdapterOut.of(v) for _, v in sorted(c.views.items())],
        )


class SigningKeyOut(BaseModel):
    algorithm: str = "ed25519"
    key_id: str
    public_key_raw_b64: str = Field(description="the 32 raw bytes a phone pins, base64")
    public_key_pem: str


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    database: str
    blobs: str


class ParticipationOut(BaseModel):
    run_id: int
    clients: int
    histogram: dict[str, int] = Field(description="rounds participated → number of clients")


class CreateRunIn(BaseModel):
    name: str = Field(pattern=RUN_NAME_PATTERN, description="letters, digits, . _ -")
    config: dict[str, Any] = Field(default_factory=dict)


class FailRoundIn(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class FsckOut(BaseModel):
    ok: bool
    versions_checked: int
    missing: list[str]
    corrupt: list[str]
    unreferenced: list[str]
    temp_files: int


class GcOut(BaseModel):
    removed: list[str]
