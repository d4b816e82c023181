"""What a native app does with the exported program, written in Python for tests and docs.

The app loads ``fedlora_train.pte`` with ExecuTorch's training module, copies the received
community adapter into the program's LoRA parameters, runs ``forward_backward`` per batch
(loss out, gradients kept by the runtime), applies SGD to the parameters in place and, at
the end of the round, turns the trained tensors into the delta it sends:
``trained − received``, factor-wise. :class:`NativeTrainer` is exactly that sequence over
ExecuTorch's Python bindings (``executorch.extension.training``); the Kotlin/Swift code in
an app makes the same calls on the C++ ``TrainingModule``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedlora.adapter import LoraAdapter
from fedlora.client.native_export import adapter_from_parameters
from fedlora.client.native_model import NativeExportError


class NativeTrainer:
    """ExecuTorch training of the LoRA tensors of an exported program (SGD in place)."""

    def __init__(self, pte: Path | str | bytes) -> None:
        try:
            from executorch.extension.training import (
                _load_for_executorch_for_training,
                _load_for_executorch_for_training_from_buffer,
            )
        except ImportError as exc:
            raise NativeExportError(
                "ExecuTorch is not installed: pip install 'fedlora[native]'"
            ) from exc
        if isinstance(pte, bytes):
            self.module = _load_for_executorch_for_training_from_buffer(pte)
        else:
            self.module = _load_for_executorch_for_training(str(pte))
        self._primed = False

    def _params(self) -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = self.module.named_parameters()
        return params

    def prime(self, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
        """ExecuTorch exposes the parameter tensors only after a first call; run one
        forward/backward (no update) and return its loss."""
        out = self.module.forward_backward("forward", (input_ids, labels))
        self._primed = True
        return float(out[0])

    def load_adapter(self, adapter: LoraAdapter) -> None:
        """Overwrite the program's LoRA parameters with ``adapter`` (needs :meth:`prime`)."""
        if not self._primed:
            raise NativeExportError("call prime() once before loading an adapter")
        params = self._params()
        with torch.no_grad():
            for name, pair in adapter:
                for part, arr in (("lora_A", pair.A), ("lora_B", pair.B)):
                    target = params[f"{name}.{part}"]
                    if tuple(target.shape) != arr.shape:
                        raise NativeExportError(
                            f"{name}.{part}: program shape {tuple(target.shape)} != {arr.shape}"
                        )
                    target.copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor, lr: float) -> float:
        """One SGD step; returns the loss *before* the update (as eager training does)."""
        out = self.module.forward_backward("forward", (input_ids, labels))
        self._primed = True
        grads = self.module.named_gradients()
        params = self._params()
        with torch.no_grad():
            for name, p in params.items():
                p.sub_(grads[name], alpha=lr)
        return float(out[0])

    def trained_adapter(self, like: LoraAdapter) -> LoraAdapter:
        return adapter_from_parameters(self._params(), like)

    def delta(self, received: LoraAdapter) -> LoraAdapter:
        """What the app sends: trained − received (kind ``delta``)."""
        return self.trained_adapter(received).minus(received)
