"""Measuring the real peak memory of a training step.

torch does not track its CPU allocations (there is no ``max_memory_allocated`` for the CPU)
and ``tracemalloc`` only sees Python objects, so on a CPU the truth is the process's resident
set, read from one of two sources:

* the kernel's own high-water mark ``VmHWM`` from ``/proc/self/status``, reset before the
  measured region by writing ``5`` to ``/proc/self/clear_refs`` (Linux and Android; exact,
  nothing is missed between samples);
* where ``clear_refs`` is not writable (other OSes, sandboxes): a sampling thread reading
  the RSS through psutil every ``interval_s`` (it can miss short spikes, and it takes the
  GIL each time: measured ~+20 ms on a 50 ms step at 2 ms, hence only as a fallback).

Before measuring, memory the C allocator keeps but nothing uses is handed back to the OS
(``malloc_trim``), else a previous step's freed blocks would be reused invisibly and the
next measurement would read low. The meter reports the *increase* over the resident set at
entry: the step's working set
(activations, gradients, optimizer state, temporaries). Weights already resident are not in
it; :mod:`fedlora.client.memory_plan` adds their exact byte count. On an accelerator the
allocator's own peak (``torch.accelerator.max_memory_allocated``) is used instead; it includes
the weights, which live on the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for accelerators: CPU metering stays import-light
    import torch

MB = 1024 * 1024
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_LIBC: ctypes.CDLL | bool | None = None


def current_rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is in the client extra
        return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _libc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC if isinstance(_LIBC, ctypes.CDLL) else None


M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Make the C allocator give every block ≥ ``threshold_bytes`` back to the OS on free.

    glibc raises its mmap threshold dynamically after large frees (up to 32 MB), after which
    activations of varying shapes come from the heap and freed holes stay resident:
    measured here, a micro-batch-2 round then peaked at ~1.9× its live memory. A fixed
    threshold (set once, process-wide) keeps the resident set equal to live tensors, so a
    memory budget is a real budget; it cost no measurable step time here. False where the
    C library has no ``mallopt`` (non-glibc).
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))


def release_free_memory() -> bool:
    """Hand memory the C allocator holds but no tensor uses back to the OS (glibc
    ``malloc_trim``), so the resident set at the start of a measurement is the real
    baseline and not inflated by a previous step's freed blocks. False where unsupported."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemoryMeter:
    """Context manager: ``with PeakMemoryMeter(device) as m: ...; m.peak_increase_bytes``.

    On CPU, ``peak_increase_bytes`` is the peak resident set during the block minus the
    resident set at entry; on an accelerator it is the allocator's peak during the block
    minus its allocation at entry, and ``device_peak_bytes`` is the absolute peak.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002) -> None:
        self.device_type = (device if isinstance(device, str) else device.type).split(":")[0]
        self.interval_s = interval_s
        self.baseline_bytes = 0
        self.peak_bytes = 0
        self.device_peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm = False

    @property
    def peak_increase_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)

    @property
    def peak_increase_mb(self) -> float:
        return self.peak_increase_bytes / MB

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __enter__(self) -> PeakMemoryMeter:
        if self.device_type != "cpu":
            import torch

            acc = torch.accelerator
            acc.synchronize()
            acc.reset_peak_memory_stats()
            self.baseline_bytes = int(acc.memory_allocated())
            self.peak_bytes = self.baseline_bytes
            return self
        release_free_memory()
        self.baseline_bytes = current_rss_bytes()
        self.peak_bytes = self.baseline_bytes
        self._hwm = _reset_hwm()
        if not self._hwm:  # no kernel high-water mark: sample (costs the GIL every interval)
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="fedlora-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.device_type != "cpu":
            import torch

            acc = torch.accelerator
            acc.synchronize()
            self.device_peak_bytes = int(acc.max_memory_allocated())
            self.peak_bytes = self.device_peak_bytes
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
        if self._hwm:
            self.peak_bytes = max(self.peak_bytes, _status_kb("VmHWM") * 1024)
