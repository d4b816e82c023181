"""kill -9 the server mid-round, restart it: it continues from the last committed round and
never serves a torn or half-written adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.config import load_settings
from fedlora.privacy.signing import verify_adapter
from fedlora.server.keys import load_signing_key
from fedlora.server.registry import Registry

CHILD = Path(__file__).with_name("round_loop_child.py")


def run_child(workdir: Path, model_dir: Path, kill_at: str | None) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(workdir), str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if kill_at is not None and line.strip() == kill_at:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL, lines
    else:
        assert proc.returncode == 0, lines
    return lines


@pytest.mark.slow
def test_kill_9_mid_round_then_resume(default_model_dir: Path, tmp_path: Path) -> None:
    first = run_child(tmp_path, default_model_dir, kill_at="TRAINING round=2")
    assert "DONE round=1 status=published" in first
    assert not any(line.startswith("DONE round=2") for line in first)

    second = run_child(tmp_path, default_model_dir, kill_at=None)
    assert second[0] == "START round=2"  # continues after the last committed round
    assert "DONE round=2 status=published" in second
    assert "DONE round=3 status=published" in second

    settings = load_settings(
        None,
        [
            f'server.database_url="sqlite:///{tmp_path}/registry.db"',
            f'server.blob_dir="{tmp_path}/blobs"',
        ],
    )
    reg = Registry.open(settings.server)
    try:
        run = next(r for r in reg.list_runs() if r.name == "crash")
        rounds = reg.list_rounds(run.id)
        statuses = [(r.number, r.status) for r in rounds]
        print(statuses)
        committed = [n for n, st in statuses if st == "committed"]
        assert committed == [1, 2, 3]
        interrupted = [r for r in rounds if r.number == 2 and r.status != "committed"]
        assert interrupted and interrupted[0].failure_reason  # the killed attempt says why
        report = reg.fsck()
        assert report.ok, report
        key = load_signing_key(tmp_path / "key.pem").public_key()
        for r in rounds:
            if r.status == "committed" and r.community_version_id is not None:
                version = reg.get_version(r.community_version_id)
                adapter = reg.load_adapter(version.id)  # hash-checked on read
                verify_adapter(adapter, version.signature, key)
                assert adapter.meta.round == r.number
    finally:
        reg.close()
