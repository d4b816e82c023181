"""fedlora: federated LoRA fine-tuning for phones.

The core package holds what every side agrees on: the adapter format (named LoRA tensors +
metadata, flat layout, rank views, safetensors and PEFT-directory I/O), run configuration and
the `fedlora` CLI. It never imports torch at module level, so the server stays torch-free.
"""

__version__ = "0.1.0"
