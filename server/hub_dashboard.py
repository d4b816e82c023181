"""The dashboard pages: one static HTML page plus its script and style sheet.

The page draws its charts itself (SVG, no chart library, no build step) from the public JSON
API (``/v1/runs``, ``/v1/runs/{id}/rounds``), so it shows exactly what the API serves and
needs nothing the hub does not already have. Files are read once from package data.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import RedirectResponse, Response

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("fedlora.server.dashboard").joinpath(name).read_bytes()


def install(app: FastAPI) -> None:
    """Add the dashboard routes (hidden from the OpenAPI schema) to ``app``."""
    r = app

    @r.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=307)

    @r.get("/dashboard", include_in_schema=False)
    def dashboard() -> Response:
        return Response(_asset("index.html"), media_type=_FILES["index.html"])

    @r.get("/dashboard/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in _FILES:
            raise HTTPException(404, f"no dashboard file {name!r}")
        return Response(
            _asset(name), media_type=_FILES[name], headers={"Cache-Control": "no-cache"}
        )
