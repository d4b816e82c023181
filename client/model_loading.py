"""Loading the frozen base model and tokenizer on the phone.

The base is resolved (embedded default, local directory or hub id), fingerprinted from its
files, loaded and frozen. Only LoRA tensors are ever trainable; :func:`assert_only_lora_trainable`
is the guard every training path calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedlora.adapter import BaseModelSpec
from fedlora.base_model import resolve_model
from fedlora.client.peft_bridge import linear_shapes
from fedlora.fingerprint import fingerprint_model_dir


@dataclass
class LoadedBase:
    """A frozen base model with what the phone needs to know about it."""

    model: Any
    tokenizer: Any
    directory: Path
    fingerprint: str
    quantization: str
    compute_dtype: torch.dtype

    @property
    def spec(self) -> BaseModelSpec:
        return BaseModelSpec(fingerprint=self.fingerprint, linear_shapes=linear_shapes(self.model))


def load_tokenizer(directory: Path) -> Any:
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(source: str = "default", quantization: str = "none") -> LoadedBase:
    """Load and freeze a base model in fp32 (``none``) or bf16."""
    directory = resolve_model(source)
    if quantization not in ("none", "bf16"):
        raise ValueError(f"quantization {quantization!r} is not supported by this loader")
    dtype = torch.bfloat16 if quantization == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return LoadedBase(
        model=model,
        tokenizer=load_tokenizer(directory),
        directory=directory,
        fingerprint=fingerprint_model_dir(directory).id,
        quantization=quantization,
        compute_dtype=dtype,
    )


def assert_only_lora_trainable(model: torch.nn.Module) -> list[str]:
    """Raise unless every trainable parameter is a LoRA tensor; returns their names."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise RuntimeError("no trainable parameters: LoRA layers are missing")
    leaked = [n for n in trainable if ".lora_A." not in n and ".lora_B." not in n]
    if leaked:
        raise RuntimeError(f"base-model parameters are trainable, refusing to train: {leaked[:3]}")
    return trainable
