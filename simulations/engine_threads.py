"""Let every Flower actor receive messages: size the Simulation Engine's worker threads.

flwr 1.41's Simulation Engine (``flwr.server.superlink.fleet.vce.vce_api.run_api``) feeds
the Ray actor pool from worker threads, one per actor, each looping until the run ends —
but it submits them to ``ThreadPoolExecutor()`` of the *default* size,
``min(32, os.cpu_count() + 4)``. Workers beyond that never start, so however many actors
the pool holds, at most ``cpus + 4`` ClientApp calls are ever in flight: 6 on a 2-core
machine. Measured here (16 phones a round, 10 steps each, vectorized phones with K = 8 and
16): the service never saw more than 6 phones waiting, batches of 2–4; with the executor
sized to the pool, batches of 4 (K = 8) and 8 (K = 16), and the steady-state round went
from 5.1–5.7 s to 3.8–4.1 s. The same limit caps plain PEFT runs whose actors take a
fraction of a CPU each (``simulation.num_cpus_per_client`` < 1).

:func:`engine_threads` sizes that executor for the duration of a simulation by replacing
the name ``ThreadPoolExecutor`` in that one flwr module with a version whose default size is
``max_workers`` (threads are created only as work is submitted, so a generous bound costs
nothing), and restores it afterwards. If a flwr release no longer has that name there, the
run goes on unpatched and says so in the log (``tests/test_simulations_engine_threads.py``
pins the behaviour of the installed release).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

ENGINE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
MAX_ENGINE_THREADS = 1024


def _sized_executor(max_workers: int) -> Any:
    def make(*args: Any, **kwargs: Any) -> ThreadPoolExecutor:
        if not args and "max_workers" not in kwargs:
            kwargs["max_workers"] = max_workers
        return ThreadPoolExecutor(*args, **kwargs)

    return functools.wraps(ThreadPoolExecutor)(make)


@contextmanager
def engine_threads(max_workers: int = MAX_ENGINE_THREADS) -> Iterator[bool]:
    """While the block runs, the Simulation Engine gets up to ``max_workers`` worker threads
    (one per actor). Yields whether the engine could be sized (False: flwr changed)."""
    import importlib

    try:
        module = importlib.import_module(ENGINE_MODULE)
    except ImportError:
        module = None
    original = getattr(module, "ThreadPoolExecutor", None)
    if module is None or original is not ThreadPoolExecutor:
        log.warning(
            "flwr's simulation engine (%s) has no ThreadPoolExecutor to size: at most "
            "cpus + 4 phones run at once",
            ENGINE_MODULE,
        )
        yield False
        return
    module.ThreadPoolExecutor = _sized_executor(max_workers)  # type: ignore[attr-defined]
    try:
        yield True
    finally:
        module.ThreadPoolExecutor = original  # type: ignore[attr-defined]
