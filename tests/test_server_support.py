"""Helpers shared by the server tests (imported as ``test_server_support``; holds no tests).

* :func:`postgres_base_url` starts ONE throwaway PostgreSQL server per test process
  (``initdb`` into a temp dir, ``pg_ctl start`` on a free loopback port, as the ``postgres``
  user when running as root) and stops it at exit; :func:`fresh_postgres_url` gives each test
  its own database on it. Where no server can be started, tests are skipped with the reason.
* :func:`free_port`, :func:`serve_in_thread`: a real uvicorn server on 127.0.0.1 for tests
  that need a browser or a real socket.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_PG: dict[str, object] = {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _start_postgres() -> str:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("psycopg 3 is not installed (pip install 'psycopg[binary]')") from exc
    base = Path(tempfile.mkdtemp(prefix="fedlora-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root and there is no 'postgres' user") from exc
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    port = free_port()
    run = subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "fedlora", "-N", "-E", "UTF8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode:
        raise RuntimeError(f"initdb failed: {run.stderr.strip()[-500:]}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if start.returncode:
        tail = log.read_text()[-500:] if log.exists() else start.stderr
        raise RuntimeError(f"pg_ctl start failed: {tail}")

    def stop() -> None:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql+psycopg://fedlora@127.0.0.1:{port}"


def postgres_base_url() -> str:
    """``postgresql+psycopg://user@host:port`` of the shared test server, or skip."""
    if "url" not in _PG and "error" not in _PG:
        try:
            _PG["url"] = _start_postgres()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _PG["error"] = str(exc)
    if "error" in _PG:
        pytest.skip(f"no PostgreSQL server could be started: {_PG['error']}")
    return str(_PG["url"])


def fresh_postgres_url() -> str:
    """A new, empty database on the shared server (one per test keeps tests independent)."""
    import psycopg

    base = postgres_base_url()
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


@contextlib.contextmanager
def serve_in_thread(app: object) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
