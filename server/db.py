"""Database engines for the registry: SQLite by default, PostgreSQL by URL.

SQLite is set up for durability and concurrent readers: WAL journal (the hub reads while the
round loop writes), ``synchronous=FULL`` (a commit that returned survives power loss, which
WAL's default ``NORMAL`` does not promise), foreign keys on, and a busy timeout so a reader
waits for a writer instead of failing. PostgreSQL goes through psycopg 3
(``postgresql+psycopg://``); a bare ``postgresql://`` URL is mapped onto that driver so the
usual libpq-style URLs just work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from .models import Base


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for PostgreSQL URLs that do not name a driver."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, *, create_schema: bool = True) -> Engine:
    """An engine for ``url`` with the settings above; creates the tables when asked."""
    url = normalize_url(url)
    u = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    engine = create_engine(url, **kwargs)
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create_schema:
        Base.metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()
