"""Shared fixtures: tiny models built in the test session (no hub, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded default model is built once per checkout (first test that needs it) and reused.
os.environ.setdefault("FEDLORA_HOME", str(Path(__file__).resolve().parents[1] / ".fedlora-home"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded default base model (built on first use, ~2 minutes on 2 cores)."""
    from fedlora.base_model import resolve_model

    return resolve_model("default", progress=print)
