"""Export a LoRA training program for native handsets (ExecuTorch ``.pte``).

Native Android/iOS apps do not run Python. ExecuTorch runs a program exported ahead of time:
here, one training step — ``loss(input_ids, labels)`` of the int8 base plus LoRA at rank
``r`` (:mod:`fedlora.client.native_model`) — with its backward pass, so the app gets the
loss *and the LoRA gradients* from one call and applies the update itself.

Pipeline (ExecuTorch 1.5): ``torch.export.export`` → ``_export_forward_backward`` (joint
graph: the outputs become ``[loss, grads..., params...]``) → rewrite ops the edge dialect
lacks (``aten.empty_permuted`` from the backward of the attention transposes becomes
``aten.empty.memory_format`` — same logical shape, values are overwritten anyway) →
``exir.to_edge`` → ``to_executorch``. Shapes are static (``batch_size × seq_len``): the app
pads on the right and sets padded labels to -100.

Beside the ``.pte`` goes ``fedlora_native.json`` (inputs, outputs, parameter names →
adapter tensor names, scaling, base fingerprint) and the tokenizer files, so the app has
everything it needs; ``docs/native-client.md`` explains the app's side.

ExecuTorch is optional (the ``native`` extra); importing this module does not need it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlora.adapter import LoraAdapter, LoraPair, validate_for_base
from fedlora.base_model import resolve_model
from fedlora.client.native_model import (
    NativeExportError,
    NativeLlama,
    NativeShape,
    NativeTrainingStep,
)
from fedlora.client.peft_bridge import base_model_spec
from fedlora.fingerprint import fingerprint_model_dir

META_FILE = "fedlora_native.json"
PTE_FILE = "fedlora_train.pte"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def executorch_available() -> bool:
    try:
        import executorch.exir
        import executorch.extension.training  # noqa: F401
    except ImportError:
        return False
    return True


def _require_executorch() -> None:
    if not executorch_available():
        raise NativeExportError(
            "native export needs ExecuTorch: pip install 'fedlora[native]' (executorch==1.5.1)"
        )


def _load_hf(directory: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


def build_training_step(
    base_dir: Path,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    seq_len: int,
    int8: bool = True,
    adapter: LoraAdapter | None = None,
    seed: int = 0,
) -> NativeTrainingStep:
    """The exportable training step for the base in ``base_dir``.

    LoRA starts from ``adapter`` (validated against the base first; its rank and modules
    must match) or, without one, from PEFT's initialisation (A uniform ±1/√d_in·√3-ish,
    B zero, so the step starts exactly at the base model).
    """
    hf = _load_hf(base_dir)
    shape = NativeShape.from_hf_config(hf.config)
    model = NativeLlama(
        shape,
        hf.state_dict(),
        seq_len=seq_len,
        lora_targets=targets,
        rank=rank,
        alpha=alpha,
        int8=int8,
    )
    step = NativeTrainingStep(model)
    if adapter is not None:
        validate_for_base(adapter, base_model_spec(hf, fingerprint_model_dir(base_dir).id))
        load_lora(step, adapter)
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in model.lora_modules().values():
                bound = 1.0 / math.sqrt(layer.lora_A.shape[1])
                layer.lora_A.uniform_(-bound, bound, generator=gen)
                layer.lora_B.zero_()
    return step


def load_lora(step: NativeTrainingStep, adapter: LoraAdapter) -> None:
    """Copy an adapter's tensors into the step's LoRA parameters (same modules and rank)."""
    layers = step.model.lora_modules()
    if sorted(layers) != sorted(adapter.modules):
        missing = sorted(set(layers) ^ set(adapter.modules))
        raise NativeExportError(f"adapter and native program differ in modules: {missing[:3]}")
    with torch.no_grad():
        for name, pair in adapter:
            layer = layers[name]
            if (
                tuple(layer.lora_A.shape) != pair.A.shape
                or tuple(layer.lora_B.shape) != pair.B.shape
            ):
                raise NativeExportError(
                    f"{name}: program LoRA shapes {tuple(layer.lora_A.shape)}/"
                    f"{tuple(layer.lora_B.shape)} differ from adapter {pair.A.shape}/{pair.B.shape}"
                )
            if not np.isclose(layer.scaling, adapter.meta.scaling(name), rtol=1e-6):
                raise NativeExportError(f"{name}: scaling {layer.scaling} != adapter's")
            layer.lora_A.copy_(torch.from_numpy(np.asarray(pair.A, dtype=np.float32)))
            layer.lora_B.copy_(torch.from_numpy(np.asarray(pair.B, dtype=np.float32)))


def parameter_names(step: NativeTrainingStep) -> list[str]:
    """The trainable parameter names, as the exported program reports them."""
    return [n for n, p in step.named_parameters() if p.requires_grad]


def adapter_from_parameters(params: Mapping[str, torch.Tensor], like: LoraAdapter) -> LoraAdapter:
    """LoRA tensors named ``<module>.lora_A``/``.lora_B`` (the program's parameter names)
    back into an adapter with ``like``'s metadata — e.g. to form ``trained − received``."""
    pairs: dict[str, LoraPair] = {}
    for name in like.modules:
        a = params[f"{name}.lora_A"].detach().float().cpu().numpy().copy()
        b = params[f"{name}.lora_B"].detach().float().cpu().numpy().copy()
        pairs[name] = LoraPair(a, b)
    out = LoraAdapter(meta=like.meta.model_copy(update={"dtype": "float32"}), pairs=pairs)
    out.check_consistent()
    return out


def rewrite_unsupported_ops(ep: Any) -> int:
    """Replace ``aten.empty_permuted`` (no edge-dialect kernel) by ``aten.empty``; count."""
    graph = ep.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.empty_permuted.default:
            with graph.inserting_before(node):
                new = graph.create_node(
                    "call_function",
                    torch.ops.aten.empty.memory_format,
                    (node.args[0],),
                    dict(node.kwargs),
                )
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            count += 1
    graph.lint()
    ep.graph_module.recompile()
    return count


def export_program(step: NativeTrainingStep, batch_size: int, seq_len: int) -> bytes:
    """The ExecuTorch program (bytes of a ``.pte``) of ``step``'s forward + backward."""
    _require_executorch()
    from executorch.exir import to_edge
    from torch.export import export
    from torch.export.experimental import _export_forward_backward

    ids = torch.zeros((batch_size, seq_len), dtype=torch.long)
    labels = torch.zeros((batch_size, seq_len), dtype=torch.long)
    ep = export(step, (ids, labels), strict=False)
    ep = _export_forward_backward(ep)
    rewrite_unsupported_ops(ep)
    program = to_edge(ep).to_executorch()
    data: bytes = program.buffer
    return data


@dataclass(frozen=True)
class NativeExportResult:
    pte_path: str
    meta_path: str
    pte_bytes: int
    seq_len: int
    batch_size: int
    rank: int
    alpha: float
    targets: tuple[str, ...]
    parameters: tuple[str, ...]
    base_fingerprint: str
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def export_native(
    source: str,
    out_dir: Path,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    seq_len: int,
    batch_size: int = 1,
    adapter: LoraAdapter | None = None,
    int8: bool = True,
) -> NativeExportResult:
    """Write ``fedlora_train.pte``, ``fedlora_native.json`` and the tokenizer to ``out_dir``."""
    started = time.perf_counter()
    _require_executorch()
    base_dir = resolve_model(source)
    if adapter is not None:
        rank = adapter.max_rank
        alpha = adapter.meta.alphas[adapter.modules[0]]
        targets = adapter.meta.target_modules
    step = build_training_step(
        base_dir,
        rank=rank,
        alpha=alpha,
        targets=targets,
        seq_len=seq_len,
        int8=int8,
        adapter=adapter,
    )
    program = export_program(step, batch_size, seq_len)
    out_dir.mkdir(parents=True, exist_ok=True)
    pte = out_dir / PTE_FILE
    pte.write_bytes(program)
    for name in TOKENIZER_FILES:
        if (base_dir / name).exists():
            shutil.copy2(base_dir / name, out_dir / name)
    names = parameter_names(step)
    fingerprint = fingerprint_model_dir(base_dir).id
    meta = {
        "format": "fedlora-native-train/1",
        "program": PTE_FILE,
        "method": "forward",
        "base_fingerprint": fingerprint,
        "base_quantization": "int8-weight-only-per-channel" if int8 else "fp32",
        "inputs": {
            "input_ids": {"shape": [batch_size, seq_len], "dtype": "int64"},
            "labels": {"shape": [batch_size, seq_len], "dtype": "int64", "ignore_index": -100},
        },
        "outputs": "forward_backward('forward', [input_ids, labels]) -> [loss]; "
        "named_gradients() and named_parameters() keyed by the names below",
        "lora": {
            "rank": rank,
            "alpha": alpha,
            "scaling": alpha / rank,
            "targets": list(targets),
            "parameters": [
                {"name": n, "adapter_tensor": n + ".weight", "shape": list(p.shape)}
                for n, p in step.named_parameters()
                if p.requires_grad
            ],
        },
        "tokenizer": [n for n in TOKENIZER_FILES if (out_dir / n).exists()],
    }
    meta_path = out_dir / META_FILE
    meta_path.write_text(json.dumps(meta, indent=2))
    return NativeExportResult(
        pte_path=str(pte),
        meta_path=str(meta_path),
        pte_bytes=len(program),
        seq_len=seq_len,
        batch_size=batch_size,
        rank=rank,
        alpha=float(alpha),
        targets=tuple(targets),
        parameters=tuple(names),
        base_fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
    )
