"""Bearer-token protection for the hub's write and admin endpoints.

Reads (adapter downloads, runs, the dashboard) are public: phones and dashboards need no
secret. Everything that changes the registry needs ``Authorization: Bearer <token>``. Tokens
come from ``$FEDLORA_HUB_TOKEN`` (comma-separated, so a rotation can accept old and new
for a while) or a file named by ``$FEDLORA_HUB_TOKEN_FILE`` (one token per line, for
container secrets) — never from the TOML config, which tends to end up in version control.

Comparison is constant-time (:func:`hmac.compare_digest` over SHA-256 digests, so neither
content nor length leaks through timing), and every configured token is compared, so the
time does not depend on which one matched. With no token configured, writes are refused
(403) rather than open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_ENV = "FEDLORA_HUB_TOKEN"
TOKEN_FILE_ENV = "FEDLORA_HUB_TOKEN_FILE"
MIN_TOKEN_LENGTH = 16


def tokens_from_env() -> list[str]:
    """Admin tokens from the environment (see the module docstring)."""
    tokens = [t.strip() for t in os.environ.get(TOKEN_ENV, "").split(",")]
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        tokens += [line.strip() for line in Path(path).read_text().splitlines()]
    return [t for t in tokens if t]


class TokenAuth:
    """Holds the digests of the accepted tokens; ``require`` is the FastAPI dependency."""

    scheme = HTTPBearer(auto_error=False, description="Admin token (FEDLORA_HUB_TOKEN)")

    def __init__(self, tokens: Iterable[str]) -> None:
        toks = [t for t in tokens if t]
        short = [t for t in toks if len(t) < MIN_TOKEN_LENGTH]
        if short:
            raise ValueError(f"hub tokens must be at least {MIN_TOKEN_LENGTH} characters long")
        self._digests = [hashlib.sha256(t.encode()).digest() for t in toks]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str) -> bool:
        given = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        ok = False
        for digest in self._digests:
            ok |= hmac.compare_digest(given, digest)
        return ok

    def dependency(self) -> Callable[..., None]:
        """A dependency that lets a request through only with a valid bearer token."""

        def require(
            creds: HTTPAuthorizationCredentials | None = Depends(self.scheme),
        ) -> None:
            if not self.enabled:
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"writes are disabled: this hub has no admin token (set {TOKEN_ENV})",
                )
            if creds is None or creds.scheme.lower() != "bearer":
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "missing bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not self.check(creds.credentials):
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "invalid bearer token",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )

        return require
