"""Phone side: base-model loading and quantization, backend selection, memory planning, the
local LoRA trainer, device policy, the Flower ClientApp and export for native runtimes."""

import logging as _logging

# bitsandbytes warns at import that the optional `kernels` package is missing. That package
# only accelerates 4-bit *inference* (batch-1 gemv) and downloads its kernel from the
# Hugging Face Hub; phones train, offline. See docs/client.md. Keep phones' logs readable.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
