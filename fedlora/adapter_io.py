"""Adapter ⇄ bytes and files: our safetensors blobs and PEFT adapter directories.

* Our blob: a safetensors file whose tensors are ``<module>.lora_{A,B}.weight`` and whose
  ``__metadata__`` carries the :class:`~fedlora.adapter.AdapterMetadata` JSON under
  ``"fedlora"``. Content-addressable and exact.
* A PEFT directory: ``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's key
  names, loadable by plain ``peft.PeftModel.from_pretrained(base, dir)``. Our metadata also
  rides along (``fedlora_adapter.json``) so a round trip is exact; a directory written by
  PEFT itself (no such file) is read too, with the fingerprint supplied by the caller.

No torch here: tensors stay NumPy. PEFT's files may hold bfloat16, which NumPy lacks; those
are widened to float32 exactly (bf16 is the top half of an IEEE float32).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy as stn

from fedlora.adapter import AdapterMetadata, LoraAdapter, LoraPair, natural_key, short_name
from fedlora.errors import AdapterValidationError

PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
FEDLORA_META = "fedlora_adapter.json"

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


# ---------------------------------------------------------------------------- safetensors
def read_safetensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into arrays + ``__metadata__``; BF16 is widened to float32.

    We parse the (documented, 8-byte-length + JSON) header ourselves only to reach BF16
    tensors, which ``safetensors.numpy`` cannot return; everything else goes through it.
    """
    if len(data) < 8:
        raise AdapterValidationError("<file>", "not a safetensors blob (too short)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise AdapterValidationError(
            "<file>", "not a safetensors blob (header length out of range)"
        )
    try:
        header = json.loads(data[8 : 8 + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError("<file>", f"safetensors header is not JSON: {exc}") from exc
    metadata = dict(header.pop("__metadata__", None) or {})
    if not any(v.get("dtype") == "BF16" for v in header.values()):
        try:
            return stn.load(data), metadata
        except Exception as exc:  # safetensors raises its own error types
            raise AdapterValidationError("<file>", f"unreadable safetensors blob: {exc}") from exc
    body = memoryview(data)[8 + hlen :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        raw = body[start:end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2")
            arr = (u16.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        elif info["dtype"] in _ST_DTYPES:
            arr = np.frombuffer(raw, dtype=_ST_DTYPES[info["dtype"]]).reshape(shape).copy()
        else:
            raise AdapterValidationError(name, f"unsupported tensor dtype {info['dtype']}")
        out[name] = arr
    return out, metadata


def _pairs_from_tensors(tensors: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, LoraPair]:
    a_parts: dict[str, np.ndarray] = {}
    b_parts: dict[str, np.ndarray] = {}
    for key, arr in tensors.items():
        name = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if name.endswith(".lora_A.weight"):
            a_parts[name[: -len(".lora_A.weight")]] = arr
        elif name.endswith(".lora_B.weight"):
            b_parts[name[: -len(".lora_B.weight")]] = arr
        else:
            raise AdapterValidationError(key, "not a LoRA tensor (expected .lora_A/.lora_B.weight)")
    for module in sorted(set(a_parts) ^ set(b_parts)):
        part = "lora_B" if module in a_parts else "lora_A"
        raise AdapterValidationError(f"{module}.{part}.weight", "missing: LoRA needs both A and B")
    return {
        m: LoraPair(np.ascontiguousarray(a_parts[m]), np.ascontiguousarray(b_parts[m]))
        for m in sorted(a_parts, key=natural_key)
    }


def to_safetensors_bytes(adapter: LoraAdapter) -> bytes:
    """Adapter → safetensors bytes with our metadata embedded (deterministic)."""
    adapter.check_consistent()
    tensors = {k: np.ascontiguousarray(v) for k, v in adapter.tensors().items()}
    return stn.save(tensors, metadata={"fedlora": adapter.meta.model_dump_json()})


def from_safetensors_bytes(data: bytes) -> LoraAdapter:
    """Bytes written by :func:`to_safetensors_bytes` → adapter, validated."""
    tensors, metadata = read_safetensors(data)
    if "fedlora" not in metadata:
        raise AdapterValidationError("<file>", "no fedlora metadata: not a fedlora adapter blob")
    try:
        meta = AdapterMetadata.model_validate_json(metadata["fedlora"])
    except ValueError as exc:
        raise AdapterValidationError("<metadata>", f"invalid adapter metadata: {exc}") from exc
    adapter = LoraAdapter(meta=meta, pairs=_pairs_from_tensors(tensors))
    adapter.check_consistent()
    return adapter


def content_hash(adapter: LoraAdapter) -> str:
    """SHA-256 of the canonical safetensors bytes: the adapter's content address."""
    return hashlib.sha256(to_safetensors_bytes(adapter)).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename, so readers never see a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_adapter(adapter: LoraAdapter, path: str | Path) -> Path:
    """Save as a ``.safetensors`` blob, or as a PEFT directory if ``path`` has no suffix."""
    p = Path(path)
    if p.suffix == ".safetensors":
        atomic_write_bytes(p, to_safetensors_bytes(adapter))
        return p
    return save_peft_dir(adapter, p)


def load_adapter(path: str | Path, *, base_fingerprint: str | None = None) -> LoraAdapter:
    """Load a fedlora blob (file) or a PEFT directory (ours or PEFT's own)."""
    p = Path(path)
    if p.is_dir():
        return load_peft_dir(p, base_fingerprint=base_fingerprint)
    if not p.exists():
        raise FileNotFoundError(f"no adapter at {p}")
    return from_safetensors_bytes(p.read_bytes())


# ---------------------------------------------------------------------------- PEFT dirs
def peft_config_dict(adapter: LoraAdapter, base_model_name_or_path: str | None = None) -> dict:
    """The ``adapter_config.json`` PEFT needs to rebuild exactly these modules and ranks.

    ``target_modules`` lists full module paths (PEFT matches ``key == t or
    key.endswith('.' + t)``), so exactly our modules get LoRA layers; per-module ranks
    and alphas that differ from the most common one go to ``rank_pattern``/``alpha_pattern``.
    """
    ranks = adapter.meta.ranks
    alphas = adapter.meta.alphas
    r_common = max(set(ranks.values()), key=list(ranks.values()).count)
    a_common = max(set(alphas.values()), key=list(alphas.values()).count)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r_common,
        "lora_alpha": a_common,
        "target_modules": sorted(adapter.modules, key=natural_key),
        "rank_pattern": {m: r for m, r in ranks.items() if r != r_common},
        "alpha_pattern": {m: a for m, a in alphas.items() if a != a_common},
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def save_peft_dir(
    adapter: LoraAdapter, directory: str | Path, base_model_name_or_path: str | None = None
) -> Path:
    """Write a directory that plain ``PeftModel.from_pretrained(base, dir)`` loads."""
    adapter.check_consistent()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + k: np.ascontiguousarray(v) for k, v in adapter.tensors().items()}
    atomic_write_bytes(d / PEFT_WEIGHTS, stn.save(tensors, metadata={"format": "pt"}))
    cfg = peft_config_dict(adapter, base_model_name_or_path)
    atomic_write_bytes(d / PEFT_CONFIG, json.dumps(cfg, indent=2, sort_keys=True).encode())
    atomic_write_bytes(d / FEDLORA_META, adapter.meta.model_dump_json(indent=2).encode())
    return d


def load_peft_dir(directory: str | Path, *, base_fingerprint: str | None = None) -> LoraAdapter:
    """Read a PEFT LoRA directory; ranks/alphas come from the tensors and adapter_config.json."""
    d = Path(directory)
    cfg_path = d / PEFT_CONFIG
    if not cfg_path.exists():
        raise AdapterValidationError(str(d), f"not a PEFT adapter directory (no {PEFT_CONFIG})")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise AdapterValidationError(str(d), f"peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise AdapterValidationError(str(d), "DoRA / rsLoRA adapters are not supported")
    weights = d / PEFT_WEIGHTS
    if not weights.exists():
        raise AdapterValidationError(str(weights), "missing adapter weights file")
    tensors, _ = read_safetensors(weights.read_bytes())
    pairs = _pairs_from_tensors(tensors, prefix=PEFT_PREFIX)
    meta_path = d / FEDLORA_META
    if meta_path.exists():
        meta = AdapterMetadata.model_validate_json(meta_path.read_text())
        dtype = meta.dtype
        if dtype in ("float32", "float16", "float64"):
            pairs = {k: LoraPair(p.A.astype(dtype), p.B.astype(dtype)) for k, p in pairs.items()}
        adapter = LoraAdapter(meta=meta, pairs=pairs)
    else:
        alphas = {
            m: _pattern_value(m, cfg.get("alpha_pattern") or {}, cfg["lora_alpha"]) for m in pairs
        }
        adapter = LoraAdapter.create(
            pairs,
            base_fingerprint=base_fingerprint or "unknown",
            alpha=alphas,
            producer="peft",
            extra={"base_model_name_or_path": str(cfg.get("base_model_name_or_path"))},
        )
    if base_fingerprint is not None and adapter.meta.base_fingerprint != base_fingerprint:
        raise AdapterValidationError(
            "<all>",
            f"made for base model {adapter.meta.base_fingerprint!r}, expected {base_fingerprint!r}",
        )
    adapter.check_consistent()
    return adapter


def _pattern_value(module: str, pattern: Mapping[str, float], default: float) -> float:
    """PEFT's pattern lookup: a key matches a module path equal to it or ending in ``.key``."""
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or short_name(module) == key:
            return float(value)
    return float(default)
