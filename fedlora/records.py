"""Adapter ⇄ Flower records (the Message API's wire format).

Tensors travel in an ``ArrayRecord`` (names as in our safetensors blobs), metadata in a
``ConfigRecord`` under one JSON string, so a ``RecordDict`` carries a whole adapter:
``{"<prefix>": ArrayRecord, "<prefix>.meta": ConfigRecord}``.

Flower's ArrayRecord rejects bfloat16; :func:`tensors_to_array_record` widens bf16 torch
tensors to float32 (exactly) before packing, so callers can hand it a state dict as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedlora.adapter import AdapterMetadata, LoraAdapter
from fedlora.adapter_io import _pairs_from_tensors
from fedlora.errors import AdapterValidationError

META_SUFFIX = ".meta"


def _as_numpy(value: Any) -> np.ndarray:
    """NumPy view of a NumPy array or torch tensor; bf16 (and fp8) widened to float32."""
    if isinstance(value, np.ndarray):
        return value
    dtype = str(getattr(value, "dtype", ""))
    if dtype.startswith("torch."):
        t = value.detach().cpu()
        if dtype in ("torch.bfloat16",) or "float8" in dtype:
            t = t.float()
        return t.contiguous().numpy()
    raise TypeError(f"cannot pack {type(value).__name__} into an ArrayRecord")


def tensors_to_array_record(tensors: Mapping[str, Any]) -> ArrayRecord:
    """Pack name → (NumPy array | torch tensor) into an ArrayRecord, casting bf16."""
    return ArrayRecord(
        array_dict={k: Array(np.ascontiguousarray(_as_numpy(v))) for k, v in tensors.items()}
    )


def adapter_to_records(adapter: LoraAdapter) -> tuple[ArrayRecord, ConfigRecord]:
    adapter.check_consistent()
    arrays = tensors_to_array_record(adapter.tensors())
    return arrays, ConfigRecord({"adapter_metadata": adapter.meta.model_dump_json()})


def adapter_from_records(arrays: ArrayRecord, config: ConfigRecord) -> LoraAdapter:
    """Inverse of :func:`adapter_to_records`; validates everything before returning."""
    raw = config.get("adapter_metadata")
    if not isinstance(raw, str):
        raise AdapterValidationError("<metadata>", "ConfigRecord has no 'adapter_metadata' string")
    try:
        meta = AdapterMetadata.model_validate_json(raw)
    except ValueError as exc:
        raise AdapterValidationError("<metadata>", f"invalid adapter metadata: {exc}") from exc
    tensors = {name: arr.numpy() for name, arr in arrays.items()}
    adapter = LoraAdapter(meta=meta, pairs=_pairs_from_tensors(tensors))
    adapter.check_consistent()
    return adapter


def put_adapter(content: RecordDict, prefix: str, adapter: LoraAdapter) -> None:
    """Store ``adapter`` in ``content`` under ``prefix`` (tensors) and ``prefix.meta``."""
    arrays, config = adapter_to_records(adapter)
    content[prefix] = arrays
    content[prefix + META_SUFFIX] = config


def get_adapter(content: RecordDict, prefix: str) -> LoraAdapter:
    """Read an adapter stored by :func:`put_adapter`; a missing part is a clear error."""
    if prefix not in content or prefix + META_SUFFIX not in content:
        raise AdapterValidationError(prefix, "message carries no adapter under this name")
    arrays = content[prefix]
    config = content[prefix + META_SUFFIX]
    if not isinstance(arrays, ArrayRecord) or not isinstance(config, ConfigRecord):
        raise AdapterValidationError(prefix, "adapter records have the wrong record types")
    return adapter_from_records(arrays, config)
