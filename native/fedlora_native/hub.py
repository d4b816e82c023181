"""HTTPS to the hub, the way a phone app must do it: the deployment's CA only, ETags.

The hub is a private deployment with its own CA, so the app pins that CA (bundled with
the app) instead of trusting the system store; host names are checked. ``If-None-Match``
with the ETag of the adapter the app already has makes "nothing new" a bodiless 304 —
phones poll, and most polls find nothing new.

Endpoints used (see docs/native-client.md): ``GET /v1/adapters/latest?rank=R`` (the newest
view at the app's rank; ``run=ID`` to pin a run), ``GET /v1/adapters/{version}`` (immutable,
cacheable forever), ``GET /v1/signing-key`` (for display only — the key is *pinned*, never
learned from the server it is meant to check).
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora_native.errors import NativeError

USER_AGENT = "fedlora-native/0.1"


class HubUnavailable(NativeError):
    """The hub could not be reached, its certificate was refused, or it answered an error."""


@dataclass(frozen=True)
class Download:
    """An adapter response: status 200 (body) or 304 (not modified), and its headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def etag(self) -> str | None:
        return self.header("etag")

    def b64_header(self, name: str) -> bytes | None:
        raw = self.header(name)
        if raw is None:
            return None
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return None


class NativeHubClient:
    """GETs against ``https://host:port`` with the CA in ``ca_file`` (PEM) pinned."""

    def __init__(self, base_url: str, ca_file: Path, *, timeout: float = 30.0) -> None:
        if urllib.parse.urlsplit(base_url).scheme != "https":
            raise HubUnavailable(f"{base_url}: the hub must be https")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca_file))

    def _get(self, path: str, etag: str | None) -> Download:
        req = urllib.request.Request(self.base_url + path, headers={"User-Agent": USER_AGENT})
        if etag:
            req.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as r:
                headers = {k.lower(): v for k, v in r.headers.items()}
                return Download(status=r.status, body=r.read(), headers=headers)
        except urllib.error.HTTPError as exc:
            headers = {k.lower(): v for k, v in exc.headers.items()}
            if exc.code == 304:
                return Download(status=304, body=b"", headers=headers)
            raise HubUnavailable(f"{req.full_url}: HTTP {exc.code}") from exc
        except urllib.error.URLError as exc:
            raise HubUnavailable(f"{req.full_url}: {exc.reason}") from exc

    def latest(
        self, rank: int | None = None, *, run: int | None = None, etag: str | None = None
    ) -> Download:
        params = {k: int(v) for k, v in (("rank", rank), ("run", run)) if v is not None}
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return self._get(f"/v1/adapters/latest{query}", etag)

    def version(self, ref: str | int, *, etag: str | None = None) -> Download:
        return self._get(f"/v1/adapters/{urllib.parse.quote(str(ref))}", etag)

    def json(self, path: str) -> Any:
        return json.loads(self._get(path, None).body)
