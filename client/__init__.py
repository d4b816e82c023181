"""Phone side: base-model loading and quantization, backend selection, memory planning, the
local LoRA trainer, device policy, the Flower ClientApp and export for native runtimes."""
