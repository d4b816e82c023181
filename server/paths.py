"""Where the registry keeps its database, blobs and signing key.

One place decides the defaults so that the round loop, the hub and the CLI always open the
same registry: ``server.database_url`` (else SQLite at ``$FEDLORA_HOME/registry.db``),
``server.blob_dir`` (else ``$FEDLORA_HOME/blobs``) and the server's Ed25519 signing key
(``$FEDLORA_SIGNING_KEY`` or ``$FEDLORA_HOME/signing_key.pem``).
"""

from __future__ import annotations

import os
from pathlib import Path

from fedlora.config import ServerSettings
from fedlora.home import fedlora_home

SIGNING_KEY_ENV = "FEDLORA_SIGNING_KEY"
DATABASE_URL_ENV = "FEDLORA_DATABASE_URL"


def database_url(settings: ServerSettings | None = None) -> str:
    """The SQLAlchemy URL: config, then ``$FEDLORA_DATABASE_URL``, then SQLite in the home.

    The environment variable exists for containers, where the URL (with its password) comes
    from the orchestrator rather than from a TOML file baked into the image.
    """
    if settings is not None and settings.database_url:
        return settings.database_url
    env = os.environ.get(DATABASE_URL_ENV)
    if env:
        return env
    return f"sqlite:///{fedlora_home() / 'registry.db'}"


def blob_dir(settings: ServerSettings | None = None) -> Path:
    """The content-addressed blob directory (created on demand by the blob store)."""
    if settings is not None and settings.blob_dir:
        return Path(settings.blob_dir).expanduser()
    return fedlora_home() / "blobs"


def signing_key_path() -> Path:
    """The server's private signing key file (PKCS#8 PEM, mode 0600)."""
    raw = os.environ.get(SIGNING_KEY_ENV)
    return Path(raw).expanduser() if raw else fedlora_home() / "signing_key.pem"
