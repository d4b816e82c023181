"""Between our NumPy adapter format and a live torch/PEFT model on the phone.

* :func:`lora_config_for` — the ``peft.LoraConfig`` that builds exactly an adapter's modules,
  ranks and alphas (same dict as the PEFT directory's ``adapter_config.json``).
* :func:`attach_adapter` — validate an adapter against the base, then wrap the base with PEFT
  and load the tensors. Validation happens first, so a bad adapter leaves the model untouched.
* :func:`extract_adapter` — read the LoRA tensors back out (bf16 widened to float32).
* :func:`base_model_spec` — the shapes of a base's linear layers, for validation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fedlora.adapter import BaseModelSpec, LoraAdapter, LoraPair, short_name, validate_for_base
from fedlora.adapter_io import peft_config_dict

ADAPTER_NAME = "default"


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``module path → (d_in, d_out)`` for every linear layer (quantized ones included).

    PEFT wrappers are looked through: paths are those of the plain base model.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in base.named_modules():
        if ".lora_" in name or name.endswith(("lora_A", "lora_B")):
            continue
        inner = getattr(module, "base_layer", module)
        d_in = getattr(inner, "in_features", None)
        d_out = getattr(inner, "out_features", None)
        if (
            isinstance(d_in, int)
            and isinstance(d_out, int)
            and not isinstance(module, torch.nn.Embedding)
        ):
            shapes[name] = (d_in, d_out)
    return shapes


def target_module_paths(model: torch.nn.Module, target_modules: Iterable[str]) -> list[str]:
    """Full paths of the linear layers whose short name is in ``target_modules``."""
    wanted = set(target_modules)
    paths = [p for p in linear_shapes(model) if short_name(p) in wanted]
    if not paths:
        raise ValueError(f"no linear layer of the base model is named any of {sorted(wanted)}")
    return paths


def base_model_spec(model: torch.nn.Module, fingerprint: str) -> BaseModelSpec:
    return BaseModelSpec(fingerprint=fingerprint, linear_shapes=linear_shapes(model))


def lora_config_for(adapter: LoraAdapter, dropout: float = 0.0) -> LoraConfig:
    cfg = peft_config_dict(adapter)
    return LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["lora_alpha"],
        target_modules=cfg["target_modules"],
        rank_pattern=cfg["rank_pattern"],
        alpha_pattern=cfg["alpha_pattern"],
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _lora_layers(model: PeftModel) -> dict[str, Any]:
    prefix = "base_model.model."
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and ADAPTER_NAME in getattr(module, "lora_A", {}):
            out[name.removeprefix(prefix)] = module
    return out


def load_into(model: PeftModel, adapter: LoraAdapter) -> None:
    """Copy adapter tensors into an existing PEFT model with the same modules and ranks."""
    layers = _lora_layers(model)
    missing = sorted(set(adapter.modules) - set(layers))
    if missing:
        raise ValueError(f"PEFT model has no LoRA layer for {missing[0]!r}")
    extra = sorted(set(layers) - set(adapter.modules))
    if extra:
        raise ValueError(f"adapter lacks tensors for the PEFT model's LoRA layer {extra[0]!r}")
    with torch.no_grad():
        for name, pair in adapter:
            layer = layers[name]
            a = layer.lora_A[ADAPTER_NAME].weight
            b = layer.lora_B[ADAPTER_NAME].weight
            if tuple(a.shape) != pair.A.shape or tuple(b.shape) != pair.B.shape:
                raise ValueError(
                    f"{name}: model LoRA shapes A{tuple(a.shape)}/B{tuple(b.shape)} differ from "
                    f"adapter A{pair.A.shape}/B{pair.B.shape}"
                )
            expected = adapter.meta.scaling(name)
            if not np.isclose(float(layer.scaling[ADAPTER_NAME]), expected, rtol=1e-6):
                raise ValueError(
                    f"{name}: model scaling {layer.scaling[ADAPTER_NAME]} != adapter {expected}"
                )
        for name, pair in adapter:
            layer = layers[name]
            a = layer.lora_A[ADAPTER_NAME].weight
            b = layer.lora_B[ADAPTER_NAME].weight
            a.copy_(torch.from_numpy(np.ascontiguousarray(pair.A)).to(a.dtype))
            b.copy_(torch.from_numpy(np.ascontiguousarray(pair.B)).to(b.dtype))


def attach_adapter(
    base: torch.nn.Module, adapter: LoraAdapter, spec: BaseModelSpec, dropout: float = 0.0
) -> PeftModel:
    """Validate, wrap ``base`` with PEFT LoRA layers matching ``adapter`` and load it."""
    validate_for_base(adapter, spec)
    model = get_peft_model(base, lora_config_for(adapter, dropout), adapter_name=ADAPTER_NAME)
    load_into(model, adapter)
    return model


def extract_adapter(
    model: PeftModel,
    *,
    base_fingerprint: str,
    version: int = 0,
    round: int = 0,
    producer: str = "fedlora-client",
) -> LoraAdapter:
    """The LoRA tensors of a PEFT model as a NumPy adapter (bf16 widened to float32)."""
    pairs: dict[str, LoraPair] = {}
    alphas: dict[str, float] = {}
    for name, layer in _lora_layers(model).items():
        a = layer.lora_A[ADAPTER_NAME].weight.detach().cpu()
        b = layer.lora_B[ADAPTER_NAME].weight.detach().cpu()
        dtype = torch.float32 if a.dtype not in (torch.float32, torch.float64) else a.dtype
        pairs[name] = LoraPair(a.to(dtype).numpy().copy(), b.to(dtype).numpy().copy())
        alphas[name] = float(layer.scaling[ADAPTER_NAME]) * a.shape[0]
    return LoraAdapter.create(
        pairs,
        base_fingerprint=base_fingerprint,
        alpha=alphas,
        version=version,
        round=round,
        producer=producer,
    )
