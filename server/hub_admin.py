"""The hub's write and admin endpoints, all behind the bearer token (:mod:`.hub_auth`).

* ``POST /v1/runs`` — create a run (an external publisher needs one to publish into);
* ``POST /v1/runs/{id}/adapters`` — publish a fedlora safetensors blob (request body) as the
  run's next round, signed by the server's key, with views derived at ``?views=4&views=8``;
* ``POST /v1/admin/runs/{id}/rounds/{n}/fail`` — mark a stuck round failed;
* ``POST /v1/admin/fsck`` — verify every referenced blob; ``POST /v1/admin/gc`` — remove
  unreferenced blobs older than a grace period.

The upload is read with a size cap before parsing, and every parse failure is a 4xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from fedlora.adapter_io import from_safetensors_bytes

from .hub_auth import TokenAuth
from .hub_schemas import CommittedOut, CreateRunIn, ErrorOut, FailRoundIn, FsckOut, GcOut, RunOut
from .registry import Registry
from .registry_types import RegistryError

MAX_ID = 2**63 - 1
RunId = Annotated[int, Path(ge=1, le=MAX_ID)]
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body could not be parsed"},
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
}


def install(app: FastAPI, registry: Registry, auth: TokenAuth, max_upload_bytes: int) -> None:
    """Add the admin routes, bound to ``registry`` and protected by ``auth``, to ``app``.

    Routes go straight onto the app (no ``APIRouter``), so every path's methods are visible
    to the 405 handler that builds a complete ``Allow`` header.
    """
    r = _Guarded(app, [Depends(auth.dependency())])

    @r.post(
        "/v1/runs",
        tags=["admin"],
        status_code=201,
        response_model=RunOut,
        responses={409: {"model": ErrorOut}},
    )
    def create_run(body: CreateRunIn) -> RunOut:
        try:
            return RunOut.of(registry.begin_run(body.name, body.config, resume=False))
        except RegistryError as exc:
            raise HTTPException(409, str(exc)) from None

    @r.post(
        "/v1/runs/{run_id}/adapters",
        tags=["admin"],
        status_code=201,
        response_model=CommittedOut,
        responses={404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
        summary="Publish a fedlora safetensors adapter as the run's next round",
    )
    async def publish_adapter(
        run_id: RunId,
        request: Request,
        views: Annotated[list[int] | None, Query(description="ranks of views to derive")] = None,
        method: Annotated[Literal["truncate", "svd"], Query()] = "truncate",
    ) -> CommittedOut:
        data = await _read_capped(request, max_upload_bytes)
        if not data:
            raise HTTPException(422, "empty body: send the adapter's safetensors bytes")
        ranks = views or []
        if any(not 1 <= v <= 1024 for v in ranks) or len(ranks) > 16:
            raise HTTPException(422, "views must be at most 16 ranks, each in 1..1024")
        adapter = from_safetensors_bytes(data)  # AdapterValidationError → 422
        registry.get_run(run_id)  # 404 before any round is started
        committed = await run_in_threadpool(
            registry.publish_external, run_id, adapter, ranks, method=method, note="upload"
        )
        return CommittedOut.of(committed)

    @r.post(
        "/v1/admin/runs/{run_id}/rounds/{number}/fail",
        tags=["admin"],
        response_model=dict[str, Any],
        responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
    )
    def fail_round(
        run_id: RunId,
        number: Annotated[int, Path(ge=0, le=2**31 - 1)],
        body: FailRoundIn,
    ) -> dict[str, Any]:
        registry.get_round(run_id, number)  # 404: an admin cannot invent rounds
        info = registry.fail_round(run_id, number, body.reason)
        return {"run_id": run_id, "number": info.number, "status": info.status}

    @r.post("/v1/admin/fsck", tags=["admin"], response_model=FsckOut)
    def fsck() -> FsckOut:
        rep = registry.fsck()
        return FsckOut(
            ok=rep.ok,
            versions_checked=rep.versions_checked,
            missing=rep.missing,
            corrupt=rep.corrupt,
            unreferenced=rep.unreferenced,
            temp_files=rep.temp_files,
        )

    @r.post("/v1/admin/gc", tags=["admin"], response_model=GcOut)
    def gc(
        grace_s: Annotated[float, Query(ge=0, le=10 * 365 * 86400)] = 3600.0,
    ) -> GcOut:
        return GcOut(removed=registry.gc(grace_s=grace_s))


class _Guarded:
    """``app.post`` with the token dependency and the auth error responses added."""

    def __init__(self, app: FastAPI, dependencies: list[Any]) -> None:
        self.app = app
        self.dependencies = dependencies

    def post(self, path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        responses = {**AUTH_ERRORS, **kwargs.pop("responses", {})}
        return self.app.post(path, dependencies=self.dependencies, responses=responses, **kwargs)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it exceeds ``limit`` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
