"""One flat vector per adapter, with a stable, checkable layout.

Clipping, noise, quantization and secure aggregation all operate on a single float vector.
The layout says which slice of that vector is which tensor; every phone and the server derive
it the same way (modules in natural order, ``lora_A`` then ``lora_B``, row-major), and its
:meth:`FlatLayout.digest` lets two sides check they agree before adding vectors together.

Heterogeneous ranks share one layout by padding to ``r_max`` (see :mod:`fedlora.ranks`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import numpy as np

from fedlora.adapter import AdapterMetadata, LoraAdapter, LoraPair, natural_key
from fedlora.errors import AdapterValidationError


@dataclass(frozen=True)
class LayoutEntry:
    """One tensor's place in the flat vector."""

    name: str
    shape: tuple[int, int]
    offset: int

    @property
    def size(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class FlatLayout:
    """Ordered tensors with offsets; total length ``size``."""

    entries: tuple[LayoutEntry, ...]

    @property
    def size(self) -> int:
        if not self.entries:
            return 0
        last = self.entries[-1]
        return last.offset + last.size

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, int]]) -> FlatLayout:
        """Layout of tensors named ``<module>.lora_A.weight`` / ``.lora_B.weight``."""
        modules = sorted({n.rsplit(".lora_", 1)[0] for n in shapes}, key=natural_key)
        entries: list[LayoutEntry] = []
        offset = 0
        for module in modules:
            for part in ("lora_A", "lora_B"):
                name = f"{module}.{part}.weight"
                if name not in shapes:
                    raise AdapterValidationError(name, "missing from the layout's shapes")
                shape = tuple(int(s) for s in shapes[name])
                if len(shape) != 2:
                    raise AdapterValidationError(name, f"must be 2-D, got shape {shape}")
                entry = LayoutEntry(name=name, shape=(shape[0], shape[1]), offset=offset)
                entries.append(entry)
                offset += entry.size
        return cls(entries=tuple(entries))

    @classmethod
    def of(cls, adapter: LoraAdapter) -> FlatLayout:
        return cls.from_shapes({n: (t.shape[0], t.shape[1]) for n, t in adapter.tensors().items()})

    @classmethod
    def for_ranks(
        cls, linear_shapes: Mapping[str, tuple[int, int]], ranks: Mapping[str, int]
    ) -> FlatLayout:
        """Layout for modules with ``(d_in, d_out)`` shapes at the given ranks."""
        shapes: dict[str, tuple[int, int]] = {}
        for module, r in ranks.items():
            d_in, d_out = linear_shapes[module]
            shapes[f"{module}.lora_A.weight"] = (r, d_in)
            shapes[f"{module}.lora_B.weight"] = (d_out, r)
        return cls.from_shapes(shapes)

    def to_json(self) -> str:
        return json.dumps([[e.name, list(e.shape)] for e in self.entries], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FlatLayout:
        raw = json.loads(text)
        return cls.from_shapes({name: (int(s[0]), int(s[1])) for name, s in raw})

    def digest(self) -> str:
        """Short content hash: equal digests ⇔ identical layouts."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ (un)flatten
    def flatten(self, adapter: LoraAdapter, dtype: str = "float32") -> np.ndarray:
        """Adapter → vector; the adapter's tensors must match this layout exactly."""
        tensors = adapter.tensors()
        extra = set(tensors) - {e.name for e in self.entries}
        if extra:
            raise AdapterValidationError(sorted(extra)[0], "not part of the agreed flat layout")
        out = np.empty(self.size, dtype=dtype)
        for e in self.entries:
            if e.name not in tensors:
                raise AdapterValidationError(e.name, "missing: the adapter lacks this tensor")
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise AdapterValidationError(
                    e.name, f"shape {tuple(t.shape)} does not match the layout's {e.shape}"
                )
            out[e.offset : e.offset + e.size] = t.reshape(-1)
        return out

    def unflatten(self, vector: np.ndarray, meta: AdapterMetadata) -> LoraAdapter:
        """Vector → adapter with ``meta`` (its ranks must agree with the layout)."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise AdapterValidationError(
                "<vector>", f"length {vec.shape} does not match layout size {self.size}"
            )
        pairs: dict[str, LoraPair] = {}
        for i in range(0, len(self.entries), 2):
            a, b = self.entries[i], self.entries[i + 1]
            module = a.name.rsplit(".lora_A", 1)[0]
            pairs[module] = LoraPair(
                A=vec[a.offset : a.offset + a.size].reshape(a.shape).copy(),
                B=vec[b.offset : b.offset + b.size].reshape(b.shape).copy(),
            )
        adapter = LoraAdapter(meta=meta, pairs=pairs)
        adapter.check_consistent()
        return adapter
