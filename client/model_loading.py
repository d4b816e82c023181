"""Loading the frozen base model and tokenizer on the phone.

The base is resolved (embedded default, local directory or hub id), fingerprinted from its
files, loaded onto the chosen backend in one of four forms and frozen:

* ``none`` — fp32 weights, fp32 compute (the reference);
* ``bf16`` — bf16 weights and compute (half the bytes);
* ``int8`` — bitsandbytes LLM.int8 linear layers (one byte per weight + a scale per row);
* ``nf4`` — bitsandbytes 4-bit NormalFloat linear layers, optionally with the quantization
  constants quantized again (``double_quant``): ≈ 0.5 byte per weight.

Quantized bases compute in the backend's fast dtype (:func:`fedlora.client.backends.compute_dtype`).
Embeddings, norms and the output head stay in that dtype (bitsandbytes only replaces linear
layers), which is why the 4-bit base is ~23% of fp32 and not 12.5%.

Only LoRA tensors are ever trainable; :func:`assert_only_lora_trainable` is the guard every
training path calls.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora.adapter import BaseModelSpec
from fedlora.base_model import resolve_model
from fedlora.client.backends import Backend, compute_dtype, dtype_name, resolve_backend
from fedlora.client.base_facts import BaseFacts
from fedlora.client.peft_bridge import linear_shapes
from fedlora.errors import FedloraError
from fedlora.fingerprint import fingerprint_model_dir

QUANTIZATIONS = ("none", "bf16", "int8", "nf4")


class QuantizationUnavailableError(FedloraError, RuntimeError):
    """The requested quantization cannot run here (bitsandbytes missing or no kernels)."""


@dataclass
class LoadedBase:
    """A frozen base model with what the phone needs to know about it."""

    model: Any
    tokenizer: Any
    directory: Path
    fingerprint: str
    quantization: str
    compute_dtype: torch.dtype
    backend: Backend | None = None
    double_quant: bool = False

    @property
    def spec(self) -> BaseModelSpec:
        return BaseModelSpec(fingerprint=self.fingerprint, linear_shapes=linear_shapes(self.model))

    @property
    def device(self) -> torch.device:
        return self.backend.device if self.backend is not None else torch.device("cpu")

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.compute_dtype)

    @property
    def weight_bytes(self) -> int:
        return model_weight_bytes(self.model)

    @property
    def facts(self) -> BaseFacts:
        """Tokenizer and identity of this base (what a round needs besides the weights)."""
        return BaseFacts(
            tokenizer=self.tokenizer,
            fingerprint=self.fingerprint,
            backend=self.backend.name if self.backend is not None else "cpu",
            dtype=self.dtype_name,
            quantization=self.quantization + ("+dq" if self.double_quant else ""),
        )


def load_tokenizer(directory: Path) -> Any:
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _quantization_config(quantization: str, dtype: torch.dtype, double_quant: bool) -> Any:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - bitsandbytes is in the client extra
        raise QuantizationUnavailableError(
            f"quantization {quantization!r} needs bitsandbytes: pip install 'fedlora[client]'"
        ) from exc
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_quant_storage=torch.uint8,
    )


def _quiet_bitsandbytes() -> None:
    """bitsandbytes logs about optional kernels on every load; they change nothing here
    (see docs/client.md on the ``kernels`` package), so keep phones' logs readable."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")


def load_base(
    source: str = "default",
    quantization: str = "none",
    *,
    device: str | Backend = "auto",
    double_quant: bool = True,
    dtype: torch.dtype | None = None,
) -> LoadedBase:
    """Load and freeze a base model in ``none`` (fp32), ``bf16``, ``int8`` or ``nf4``.

    ``device`` is ``auto`` or a backend name (see :mod:`fedlora.client.backends`); ``dtype``
    overrides the compute dtype chosen for the backend (for experiments: e.g. fp32 compute
    for an nf4 base).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} is not one of {QUANTIZATIONS}")
    backend = device if isinstance(device, Backend) else resolve_backend(device)
    directory = resolve_model(source)
    cdtype = dtype or compute_dtype(backend, quantization)
    kwargs: dict[str, Any] = {"dtype": cdtype}
    if quantization in ("int8", "nf4"):
        if backend.name not in ("cpu", "cuda", "xpu"):
            raise QuantizationUnavailableError(
                f"bitsandbytes has no {quantization} kernels for backend {backend.name!r}; "
                "use model.quantization='bf16' there"
            )
        _quiet_bitsandbytes()
        kwargs["quantization_config"] = _quantization_config(quantization, cdtype, double_quant)
        kwargs["device_map"] = {"": backend.device}
    model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    if quantization in ("none", "bf16"):
        model = model.to(backend.device)
    if quantization == "nf4":
        _keep_trainable_4bit_layout(model)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return LoadedBase(
        model=model,
        tokenizer=load_tokenizer(directory),
        directory=directory,
        fingerprint=fingerprint_model_dir(directory).id,
        quantization=quantization,
        compute_dtype=cdtype,
        backend=backend,
        double_quant=double_quant and quantization == "nf4",
    )


def _keep_trainable_4bit_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, a ``Linear4bit`` that runs in eval mode without gradients
    rewrites its weight in place into a packed inference layout. That rewrite is one-way
    and bad for a training phone: it undoes double quantization (the absmax constants grow
    back to bf16), the packed kernel has no backward, and it fails outright for layers
    narrower than two quantization blocks. Evaluation between training steps must not
    trigger it, so the CPU fast path is switched off on every 4-bit layer.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _quant_state_tensors(weight: Any) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside a quantized weight (absmax, codes, row scales)."""
    out: list[torch.Tensor] = []
    qs = getattr(weight, "quant_state", None)
    while qs is not None:
        out.extend(t for t in (qs.absmax, qs.code) if isinstance(t, torch.Tensor))
        qs = getattr(qs, "state2", None)
    scb = getattr(weight, "SCB", None)
    if isinstance(scb, torch.Tensor):
        out.append(scb)
    return out


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the base model's weights occupy in memory (each storage counted once).

    Counts parameters, buffers and bitsandbytes' quantization constants, which are neither.
    LoRA tensors are excluded: this is the frozen base.
    """
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.device.type == "meta":
            return
        seen.add(ptr)
        total += t.untyped_storage().nbytes()

    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue
        add(p)
        for t in _quant_state_tensors(p):
            add(t)
    for name, b in model.named_buffers():
        if ".lora_" not in name:
            add(b)
    return total


def assert_only_lora_trainable(model: torch.nn.Module) -> list[str]:
    """Raise unless every trainable parameter is a LoRA tensor; returns their names."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise RuntimeError("no trainable parameters: LoRA layers are missing")
    leaked = [n for n in trainable if ".lora_A." not in n and ".lora_B." not in n]
    if leaked:
        raise RuntimeError(f"base-model parameters are trainable, refusing to train: {leaked[:3]}")
    return trainable
