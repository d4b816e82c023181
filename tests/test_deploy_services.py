"""Process supervision: a stopped service leaves nothing behind, even helpers that detached
into their own session (as Flower's SuperExec does), and a crash is an immediate SIGKILL."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fedlora.deployment.hub_client import HubClient, HubError
from fedlora.deployment.services import ServiceError, ServiceGroup, free_port

# A parent that starts one child in its own session (like Flower's detached SuperExec) and
# one plain child (like a ClientApp), prints their pids, then waits forever.
TREE = """
import subprocess, sys, time
detached = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            start_new_session=True)
plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("children", detached.pid, plain.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_stop_and_crash_leave_no_process_behind(tmp_path: Path, how: str) -> None:
    group = ServiceGroup(tmp_path)
    service = group.start("tree", [sys.executable, "-c", TREE])
    m = service.wait_for_log(r"children (\d+) (\d+)", 30)
    pids = [service.pid, int(m.group(1)), int(m.group(2))]
    assert all(_alive(p) for p in pids)
    if how == "stop":
        service.stop(grace=2)
    else:
        service.crash()
        group.stop_all(grace=1)  # the finalizer's sweep catches the detached child
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert group.leftovers() == {}


def test_a_service_that_dies_early_reports_its_log(tmp_path: Path) -> None:
    group = ServiceGroup(tmp_path)
    try:
        service = group.start("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
        with pytest.raises(ServiceError, match="boom"):
            service.wait_for_port("127.0.0.1", free_port(), timeout=20)
    finally:
        group.stop_all()


def test_phone_client_refuses_plain_http_and_missing_ca() -> None:
    with pytest.raises(HubError, match="plain http"):
        HubClient("http://127.0.0.1:1", None)
    with pytest.raises(HubError, match="CA certificate"):
        HubClient("https://127.0.0.1:1", None)
