"""Starting, watching and — above all — stopping the processes of a local deployment.

Flower's services spawn helpers the caller never sees: the SuperLink starts a SuperExec in a
*new session* (``start_new_session``) which starts the ServerApp process; each SuperNode
starts a SuperExec which starts one ``flwr-clientapp`` process per message. Killing the
process we started is therefore not enough: a SuperExec outlives its parent until its parent
monitor notices, and a ServerApp can keep a port or a database open.

So every service is started as the leader of its own process group, and :meth:`Service.stop`
first snapshots the whole process *tree* (by parent pid, from ``/proc``), then sends SIGTERM
to the group, waits, and finally SIGKILLs the group and every process of the snapshot that
is still alive. :meth:`Service.crash` is the phone-dies-mid-round case: SIGKILL to the group,
no grace, no goodbye to the SuperLink.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedlora.errors import FedloraError


class ServiceError(FedloraError, RuntimeError):
    """A service exited early or did not become ready in time (its log tail is attached)."""


# ---------------------------------------------------------------------------- process trees
def _children_map() -> dict[int, list[int]]:
    """ppid -> pids of every process visible in /proc (empty where there is no /proc)."""
    tree: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return tree
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 2:
            tree.setdefault(int(rest[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, …), parents first."""
    tree = _children_map()
    out: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(tree.get(child, []))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text()
        return state[state.rfind(")") + 2 :].split()[0] != "Z"
    except OSError:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# ---------------------------------------------------------------------------- readiness
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- one service
@dataclass
class Service:
    """One started process (leader of its own process group) and its log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    known: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def remember_tree(self) -> None:
        """Record the current descendants, so that ones re-parented later are still found."""
        if self.running():
            self.known.update(descendants(self.pid))

    def _fail(self, what: str) -> ServiceError:
        tail = self.log_tail()
        return ServiceError(f"{self.name}: {what}\n--- {self.log_path} (tail) ---\n{tail}")

    def wait_for_port(self, host: str, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise self._fail(f"exited with code {self.popen.returncode} before listening")
            if port_open(host, port):
                self.remember_tree()
                return
            time.sleep(0.2)
        raise self._fail(f"not listening on {host}:{port} after {timeout:.0f} s")

    def wait_for_log(self, pattern: str, timeout: float = 60.0, *, start: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log (from character ``start``)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), start)
            if m is not None:
                self.remember_tree()
                return m
            if not self.running():
                raise self._fail(f"exited with code {self.popen.returncode}; no {pattern!r}")
            if time.monotonic() > deadline:
                raise self._fail(f"no {pattern!r} in the log after {timeout:.0f} s")
            time.sleep(0.2)

    def wait_exit(self, timeout: float) -> int:
        """Exit code; :class:`ServiceError` if still running after ``timeout``."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise self._fail(f"still running after {timeout:.0f} s") from exc

    def crash(self) -> None:
        """SIGKILL the whole process group at once: a phone that dies without a word."""
        self.remember_tree()
        _signal_group(self.pid, signal.SIGKILL)
        for pid in self.known:
            _signal_pid(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, wait up to ``grace`` s, then SIGKILL the group and the tree."""
        self.remember_tree()
        if self.running():
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        _signal_group(self.pid, signal.SIGKILL)
        leftovers = [p for p in self.known if _alive(p)]
        for pid in leftovers:
            _signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, 2.0)
        while any(_alive(p) for p in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in leftovers:
            _signal_pid(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def leftovers(self) -> list[int]:
        """Processes of this service's tree that are still alive (should be none after stop)."""
        return sorted(p for p in {self.pid, *self.known} if _alive(p))


# ---------------------------------------------------------------------------- a group
class ServiceGroup:
    """The services of one deployment; :meth:`stop_all` in reverse start order.

    Use as a context manager (or call :meth:`stop_all` from a test fixture's finalizer) so
    that nothing is left running whatever happens.
    """

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = dict(os.environ if env is None else env)
        self.services: dict[str, Service] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        if name in self.services and self.services[name].running():
            raise ServiceError(f"service {name!r} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        merged = {**self.env, **(env or {})}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=merged,
                cwd=cwd,
                start_new_session=True,
            )
        service = Service(name=name, argv=list(argv), log_path=log_path, popen=popen)
        self.services[name] = service
        return service

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def snapshot(self) -> None:
        """Record every service's current process tree (cheap; call it now and then)."""
        for s in self.services.values():
            s.remember_tree()

    def stop_all(self, grace: float = 5.0) -> None:
        for service in reversed(list(self.services.values())):
            service.stop(grace)

    def leftovers(self) -> dict[str, list[int]]:
        out = {name: s.leftovers() for name, s in self.services.items()}
        return {k: v for k, v in out.items() if v}

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def services(log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[ServiceGroup]:
    group = ServiceGroup(log_dir, env)
    try:
        yield group
    finally:
        group.stop_all()


def python_tool(name: str) -> str:
    """The console script ``name`` next to this interpreter (the venv's), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
