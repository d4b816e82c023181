"""Base-model fingerprints: which exact base an adapter belongs to.

A LoRA adapter is meaningless on another base, so every adapter carries the fingerprint of
the base it was trained on, and phones and server refuse mismatches. The fingerprint hashes
the model's config (minus fields that do not change the function, such as the library version
or the load dtype) and every weight tensor (name, dtype, shape, raw bytes) of its safetensors
files. It is computed from the model directory without torch, so the server can do it too,
and it is the same however the phone later quantizes the base for training.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

#: Config keys that do not change what the network computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "quantization_config",
    "use_cache",
    "_attn_implementation_autoset",
    "output_attentions",
    "output_hidden_states",
}


@dataclass(frozen=True)
class BaseFingerprint:
    config_hash: str
    weights_hash: str

    @property
    def id(self) -> str:
        """Compact identifier ``<config 12 hex>:<weights 20 hex>`` stored in adapters."""
        return f"{self.config_hash[:12]}:{self.weights_hash[:20]}"


def config_hash(config: dict) -> str:
    clean = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_safetensors_file(path: Path, h: hashlib._Hash) -> None:
    with path.open("rb") as fh:
        (hlen,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(hlen))
        header.pop("__metadata__", None)
        base = 8 + hlen
        for name in sorted(header):
            info = header[name]
            start, end = info["data_offsets"]
            h.update(f"{name}|{info['dtype']}|{info['shape']}|".encode())
            fh.seek(base + start)
            remaining = end - start
            while remaining:
                chunk = fh.read(min(remaining, 1 << 22))
                if not chunk:
                    raise ValueError(f"{path}: truncated tensor {name}")
                h.update(chunk)
                remaining -= len(chunk)


def fingerprint_model_dir(directory: str | Path) -> BaseFingerprint:
    """Fingerprint a Hugging Face model directory (config.json + *.safetensors or *.bin)."""
    d = Path(directory)
    cfg_file = d / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{d} has no config.json: not a Hugging Face model directory")
    chash = config_hash(json.loads(cfg_file.read_text()))
    h = hashlib.sha256()
    weight_files = sorted(d.glob("*.safetensors"))
    if weight_files:
        for f in weight_files:
            _hash_safetensors_file(f, h)
    else:
        bins = sorted(d.glob("*.bin"))
        if not bins:
            raise FileNotFoundError(f"{d} has no *.safetensors or *.bin weight files")
        for f in bins:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return BaseFingerprint(config_hash=chash, weights_hash=h.hexdigest())
