"""Facts about a Hugging Face model directory read from its files alone (no torch).

The server never loads the base model, but it must know the shapes of the linear layers that
carry LoRA to build the community adapter. Weight tensors of a linear layer are stored as
``<module path>.weight`` with shape ``(d_out, d_in)``; the safetensors headers hold those
shapes, so reading the headers is enough.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

from fedlora.adapter import natural_key, short_name


def _headers(directory: Path) -> Iterable[dict]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory} has no *.safetensors weight files")
    for f in files:
        with f.open("rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(hlen))
        header.pop("__metadata__", None)
        yield header


def linear_shapes_from_dir(
    directory: str | Path, target_modules: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """``module path → (d_in, d_out)`` for the 2-D weights whose short name is targeted."""
    wanted = set(target_modules)
    shapes: dict[str, tuple[int, int]] = {}
    for header in _headers(Path(directory)):
        for name, info in header.items():
            if not name.endswith(".weight") or len(info["shape"]) != 2:
                continue
            module = name[: -len(".weight")]
            if short_name(module) in wanted:
                d_out, d_in = info["shape"]
                shapes[module] = (int(d_in), int(d_out))
    if not shapes:
        raise ValueError(f"no linear layer in {directory} is named any of {sorted(wanted)}")
    return {k: shapes[k] for k in sorted(shapes, key=natural_key)}
