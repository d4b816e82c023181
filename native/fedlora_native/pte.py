"""Training steps through the exported ExecuTorch program (``fedlora client export``).

The export (``client/native_export.py``) writes ``fedlora_train.pte`` — one method,
``forward``, that runs the loss *and its backward pass* — and ``fedlora_native.json``
describing it: inputs ``input_ids`` / ``labels`` (int64, ``batch × seq_len``, labels of
padding = -100), the LoRA parameter names (``<module>.lora_A`` / ``.lora_B``) and which
adapter tensor each one is (``<module>.lora_A.weight``). The LoRA factors live *inside* the
program; ExecuTorch's training runtime hands them out as mutable tensors, so the app:

1. runs one ``forward_backward`` (the runtime only exposes parameters after one call),
2. copies the verified community view into the parameters,
3. per step: ``forward_backward`` → gradients → ``p -= lr · g`` (plain SGD here; the
   runtime also ships an SGD optimizer),
4. reads the parameters back: the trained adapter, from which the delta follows.

On a phone the same four calls exist in ExecuTorch's C++ ``TrainingModule`` and its
Android (``org.pytorch.executorch.training.TrainingModule``) wrapper. In Python the
runtime's bindings exchange ``torch.Tensor`` objects, which is the only reason torch is
imported here (lazily); nothing else in this package needs it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedlora_native.adapter import NativeAdapter
from fedlora_native.errors import NativeError

FORMAT = "fedlora-native-train/1"
META_FILE = "fedlora_native.json"


class ProgramError(NativeError):
    """The exported program does not fit the adapter, or ExecuTorch is missing."""


def executorch_training_available() -> bool:
    try:
        import executorch.extension.training  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ProgramInfo:
    """``fedlora_native.json``: what the program expects and which tensor is which."""

    directory: Path
    program: str
    method: str
    batch_size: int
    seq_len: int
    base_fingerprint: str
    parameters: dict[str, tuple[str, tuple[int, ...]]]  # param name -> (adapter tensor, shape)

    @classmethod
    def load(cls, directory: Path) -> ProgramInfo:
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise ProgramError(f"{directory / META_FILE}: format {meta.get('format')!r}")
        shape = meta["inputs"]["input_ids"]["shape"]
        params = {
            p["name"]: (p["adapter_tensor"], tuple(int(d) for d in p["shape"]))
            for p in meta["lora"]["parameters"]
        }
        return cls(
            directory=directory,
            program=meta["program"],
            method=meta["method"],
            batch_size=int(shape[0]),
            seq_len=int(shape[1]),
            base_fingerprint=meta["base_fingerprint"],
            parameters=params,
        )


class PteTrainer:
    """Local LoRA training of one adapter through the ``.pte`` program."""

    def __init__(self, directory: Path) -> None:
        if not executorch_training_available():
            raise ProgramError("ExecuTorch's training runtime is not installed (pip executorch)")
        from executorch.extension.training import _load_for_executorch_for_training

        self.info = ProgramInfo.load(directory)
        self.module: Any = _load_for_executorch_for_training(str(directory / self.info.program))
        self._params: dict[str, Any] | None = None

    def _run(self, input_ids: np.ndarray, labels: np.ndarray) -> float:
        import torch

        want = (self.info.batch_size, self.info.seq_len)
        if input_ids.shape != want or labels.shape != want:
            raise ProgramError(f"batches must be {want}, got {input_ids.shape}/{labels.shape}")
        inputs = [torch.from_numpy(x.astype(np.int64)) for x in (input_ids, labels)]
        outs = self.module.forward_backward(self.info.method, inputs)
        if self._params is None:
            self._params = dict(self.module.named_parameters())
        return float(outs[0])

    def load_adapter(self, adapter: NativeAdapter, warmup: tuple[np.ndarray, np.ndarray]) -> None:
        """Put the (verified) community view into the program's LoRA parameters."""
        import torch

        if adapter.metadata.get("base_fingerprint") != self.info.base_fingerprint:
            raise ProgramError("the adapter was made for another base model than the program")
        self._run(*warmup)
        assert self._params is not None
        for name, (tensor, shape) in self.info.parameters.items():
            value = adapter.tensors.get(tensor)
            if value is None or tuple(value.shape) != shape:
                got = None if value is None else value.shape
                raise ProgramError(f"{name}: program wants {tensor} {shape}, adapter has {got}")
            with torch.no_grad():
                self._params[name].copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))

    def step(self, input_ids: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One SGD step; the loss *before* the update."""
        import torch

        loss = self._run(input_ids, labels)
        assert self._params is not None
        grads = self.module.named_gradients()
        with torch.no_grad():
            for name, param in self._params.items():
                param.sub_(grads[name] * lr)
        return loss

    def train(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> list[float]:
        return [self.step(ids, labels, lr) for ids, labels in batches]

    def adapter(self, like: NativeAdapter) -> NativeAdapter:
        """The program's current LoRA factors as an adapter with ``like``'s metadata."""
        if self._params is None:
            raise ProgramError("nothing trained yet")
        tensors = dict(like.tensors)
        for name, (tensor, _) in self.info.parameters.items():
            tensors[tensor] = self._params[name].detach().cpu().numpy().astype(np.float32).copy()
        return NativeAdapter(tensors=tensors, metadata=dict(like.metadata))
