"""Vectorized phones on quantized (bitsandbytes nf4 / int8) and bf16 bases.

The batched LoRA hooks call the base layer as-is, so a quantized base needs nothing special;
these tests check that against PEFT's own bitsandbytes LoRA layers. nf4 uses float32 compute
here so that the comparison is tight (bf16 compute is the fast setting, not the exact one).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_simulations_vectorized import (  # tests/ is on sys.path (rootdir-relative)
    FP,
    assert_same,
    make_adapter,
    make_data,
    one_by_one,
)

from fedlora.adapter import BaseModelSpec
from fedlora.client.peft_bridge import attach_adapter, linear_shapes
from fedlora.client.text_batches import collate
from fedlora.client.trainer import TrainConfig
from fedlora.simulations.vectorized import PhoneJob, PhoneStack, VectorizedLoraTrainer
from fedlora.simulations.vectorized_batches import stack_rows
from fedlora.simulations.vectorized_layers import batched_lora_hooks
from fedlora.simulations.vectorized_stack import StackLayout

pytest.importorskip("bitsandbytes")


def load(model_dir: Path, quantization: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, object] = {"dtype": torch.float32}
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        kwargs["device_map"] = {"": "cpu"}
    elif quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": "cpu"}
    elif quantization == "bf16":
        kwargs["dtype"] = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@pytest.mark.filterwarnings("ignore:MatMul8bitLt")
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_base_trains_like_peft(tiny_model_dir: Path, quantization: str) -> None:
    base = load(tiny_model_dir, quantization)
    layer = type(base.get_submodule("model.layers.0.self_attn.q_proj")).__name__
    assert layer == {"nf4": "Linear4bit", "int8": "Linear8bitLt"}[quantization]
    spec = BaseModelSpec(fingerprint=FP, linear_shapes=linear_shapes(base))
    jobs = [
        PhoneJob(
            make_adapter(spec, r, seed=k),
            make_data(500 + k, 8),
            TrainConfig(steps=3, batch_size=4, seed=k),
        )
        for k, r in enumerate((2, 4))
    ]
    got = VectorizedLoraTrainer(base, spec=spec).train(jobs)
    for job, res in zip(jobs, got, strict=True):
        assert_same(res, one_by_one(base, spec, job), job.adapter)


def test_bf16_base_logits_match_peft(tiny_model_dir: Path) -> None:
    base = load(tiny_model_dir, "bf16")
    spec = BaseModelSpec(fingerprint=FP, linear_shapes=linear_shapes(base))
    adapters = [make_adapter(spec, 4, seed=1), make_adapter(spec, 2, seed=2)]
    datas = [make_data(1, 3), make_data(2, 3)]
    stack_layout = StackLayout.build({p: spec.linear_shapes[p] for p in adapters[0].modules}, 4)
    stack = PhoneStack.of(stack_layout, adapters, torch.device("cpu"))
    batch = stack_rows(datas, [(k, i) for k in (0, 1) for i in range(3)])
    with torch.no_grad(), batched_lora_hooks(base, stack_layout.paths, stack.state):
        stack.bind(batch.row_phone)
        logits = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert logits.dtype == torch.bfloat16
    for k, (adapter, data) in enumerate(zip(adapters, datas, strict=True)):
        peft = attach_adapter(copy.deepcopy(base), adapter, spec)
        ref = collate(data, [0, 1, 2])
        with torch.no_grad():
            want = peft(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        width = want.shape[1]
        mask = ref["attention_mask"].bool()
        got = logits[3 * k : 3 * k + 3, :width]
        torch.testing.assert_close(got[mask].float(), want[mask].float(), rtol=0, atol=0.05)
