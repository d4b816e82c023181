"""Content-addressed, crash-safe storage of adapter blobs (safetensors bytes).

A blob lives at ``<root>/sha256/<first two hex digits>/<sha256>.safetensors``; its name *is*
its SHA-256, so

* a write is idempotent and needs no coordination: the same bytes always land at the same
  path, via :func:`fedlora.adapter_io.atomic_write_bytes` (temp file + fsync + rename +
  directory fsync). A reader never sees a torn blob: the final name appears only after the
  bytes are durable;
* every read re-hashes the bytes and refuses (:class:`BlobIntegrityError`, logged at ERROR)
  anything whose content does not match its name — disk corruption or tampering is never
  served to a phone. Verified bytes are kept in a small in-memory LRU so the hub does not
  re-hash a hot adapter on every download; what is cached is exactly what was verified.

The registry writes blobs *before* the database transaction that points at them, so a crash
leaves at worst an unreferenced blob (removed by :meth:`BlobStore.remove_unreferenced`),
never a row pointing at a missing or partial file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fedlora.adapter_io import atomic_write_bytes
from fedlora.errors import FedloraError

log = logging.getLogger(__name__)

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".safetensors"


class BlobError(FedloraError):
    """Base class of blob-store failures."""


class BlobMissingError(BlobError, FileNotFoundError):
    """A referenced blob is not in the store."""


class BlobIntegrityError(BlobError):
    """A blob's bytes do not hash to its name: corrupt or tampered, refused."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_hash(content_hash: str) -> str:
    """Return ``content_hash`` if it is 64 lowercase hex digits, else raise ValueError."""
    if not _HASH_RE.match(content_hash):
        raise ValueError(f"not a SHA-256 hex digest: {content_hash!r}")
    return content_hash


@dataclass(frozen=True)
class StoredBlob:
    """One file in the store (for listings, fsck and garbage collection)."""

    content_hash: str
    path: Path
    size: int
    mtime: float


class BlobStore:
    """Immutable blobs addressed by SHA-256, with verified reads."""

    def __init__(self, root: str | Path, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = max(0, cache_bytes)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    def path_for(self, content_hash: str) -> Path:
        h = check_hash(content_hash)
        return self.root / "sha256" / h[:2] / f"{h}{SUFFIX}"

    def exists(self, content_hash: str) -> bool:
        return self.path_for(content_hash).is_file()

    # ------------------------------------------------------------------ write
    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its SHA-256. A valid existing copy is kept as is."""
        h = sha256_hex(data)
        path = self.path_for(h)
        if path.is_file():
            try:
                if sha256_hex(path.read_bytes()) == h:
                    return h
            except OSError:
                pass
            # A corrupt copy under the right name is replaced by good bytes.
            log.warning("blob %s was corrupt on disk; rewriting it", h)
        atomic_write_bytes(path, data)
        return h

    # ------------------------------------------------------------------ read
    def get(self, content_hash: str) -> bytes:
        """The blob's bytes, verified against its hash; loud errors if missing or corrupt."""
        h = check_hash(content_hash)
        with self._lock:
            cached = self._cache.get(h)
            if cached is not None:
                self._cache.move_to_end(h)
                return cached
        path = self.path_for(h)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            log.error("blob %s is referenced but missing at %s", h, path)
            raise BlobMissingError(f"adapter blob {h} is missing from {self.root}") from None
        actual = sha256_hex(data)
        if actual != h:
            log.error("blob %s failed its integrity check (content hashes to %s)", h, actual)
            raise BlobIntegrityError(
                f"adapter blob {h} at {path} is corrupt: its content hashes to {actual}; "
                "refusing to use it"
            )
        self._remember(h, data)
        return data

    def _remember(self, h: str, data: bytes) -> None:
        if len(data) > self._cache_limit // 4:
            return  # one huge blob must not evict everything else
        with self._lock:
            if h in self._cache:
                return
            self._cache[h] = data
            self._cache_bytes += len(data)
            while self._cache_bytes > self._cache_limit and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def forget_cache(self) -> None:
        """Drop cached verified bytes (tests that corrupt files on purpose use this)."""
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    # ------------------------------------------------------------------ listing / cleanup
    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every file named like a blob (temp files excluded)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                name = f.name
                if name.startswith(".") or not name.endswith(SUFFIX):
                    continue
                h = name[: -len(SUFFIX)]
                if not _HASH_RE.match(h):
                    continue
                st = f.stat()
                yield StoredBlob(h, f, st.st_size, st.st_mtime)

    def iter_temp_files(self) -> Iterator[Path]:
        """Leftovers of writes interrupted before their rename (never read by anyone)."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in base.iterdir():
            if sub.is_dir():
                yield from (f for f in sub.iterdir() if f.name.startswith("."))

    def remove_unreferenced(self, referenced: Iterable[str], grace_s: float = 3600.0) -> list[str]:
        """Delete blobs and temp files nobody references, older than ``grace_s`` seconds.

        The grace period protects a publish in flight: its blobs are on disk before the
        database row that references them is committed.
        """
        keep = set(referenced)
        cutoff = time.time() - grace_s
        removed: list[str] = []
        for blob in list(self.iter_blobs()):
            if blob.content_hash not in keep and blob.mtime < cutoff:
                blob.path.unlink(missing_ok=True)
                removed.append(blob.content_hash)
        for tmp in list(self.iter_temp_files()):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp.name)
            except FileNotFoundError:
                continue
        return removed

    def readable(self) -> bool:
        """True if the store's root exists (or can be created) and can be listed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.listdir(self.root)
            return os.access(self.root, os.R_OK | os.X_OK)
        except OSError:
            return False
