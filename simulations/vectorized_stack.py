"""K phones' LoRA adapters as one flat ``(K, N)`` tensor, and back.

Vectorized phones keep every phone's LoRA factors in a single tensor ``P`` of shape ``(K, N)``:
row ``k`` is phone ``k``'s adapter, zero-padded to ``r_max`` and laid out module by module
(natural module order, ``A (r_max, d_in)`` then ``B (d_out, r_max)``, row-major — the order of
:class:`fedlora.layout.FlatLayout` at ``r_max``). One flat tensor is what makes the rest cheap:

* a forward pass gathers the rows' factors with one ``index_select`` and takes per-module
  views with one ``split`` (their backward is one ``cat`` and one ``index_add``, so the
  gradient lands in one ``(K, N)`` tensor without per-module bookkeeping);
* the optimizer and per-phone gradient clipping are a handful of element-wise ops on
  ``(K, N)`` tensors, whatever the number of modules and phones.

Mixed ranks are handled by padding plus a *rank mask*: for each module a ``(K, r_max)`` tensor
holding ``scaling_k = alpha_k / r_k`` in slots ``< r_k`` and ``0`` in the others. The LoRA
term multiplies the rank-space activations by it, so padded slots neither contribute to the
output nor receive a gradient — a rank-``r_k`` phone trains exactly like a separate
rank-``r_k`` adapter, and its padded slots stay exactly zero. A phone whose adapter lacks a
module gets an all-zero mask there (no LoRA on that layer, as with PEFT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.adapter import LoraAdapter, LoraPair, natural_key
from fedlora.errors import AdapterValidationError


@dataclass(frozen=True)
class ModuleSlot:
    """Where one module's factors live in a phone's row of the flat tensor."""

    path: str
    d_in: int
    d_out: int
    offset: int

    def a_size(self, r_max: int) -> int:
        return r_max * self.d_in

    def b_size(self, r_max: int) -> int:
        return self.d_out * r_max


@dataclass(frozen=True)
class StackLayout:
    """The layout of one phone's row: modules in natural order, each ``A`` then ``B``."""

    slots: tuple[ModuleSlot, ...]
    r_max: int

    @classmethod
    def build(cls, shapes: Mapping[str, tuple[int, int]], r_max: int) -> StackLayout:
        """``shapes`` maps module path → ``(d_in, d_out)``."""
        if r_max < 1:
            raise ValueError(f"r_max must be >= 1, got {r_max}")
        slots: list[ModuleSlot] = []
        offset = 0
        for path in sorted(shapes, key=natural_key):
            d_in, d_out = shapes[path]
            slot = ModuleSlot(path=path, d_in=int(d_in), d_out=int(d_out), offset=offset)
            slots.append(slot)
            offset += slot.a_size(r_max) + slot.b_size(r_max)
        return cls(slots=tuple(slots), r_max=r_max)

    @property
    def width(self) -> int:
        """N: numbers per phone."""
        last = self.slots[-1]
        return last.offset + last.a_size(self.r_max) + last.b_size(self.r_max)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.slots]

    def split_sizes(self) -> list[int]:
        """Sizes for ``torch.split(P, sizes, dim=1)``: A₀, B₀, A₁, B₁, …"""
        out: list[int] = []
        for s in self.slots:
            out.extend((s.a_size(self.r_max), s.b_size(self.r_max)))
        return out

    def a_mask(self) -> np.ndarray:
        """``(N,)`` bool: True where a row holds an ``A`` factor (every module, every slot)."""
        mask = np.zeros(self.width, dtype=bool)
        for s in self.slots:
            mask[s.offset : s.offset + s.a_size(self.r_max)] = True
        return mask

    def factor_views(self, flat: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per module ``(A (K, r_max, d_in), B (K, d_out, r_max))`` views of ``flat (K, N)``.

        Views, not copies: gradients flow back into ``flat`` through a single ``split``.
        (``K`` is whatever the leading axis is: phones, or rows with gathered factors.)
        """
        k = flat.shape[0]
        parts = torch.split(flat, self.split_sizes(), dim=1)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, s in enumerate(self.slots):
            a = parts[2 * i].view(k, self.r_max, s.d_in)
            b = parts[2 * i + 1].view(k, s.d_out, self.r_max)
            out[s.path] = (a, b)
        return out

    def check_adapter(self, adapter: LoraAdapter) -> None:
        """Raise :class:`AdapterValidationError` if ``adapter`` does not fit this layout."""
        known = {s.path: s for s in self.slots}
        for name, pair in adapter:
            slot = known.get(name)
            if slot is None:
                raise AdapterValidationError(name, "module is not one of the vectorized targets")
            if pair.A.shape[1] != slot.d_in or pair.B.shape[0] != slot.d_out:
                raise AdapterValidationError(
                    name,
                    f"shapes A{pair.A.shape}/B{pair.B.shape} do not fit the base layer "
                    f"({slot.d_in} → {slot.d_out})",
                )
            if pair.rank > self.r_max:
                raise AdapterValidationError(name, f"rank {pair.rank} above r_max={self.r_max}")

    def pack_row(self, adapter: LoraAdapter) -> np.ndarray:
        """One phone's float32 row (zero-padded factors); modules it lacks stay zero."""
        self.check_adapter(adapter)
        row = np.zeros(self.width, dtype=np.float32)
        for s in self.slots:
            pair = adapter.pairs.get(s.path)
            if pair is None:
                continue
            a = np.zeros((self.r_max, s.d_in), dtype=np.float32)
            b = np.zeros((s.d_out, self.r_max), dtype=np.float32)
            a[: pair.rank] = pair.A
            b[:, : pair.rank] = pair.B
            start = s.offset
            row[start : start + a.size] = a.reshape(-1)
            row[start + a.size : start + a.size + b.size] = b.reshape(-1)
        return row

    def scale_row(self, adapter: LoraAdapter) -> np.ndarray:
        """One phone's rank masks with the LoRA scaling folded in: ``(M, r_max)`` float32."""
        out = np.zeros((len(self.slots), self.r_max), dtype=np.float32)
        for i, s in enumerate(self.slots):
            if s.path in adapter.pairs:
                out[i, : adapter.meta.ranks[s.path]] = adapter.meta.scaling(s.path)
        return out

    def unpack_row(self, row: np.ndarray, like: LoraAdapter) -> LoraAdapter:
        """Phone's adapter at its own ranks (slots ≥ r dropped), metadata from ``like``."""
        pairs: dict[str, LoraPair] = {}
        for s in self.slots:
            if s.path not in like.pairs:
                continue
            r = like.meta.ranks[s.path]
            a_size = s.a_size(self.r_max)
            a = row[s.offset : s.offset + a_size].reshape(self.r_max, s.d_in)
            b = row[s.offset + a_size : s.offset + a_size + s.b_size(self.r_max)]
            b = b.reshape(s.d_out, self.r_max)
            pairs[s.path] = LoraPair(a[:r].copy(), b[:, :r].copy())
        adapter = LoraAdapter(meta=like.meta.model_copy(update={"dtype": "float32"}), pairs=pairs)
        adapter.check_consistent()
        return adapter


def stack_adapters(
    layout: StackLayout, adapters: Sequence[LoraAdapter], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(flat (K, N), scales (M, K, r_max))`` float32 tensors on ``device`` for K adapters."""
    flat = np.stack([layout.pack_row(a) for a in adapters])
    scales = np.stack([layout.scale_row(a) for a in adapters], axis=1)
    return torch.from_numpy(flat).to(device), torch.from_numpy(scales).to(device)
