"""Writing key and certificate files: atomically, and private keys readable by the owner only.

A deployment's private keys (the CA's, the server's TLS key, each SuperNode's authentication
key) are the whole of its security. They are created with mode 0600 *before* any byte is
written (``mkstemp`` creates the temporary file that way and the mode is never widened), so
there is no window in which another local user could read them, and the rename makes a
half-written key impossible. Public material (certificates, public keys) is made 0644.

Existing files are never overwritten unless asked: regenerating a CA by accident would lock
every deployed phone out, so that must be a deliberate ``--force``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedlora.errors import FedloraError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class KeyFileExists(FedloraError, FileExistsError):
    """A key or certificate file already exists and overwriting was not asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} already exists (pass --force to replace it)")


def write_file(path: Path, data: bytes, *, secret: bool, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with mode 0600 (secret) or 0644 (public)."""
    if path.exists() and not overwrite:
        raise KeyFileExists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, SECRET_MODE if secret else PUBLIC_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
