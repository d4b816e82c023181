"""The adapter as a phone app sees it: named LoRA tensors (NumPy) plus fedlora's metadata.

The wire format is a safetensors file (8-byte little-endian header length, JSON header,
raw little-endian tensor data) whose ``__metadata__["fedlora"]`` holds the metadata JSON
(``base_fingerprint``, ``ranks``, ``alphas``, ``round``, ``kind``, …). Tensors are named
``<module>.lora_A.weight`` (``r × d_in``) and ``<module>.lora_B.weight`` (``d_out × r``);
the update a module gets is ``(alpha / r) · B @ A``. Any safetensors reader works (there
are C++, Rust, Swift and Kotlin ones); we use ``safetensors.numpy``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.numpy as stn

from fedlora_native.errors import Refused

SUFFIX_A = ".lora_A.weight"
SUFFIX_B = ".lora_B.weight"
ALLOWED_DTYPES = (np.float32, np.float16, np.float64)


def natural_key(name: str) -> tuple[Any, ...]:
    """``layers.2`` before ``layers.10``: the module order every side uses."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


@dataclass(frozen=True)
class NativeAdapter:
    """LoRA tensors by name and the fedlora metadata (a plain dict, as JSON gives it)."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, Any]

    @property
    def modules(self) -> list[str]:
        names = {n[: -len(SUFFIX_A)] for n in self.tensors if n.endswith(SUFFIX_A)}
        return sorted(names, key=natural_key)

    def pair(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        return self.tensors[module + SUFFIX_A], self.tensors[module + SUFFIX_B]

    @property
    def rank(self) -> int:
        return max(int(self.pair(m)[0].shape[0]) for m in self.modules)

    def scaling(self, module: str) -> float:
        return float(self.metadata["alphas"][module]) / float(self.metadata["ranks"][module])

    def to_safetensors(self) -> bytes:
        """fedlora's blob format: what ``fedlora.adapter_io.from_safetensors_bytes`` reads."""
        tensors = {k: np.ascontiguousarray(v) for k, v in self.tensors.items()}
        meta = json.dumps(self.metadata, sort_keys=True, separators=(",", ":"))
        return stn.save(tensors, metadata={"fedlora": meta})


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors blob (header only, no tensor copy)."""
    if len(data) < 8:
        raise Refused("unreadable_adapter", "shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise Refused("unreadable_adapter", "safetensors header length out of range")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused("unreadable_adapter", f"safetensors header is not JSON: {exc}") from exc
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise Refused("unreadable_adapter", "__metadata__ is not an object")
    return {str(k): str(v) for k, v in meta.items()}


def parse_adapter(data: bytes) -> NativeAdapter:
    """Bytes → adapter, checking what a model loader would trip over (names, shapes, NaN)."""
    meta_strings = safetensors_metadata(data)
    if "fedlora" not in meta_strings:
        raise Refused("unreadable_adapter", "no fedlora metadata in the safetensors header")
    try:
        metadata = json.loads(meta_strings["fedlora"])
        tensors = dict(stn.load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise Refused("unreadable_adapter", f"cannot parse the adapter: {exc}") from exc
    adapter = NativeAdapter(tensors=tensors, metadata=metadata)
    for name, arr in tensors.items():
        if not name.endswith((SUFFIX_A, SUFFIX_B)):
            raise Refused("unreadable_adapter", f"{name}: not a LoRA tensor")
        if arr.dtype not in ALLOWED_DTYPES or arr.ndim != 2 or not np.all(np.isfinite(arr)):
            raise Refused("unreadable_adapter", f"{name}: bad dtype/shape or non-finite values")
    for module in adapter.modules:
        if module + SUFFIX_B not in tensors:
            raise Refused("unreadable_adapter", f"{module}: lora_B missing")
        a, b = adapter.pair(module)
        if a.shape[0] != b.shape[1] or int(metadata["ranks"][module]) != a.shape[0]:
            raise Refused("unreadable_adapter", f"{module}: ranks of A, B and metadata differ")
    if len(adapter.modules) * 2 != len(tensors):
        raise Refused("unreadable_adapter", "a lora_B tensor has no lora_A")
    return adapter
