"""A phone's HTTPS client for the hub: TLS verified against the deployment's CA, ETags.

Transport only: it returns the bytes and the ``X-Fedlora-*`` headers exactly as served and
decides nothing about trust in the adapter. Whether the adapter may be loaded is decided by
the Ed25519 signature against a *pinned* key (:func:`fedlora.privacy.signing.load_verified`),
never by anything the hub says about itself — a hub (or anything between it and the phone)
can lie in headers, and TLS only proves who we talk to, not what they were given to serve.

TLS is verified against the CA file given (not the system store: the deployment's CA is
private), with host-name checking on; plain ``http://`` is refused unless the caller asks
for it explicitly (local debugging only).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from fedlora.errors import FedloraError

USER_AGENT = "fedlora-phone/1"


class HubError(FedloraError, ConnectionError):
    """The hub could not be reached, was not trusted (TLS), or answered with an error."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"{url}: {reason}")


@dataclass(frozen=True)
class Download:
    """One adapter download: status 200 with a body, or 304 (the phone's ETag matched)."""

    url: str
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def etag(self) -> str | None:
        return self.header("ETag")

    def _b64_header(self, name: str) -> bytes | None:
        raw = self.header(name)
        if raw is None:
            return None
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise HubError(self.url, f"header {name} is not base64") from exc

    @property
    def signature_json(self) -> bytes | None:
        """The detached signature record (``X-Fedlora-Signature``), None if absent."""
        return self._b64_header("X-Fedlora-Signature")

    @property
    def metadata_json(self) -> bytes | None:
        """Canonical metadata JSON as the server signed it (``X-Fedlora-Metadata``)."""
        return self._b64_header("X-Fedlora-Metadata")


def _headers(msg: Message) -> dict[str, str]:
    return {k: v for k, v in msg.items()}


class HubClient:
    """GETs against one hub base URL (``https://host:port``)."""

    def __init__(
        self,
        base_url: str,
        ca_cert: Path | None,
        *,
        timeout: float = 30.0,
        allow_insecure_http: bool = False,
    ) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise HubError(base_url, "hub URL must look like https://host:port")
        if parsed.scheme == "http" and not allow_insecure_http:
            raise HubError(base_url, "refusing plain http: phones talk to the hub over TLS")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            if ca_cert is None:
                raise HubError(base_url, "an https hub needs the deployment's CA certificate")
            self.context = ssl.create_default_context(cafile=str(ca_cert))

    def _open(self, path: str, etag: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        url = f"{self.base_url}{path}"
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if etag:
            req.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                return resp.status, resp.read(), _headers(resp.headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return 304, b"", _headers(exc.headers)
            detail = exc.read()[:500].decode(errors="replace")
            raise HubError(url, f"HTTP {exc.code}: {detail}", exc.code) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise HubError(url, f"TLS certificate refused: {reason.verify_message}") from exc
            raise HubError(url, f"unreachable: {reason}") from exc
        except ssl.SSLError as exc:
            raise HubError(url, f"TLS failed: {exc}") from exc

    def get(self, path: str, etag: str | None = None) -> Download:
        status, body, headers = self._open(path, etag)
        return Download(url=f"{self.base_url}{path}", status=status, body=body, headers=headers)

    def latest(
        self, rank: int | None = None, etag: str | None = None, *, run: int | None = None
    ) -> Download:
        """The newest committed adapter (the view at ``rank``, of run ``run``, if given)."""
        params = {"rank": rank, "run": run}
        query = urllib.parse.urlencode({k: int(v) for k, v in params.items() if v is not None})
        return self.get(f"/v1/adapters/latest{'?' + query if query else ''}", etag)

    def version(self, ref: str | int, etag: str | None = None) -> Download:
        return self.get(f"/v1/adapters/{urllib.parse.quote(str(ref))}", etag)

    def peft_zip(self, ref: str | int) -> Download:
        return self.get(f"/v1/adapters/{urllib.parse.quote(str(ref))}/peft.zip")

    def json(self, path: str) -> Any:
        status, body, _ = self._open(path)
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise HubError(f"{self.base_url}{path}", f"not JSON (status {status})") from exc
