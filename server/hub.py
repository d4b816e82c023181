"""The HTTP hub (FastAPI): phones download signed adapters, dashboards read runs and rounds.

Public (no token): ``GET /v1/adapters/latest?rank=r[&run=id]``, ``GET /v1/adapters/{version}``
(an integer version id or a 64-hex content hash), ``/v1/adapters/{version}/info``,
``/v1/adapters/{version}/peft.zip``, ``GET /v1/runs``, ``/v1/runs/{id}``,
``/v1/runs/{id}/rounds``, ``/v1/runs/{id}/participation``, ``GET /v1/signing-key``,
``/healthz``, ``/readyz``, ``/metrics`` and the dashboard at ``/`` (``/dashboard``).
Writes and admin actions (:mod:`fedlora.server.hub_admin`) need a bearer token.

The app is built by :func:`create_app` around an open :class:`~fedlora.server.registry.Registry`,
so tests and the CLI choose the storage; :func:`app_from_env` is the uvicorn factory that
opens the registry the environment names. Route handlers are plain ``def``: the registry is
synchronous (SQLAlchemy), and Starlette runs them in its thread pool.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Header, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fedlora import __version__
from fedlora.privacy.signing import key_id, public_key_to_pem, public_key_to_raw

from . import hub_admin, hub_dashboard
from .blobstore import check_hash
from .hub_auth import TokenAuth, tokens_from_env
from .hub_downloads import (
    IMMUTABLE,
    REVALIDATE,
    etag_matches,
    etag_of,
    not_modified,
    peft_zip_bytes,
    peft_zip_response,
    safetensors_response,
)
from .hub_errors import install_error_handlers, install_openapi
from .hub_metrics import HubMetrics, MetricsMiddleware
from .hub_schemas import (
    AdapterOut,
    ErrorOut,
    HealthOut,
    ParticipationOut,
    ReadyOut,
    RoundOut,
    RunOut,
    SigningKeyOut,
)
from .registry import Registry
from .registry_types import AdapterVersionInfo, RegistryUnavailable

MAX_ID = 2**63 - 1
VERSION_PATTERN = r"^([1-9][0-9]{0,17}|[0-9a-f]{64})$"

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="run id")]
VersionRef = Annotated[
    str, Path(pattern=VERSION_PATTERN, description="version id, or a content hash (64 hex)")
]
IfNoneMatch = Annotated[str | None, Header(description="ETag(s) the client already has")]

Responses = dict[int | str, dict[str, Any]]
BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
NOT_FOUND: Responses = {404: {"model": ErrorOut}}
ADAPTER_BYTES: Responses = {
    200: {
        "content": {"application/octet-stream": BINARY},
        "description": "safetensors bytes; signature and metadata in X-Fedlora-* headers",
    },
    304: {"description": "the client's ETag matches: not modified"},
}


class _ZipCache:
    """A few recently built PEFT zips, keyed by content hash (building one writes files)."""

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def create_app(
    registry: Registry,
    *,
    tokens: Sequence[str] | None = None,
    public_key: Ed25519PublicKey | None = None,
    max_upload_bytes: int = 256 * 1024 * 1024,
) -> FastAPI:
    """The hub app around ``registry``. ``tokens`` default to the environment's
    (``FEDLORA_HUB_TOKEN``); ``public_key`` defaults to the registry's signing key's."""
    auth = TokenAuth(tokens_from_env() if tokens is None else tokens)
    pub = public_key or registry.public_key
    metrics = HubMetrics(registry)
    zips = _ZipCache()
    app = FastAPI(
        title="fedlora hub",
        version=__version__,
        description="Signed community LoRA adapters for phones, and the runs that made them.",
    )
    app.state.registry = registry
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def serve(v: AdapterVersionInfo, inm: str | None, cache_control: str) -> Response:
        etag = etag_of(v.content_hash)
        if etag_matches(inm, etag):
            metrics.not_modified.inc()
            return not_modified(v, etag, cache_control)
        data = registry.read_bytes(v)
        metrics.adapter_bytes.inc(len(data))
        return safetensors_response(v, data, cache_control)

    def resolve(version: str) -> AdapterVersionInfo:
        if len(version) == 64:
            return registry.find_version_by_hash(check_hash(version))
        return registry.get_version(int(version))

    # ------------------------------------------------------------------ adapters
    @app.get(
        "/v1/adapters/latest",
        tags=["adapters"],
        response_class=Response,
        responses={**ADAPTER_BYTES, **NOT_FOUND},
        summary="The newest committed adapter (community, or the view at a rank)",
    )
    def latest_adapter(
        rank: Annotated[int | None, Query(ge=1, le=1024, description="the phone's rank")] = None,
        run: Annotated[int | None, Query(ge=1, le=MAX_ID, description="run id")] = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        return serve(registry.latest_version(run, rank), if_none_match, REVALIDATE)

    @app.get(
        "/v1/adapters/{version}",
        tags=["adapters"],
        response_class=Response,
        responses={**ADAPTER_BYTES, **NOT_FOUND},
        summary="One adapter version's safetensors bytes (immutable)",
    )
    def adapter_by_version(version: VersionRef, if_none_match: IfNoneMatch = None) -> Response:
        return serve(resolve(version), if_none_match, IMMUTABLE)

    @app.get(
        "/v1/adapters/{version}/info",
        tags=["adapters"],
        response_model=AdapterOut,
        responses=NOT_FOUND,
        summary="An adapter version's metadata and signature as JSON",
    )
    def adapter_info(version: VersionRef) -> AdapterOut:
        return AdapterOut.of(resolve(version))

    @app.get(
        "/v1/adapters/{version}/peft.zip",
        tags=["adapters"],
        response_class=Response,
        responses={
            200: {
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
            },
            304: {"description": "not modified"},
            **NOT_FOUND,
        },
        summary="The adapter as a zipped PEFT directory (PeftModel.from_pretrained)",
    )
    def adapter_peft_zip(version: VersionRef, if_none_match: IfNoneMatch = None) -> Response:
        v = resolve(version)
        etag = etag_of(v.content_hash, "-peft")
        if etag_matches(if_none_match, etag):
            return not_modified(v, etag, IMMUTABLE)
        zipped = zips.get(v.content_hash)
        if zipped is None:
            zipped = peft_zip_bytes(v, registry.read_bytes(v))
            zips.put(v.content_hash, zipped)
        metrics.adapter_bytes.inc(len(zipped))
        return peft_zip_response(v, zipped)

    # ------------------------------------------------------------------ runs
    @app.get("/v1/runs", tags=["runs"], response_model=list[RunOut])
    def list_runs() -> list[RunOut]:
        return [RunOut.of(r) for r in registry.list_runs()]

    @app.get("/v1/runs/{run_id}", tags=["runs"], response_model=RunOut, responses=NOT_FOUND)
    def get_run(run_id: RunId) -> RunOut:
        return RunOut.of(registry.get_run(run_id))

    @app.get(
        "/v1/runs/{run_id}/rounds",
        tags=["runs"],
        response_model=list[RoundOut],
        responses=NOT_FOUND,
    )
    def list_rounds(run_id: RunId) -> list[RoundOut]:
        return [RoundOut.of(r) for r in registry.list_rounds(run_id)]

    @app.get(
        "/v1/runs/{run_id}/participation",
        tags=["runs"],
        response_model=ParticipationOut,
        responses=NOT_FOUND,
        summary="How many clients took part in how many rounds (no client ids)",
    )
    def participation(run_id: RunId) -> ParticipationOut:
        hist = registry.participation_histogram(run_id)
        return ParticipationOut(
            run_id=run_id,
            clients=sum(hist.values()),
            histogram={str(k): v for k, v in sorted(hist.items())},
        )

    # ------------------------------------------------------------------ key, health, metrics
    @app.get(
        "/v1/signing-key",
        tags=["adapters"],
        response_model=SigningKeyOut,
        responses=NOT_FOUND,
        summary="The Ed25519 public key phones pin to verify adapters",
    )
    def signing_key() -> SigningKeyOut:
        if pub is None:
            raise HTTPException(404, "this hub was started without the server's signing key")
        return SigningKeyOut(
            key_id=key_id(pub),
            public_key_raw_b64=base64.b64encode(public_key_to_raw(pub)).decode(),
            public_key_pem=public_key_to_pem(pub).decode(),
        )

    @app.get("/healthz", tags=["ops"], response_model=HealthOut)
    def healthz() -> HealthOut:
        """Liveness: the process serves HTTP (no dependency is checked)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut}},
    )
    def readyz() -> Response:
        """Readiness: the database answers and the blob store is readable."""
        try:
            registry.check_ready()
        except RegistryUnavailable as exc:
            body = ReadyOut(status="unavailable", database=str(exc), blobs="unknown")
            return JSONResponse(body.model_dump(), status_code=503)
        return JSONResponse(ReadyOut(status="ok", database="ok", blobs="ok").model_dump())

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.collectors), media_type=CONTENT_TYPE_LATEST)

    hub_admin.install(app, registry, auth, max_upload_bytes)
    hub_dashboard.install(app)
    install_openapi(app)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``uvicorn --factory fedlora.server.hub:app_from_env``): the registry,
    key and tokens the environment names (see :mod:`fedlora.server.paths`)."""
    from . import paths
    from .keys import load_or_create_signing_key

    key = load_or_create_signing_key(paths.signing_key_path())
    return create_app(Registry.open(signing_key=key))
