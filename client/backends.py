"""Which compute backend the phone trains on, and in which dtype.

Phones differ: most train on the CPU, some have a GPU reachable through torch (CUDA on
Jetson-class boards and laptops, MPS on Apple silicon, XPU on Intel, or any other
``torch.accelerator``). ``device = "auto"`` takes the accelerator torch reports, else the
CPU. Asking for a backend that is not there is a :class:`BackendUnavailableError` — never a
silent fall back to the CPU, because a phone that believes it trains on a GPU would plan its
memory and deadline wrongly.

The compute dtype follows the backend: bf16 where the hardware has native bf16 (CPUs with
AVX512-BF16/AMX or ARMv8.6 BF16, Ampere+ GPUs, MPS), else fp32 on CPUs and fp16 on older
GPUs. fp16 is never used on a CPU: it has no fast kernels there (measured ~40× slower than
bf16 for a LoRA step).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from fedlora.errors import FedloraError

KNOWN_BACKENDS = ("cpu", "cuda", "mps", "xpu")


class BackendUnavailableError(FedloraError, RuntimeError):
    """The requested compute backend does not exist on this device (or in this torch build)."""


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name (``cpu``, ``cuda``, ...), the torch device, bf16 support."""

    name: str
    device: torch.device
    native_bf16: bool

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"


def _accelerator_type() -> str | None:
    acc = getattr(torch, "accelerator", None)
    if acc is None or not acc.is_available():
        return None
    current = acc.current_accelerator()
    return None if current is None else str(current.type)


def _is_available(name: str) -> bool:
    if name == "cpu":
        return True
    if name == "cuda":
        return bool(torch.cuda.is_available())
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    if name == "xpu":
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())
    return _accelerator_type() == name


def available_backends() -> list[str]:
    """Names of the backends this process can train on, CPU last."""
    found = [n for n in KNOWN_BACKENDS[1:] if _is_available(n)]
    acc = _accelerator_type()
    if acc is not None and acc not in found:
        found.append(acc)
    return [*found, "cpu"]


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the CPU computes bf16 natively (x86 AVX512-BF16/AMX-BF16, ARM BF16)."""
    try:
        if bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            text = cpuinfo.read_text() if cpuinfo.exists() else ""
            flags = set(text.replace("\n", " ").split())
            # oneDNN also reports "supported" for plain AVX512 (emulated); ask for the real thing
            if not flags or flags & {"avx512_bf16", "amx_bf16", "bf16"}:
                return True
    except (AttributeError, RuntimeError, OSError):
        pass
    return False


def _gpu_bf16(name: str) -> bool:
    if name == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if name == "xpu":
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and getattr(xpu, "is_bf16_supported", lambda: True)())
    return name == "mps"


def resolve_backend(requested: str = "auto") -> Backend:
    """The backend for ``auto``, ``cpu``, ``cuda[:i]``, ``mps``, ``xpu`` or another accelerator."""
    req = requested.strip().lower()
    if req == "auto":
        acc = _accelerator_type()
        req = acc if acc is not None else "cpu"
    name = req.split(":", 1)[0]
    if not _is_available(name):
        raise BackendUnavailableError(
            f"compute backend {requested!r} is not available on this device; "
            f"available: {', '.join(available_backends())} (set client.device accordingly)"
        )
    try:
        device = torch.device(req)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"not a torch device: {requested!r} ({exc})") from None
    if name != "cpu" and device.index is not None:
        count = torch.accelerator.device_count() if hasattr(torch, "accelerator") else 1
        if device.index >= count:
            raise BackendUnavailableError(
                f"{requested!r}: device index {device.index} but only {count} device(s) present"
            )
    bf16 = cpu_has_native_bf16() if name == "cpu" else _gpu_bf16(name)
    return Backend(name=name, device=device, native_bf16=bf16)


def compute_dtype(backend: Backend, quantization: str) -> torch.dtype:
    """The dtype activations and dequantized weights use for a base in ``quantization``.

    ``none`` is fp32 by definition and ``bf16`` is bf16 by definition; the quantized bases
    (``int8``, ``nf4``) compute in bf16 where it is native, else fp32 on CPUs (never fp16
    there) and fp16 on GPUs without bf16.
    """
    if quantization == "none":
        return torch.float32
    if quantization == "bf16":
        return torch.bfloat16
    if backend.native_bf16:
        return torch.bfloat16
    return torch.float32 if backend.is_cpu else torch.float16


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
