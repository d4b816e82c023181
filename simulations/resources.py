"""Peak memory of a whole process tree (the driver plus Ray's GCS, raylet and workers).

A simulation's memory lives in many processes, so the driver's own ``ru_maxrss`` says little.
:class:`TreeMemorySampler` samples the resident set size of a root process and all its
descendants in a background thread (psutil) and keeps the peak of their sum. RSS counts
shared pages (libraries, Ray's object store) once per process that maps them, so it
overstates absolute memory; it is the right yardstick for *comparing* runs, e.g. 200 vs 1000
phones.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

MB = 1024 * 1024


def tree_rss_bytes(root_pid: int) -> int:
    """Current RSS of ``root_pid`` and all its descendants (0 if it is gone)."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue
    return total


class TreeMemorySampler:
    """``with TreeMemorySampler() as m: ...`` then ``m.peak_mb``; samples every ``interval_s``."""

    def __init__(self, root_pid: int | None = None, interval_s: float = 0.5) -> None:
        self.root_pid = root_pid if root_pid is not None else os.getpid()
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MB

    def sample(self) -> int:
        now = tree_rss_bytes(self.root_pid)
        self.peak_bytes = max(self.peak_bytes, now)
        self.samples += 1
        return now

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
