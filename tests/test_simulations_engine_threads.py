"""The Simulation Engine's worker threads are sized for the whole actor pool while a
simulation runs (flwr 1.41 caps them at cpus + 4 otherwise), and restored afterwards."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import pytest

vce_api = pytest.importorskip("flwr.server.superlink.fleet.vce.vce_api")

from fedlora.simulations.engine_threads import engine_threads  # noqa: E402


def test_the_installed_engine_sizes_its_workers_with_a_default_executor() -> None:
    """What the work-around relies on: run_api (started by start_vce) makes a default-size
    ``ThreadPoolExecutor()`` and submits one worker per actor. If flwr changes this, revisit
    engine_threads."""
    source = inspect.getsource(vce_api.run_api)
    assert "ThreadPoolExecutor()" in source
    assert "backend.num_workers" in source
    assert vce_api.ThreadPoolExecutor is ThreadPoolExecutor


def test_engine_threads_sizes_the_engines_executor_then_restores_it() -> None:
    default = ThreadPoolExecutor()
    assert default._max_workers < 64  # min(32, cpus + 4): the limit being lifted
    default.shutdown()
    with engine_threads(64) as sized:
        assert sized
        with vce_api.ThreadPoolExecutor() as pool:
            assert pool._max_workers == 64
            # 40 looping workers, as the engine submits them: all run at once
            import threading

            started = threading.Barrier(41)
            futures = [pool.submit(started.wait, 10) for _ in range(40)]
            started.wait(10)
            assert all(f.result(10) is not None for f in futures)
        with vce_api.ThreadPoolExecutor(max_workers=3) as explicit:
            assert explicit._max_workers == 3
    assert vce_api.ThreadPoolExecutor is ThreadPoolExecutor


def test_without_the_name_to_patch_the_run_goes_on_unpatched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(vce_api, "ThreadPoolExecutor")
    with engine_threads() as sized:
        assert not sized
    assert "at most cpus + 4 phones" in caplog.text
    assert not hasattr(vce_api, "ThreadPoolExecutor")
