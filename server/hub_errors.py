"""Exception → HTTP status mapping for the hub: bad input is a 4xx with a reason, always.

* request validation → 422 with each problem's location and message (the offending *input*
  is left out: echoing undecodable bytes is how FastAPI's default handler can itself fail);
* our domain errors: not found → 404, round state → 409, invalid adapter / signature /
  registry request → 422;
* ``ValueError``/``UnicodeError``/``LookupError`` escaping a route come from decoding what the
  client sent → 400, so malformed input cannot turn into a 500;
* the database or blob store being unreachable → 503 (the client may retry);
* a blob that fails its hash check → 500 with a clear message: that is the server's fault,
  and refusing to serve it is the point;
* anything else → 500 with an error id that is also logged, never a traceback.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from fedlora.errors import AdapterValidationError
from fedlora.privacy.signing import SignatureError

from .blobstore import BlobError
from .registry_types import NotFoundError, RegistryError, RegistryUnavailable, RoundStateError

log = logging.getLogger(__name__)


def _json(status: int, detail: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping described in the module docstring on ``app``."""

    @app.exception_handler(405)
    async def _method_not_allowed(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's Allow header names only the first route matching the path; a path
        # served by several routes (GET and POST /v1/runs) needs all of their methods.
        methods: set[str] = set()
        for route in req.app.router.routes:
            match, _ = route.matches({**req.scope, "method": "GET"})
            if match != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        allow = ", ".join(sorted(methods))
        return JSONResponse(
            {"detail": "method not allowed"}, status_code=405, headers={"Allow": allow}
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _json(422, f"invalid request: {summary}", errors=errors)

    @app.exception_handler(NotFoundError)
    async def _not_found(_req: Request, exc: NotFoundError) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(RoundStateError)
    async def _conflict(_req: Request, exc: RoundStateError) -> JSONResponse:
        return _json(409, str(exc))

    @app.exception_handler(RegistryUnavailable)
    async def _unavailable(_req: Request, exc: RegistryUnavailable) -> JSONResponse:
        return _json(503, str(exc))

    @app.exception_handler(BlobError)
    async def _blob(_req: Request, exc: BlobError) -> JSONResponse:
        log.error("blob store failure: %s", exc)
        return _json(500, f"stored adapter unusable: {exc}")

    @app.exception_handler(RegistryError)
    async def _registry(_req: Request, exc: RegistryError) -> JSONResponse:
        return _json(422, str(exc))

    @app.exception_handler(AdapterValidationError)
    async def _adapter(_req: Request, exc: AdapterValidationError) -> JSONResponse:
        return _json(422, f"invalid adapter: {exc}")

    @app.exception_handler(SignatureError)
    async def _signature(_req: Request, exc: SignatureError) -> JSONResponse:
        return _json(422, str(exc))

    @app.exception_handler(IntegrityError)
    async def _integrity(_req: Request, exc: IntegrityError) -> JSONResponse:
        return _json(409, "conflicts with existing registry data")

    @app.exception_handler(DataError)
    async def _data(_req: Request, exc: DataError) -> JSONResponse:
        return _json(422, "a value is out of range for the registry")

    @app.exception_handler(OperationalError)
    async def _operational(_req: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database error: %s", exc)
        return _json(503, "database unavailable, retry later")

    @app.exception_handler(SAInterfaceError)
    async def _interface(_req: Request, exc: SAInterfaceError) -> JSONResponse:
        log.warning("database interface error: %s", exc)
        return _json(503, "database unavailable, retry later")

    for bad_input in (ValueError, UnicodeError, LookupError, OverflowError):

        @app.exception_handler(bad_input)
        async def _bad_input(_req: Request, exc: Exception) -> JSONResponse:
            return _json(400, f"bad request: {exc.__class__.__name__}: {exc}"[:500])

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        error_id = secrets.token_hex(6)
        log.error("unexpected error %s", error_id, exc_info=exc)
        return _json(500, f"internal error (id {error_id}); see the hub's log")


def validation_error_schema() -> dict[str, Any]:
    """The OpenAPI shape of our 422 body (``detail`` is a sentence, ``errors`` the list)."""
    return {
        "title": "HTTPValidationError",
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {"type": "string", "title": "Detail"},
            "errors": {
                "type": "array",
                "title": "Errors",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"type": "string"}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
    }


def install_openapi(app: FastAPI) -> None:
    """Publish our 422 body shape instead of FastAPI's default list-valued ``detail``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas["HTTPValidationError"] = validation_error_schema()
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
