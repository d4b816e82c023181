"""Vectorized phones train exactly like phones trained one by one on PEFT.

Random token ids on the tiny random Llama (no tokenizer needed): equality is about the
arithmetic, not about language.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlora.adapter import BaseModelSpec, LoraAdapter, LoraPair
from fedlora.client.peft_bridge import attach_adapter, extract_adapter, linear_shapes
from fedlora.client.text_batches import TokenizedTexts, evaluate_loss
from fedlora.client.trainer import TrainConfig, train_lora
from fedlora.errors import AdapterValidationError
from fedlora.simulations.vectorized import (
    PhoneJob,
    PhoneResult,
    PhoneStack,
    VectorizedLoraTrainer,
)
from fedlora.simulations.vectorized_adamw import VectorizedAdamW, clip_grad_norm_per_phone_
from fedlora.simulations.vectorized_batches import plan_passes, stack_rows
from fedlora.simulations.vectorized_layers import batched_lora_hooks
from fedlora.simulations.vectorized_loss import phone_loss_sums
from fedlora.simulations.vectorized_stack import StackLayout

FP = "tiny-test-base"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ATOL = 1e-5


@pytest.fixture(scope="module")
def base(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


@pytest.fixture(scope="module")
def spec(base: torch.nn.Module) -> BaseModelSpec:
    return BaseModelSpec(fingerprint=FP, linear_shapes=linear_shapes(base))


def make_adapter(
    spec: BaseModelSpec, rank: int, seed: int, alpha_per_rank: float = 2.0
) -> LoraAdapter:
    """A start adapter with non-zero A *and* B (a community view after some rounds)."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for path, (d_in, d_out) in spec.linear_shapes.items():
        if path.rsplit(".", 1)[-1] in TARGETS:
            a = rng.normal(0, 0.2, (rank, d_in)).astype(np.float32)
            b = rng.normal(0, 0.2, (d_out, rank)).astype(np.float32)
            pairs[path] = LoraPair(a, b)
    return LoraAdapter.create(pairs, base_fingerprint=FP, alpha=alpha_per_rank * rank)


def make_data(seed: int, n: int, vocab: int = 97) -> TokenizedTexts:
    """Rows of different lengths (2..24 tokens), so every batch needs padding."""
    rng = np.random.default_rng(seed)
    rows = tuple(
        tuple(int(t) for t in rng.integers(3, vocab, int(rng.integers(2, 25)))) for _ in range(n)
    )
    return TokenizedTexts(ids=rows, pad_id=0)


def one_by_one(base: torch.nn.Module, spec: BaseModelSpec, job: PhoneJob) -> PhoneResult:
    """The reference: the phone's own trainer on plain PEFT."""
    model = attach_adapter(copy.deepcopy(base), job.adapter, spec)
    res = train_lora(model, job.data, job.config)
    trained = extract_adapter(model, base_fingerprint=FP)
    return PhoneResult(trained, res.steps, res.examples_seen, res.first_loss, res.last_loss)


def max_diff(a: LoraAdapter, b: LoraAdapter) -> float:
    assert a.modules == b.modules
    assert a.meta.ranks == b.meta.ranks
    return max(
        float(max(np.abs(pa.A - pb.A).max(), np.abs(pa.B - pb.B).max()))
        for (_, pa), (_, pb) in zip(a, b, strict=True)
    )


def assert_same(got: PhoneResult, ref: PhoneResult, start: LoraAdapter) -> None:
    assert max_diff(got.adapter, start) > 1e-3  # it did train
    assert max_diff(got.adapter, ref.adapter) < ATOL
    assert got.adapter.meta.alphas == pytest.approx(start.meta.alphas)
    assert got.steps == ref.steps and got.examples_seen == ref.examples_seen
    assert got.first_loss == pytest.approx(ref.first_loss, abs=1e-5)
    assert got.last_loss == pytest.approx(ref.last_loss, abs=1e-5)


# ---------------------------------------------------------------------------- equality
def test_mixed_ranks_equal_one_by_one_peft(base: torch.nn.Module, spec: BaseModelSpec) -> None:
    ranks = (2, 4, 8, 4)
    jobs = [
        PhoneJob(
            make_adapter(spec, r, seed=k),
            make_data(100 + k, 6 + 4 * k),
            TrainConfig(
                steps=4,
                batch_size=4 + k,  # uneven batches: filler rows for the smaller ones
                learning_rate=(3e-3, 1e-2, 5e-3, 3e-3)[k],
                weight_decay=(0.0, 0.01, 0.0, 0.1)[k],
                seed=7 * k,
                max_grad_norm=(1.0, 0.05, None, 1.0)[k],  # phone 1 always clips
            ),
        )
        for k, r in enumerate(ranks)
    ]
    trainer = VectorizedLoraTrainer(base, chunk_size=4, tokens_per_pass=120, r_max=8, spec=spec)
    got = trainer.train(jobs)
    for job, res in zip(jobs, got, strict=True):
        assert_same(res, one_by_one(base, spec, job), job.adapter)
        assert res.adapter.meta.ranks == job.adapter.meta.ranks


def test_phones_with_fewer_steps_stop_updating(base: torch.nn.Module, spec: BaseModelSpec) -> None:
    jobs = [
        PhoneJob(make_adapter(spec, 4, seed=k), make_data(200 + k, 9), TrainConfig(steps=s, seed=k))
        for k, s in enumerate((1, 5, 3))
    ]
    got = VectorizedLoraTrainer(base, chunk_size=3).train(jobs)
    for job, res in zip(jobs, got, strict=True):
        assert_same(res, one_by_one(base, spec, job), job.adapter)


def test_chunking_and_head_trimming_do_not_change_results(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    jobs = [
        PhoneJob(make_adapter(spec, r, seed=k), make_data(300 + k, 7), TrainConfig(steps=2, seed=k))
        for k, r in enumerate((4, 2, 4))  # chunks go by rank: [1, 0], [2]
    ]
    a = VectorizedLoraTrainer(base, chunk_size=3).train(jobs)
    b = VectorizedLoraTrainer(base, chunk_size=2, trim_head=False, tokens_per_pass=30).train(jobs)
    for x, y in zip(a, b, strict=True):
        assert max_diff(x.adapter, y.adapter) < ATOL
        assert x.last_loss == pytest.approx(y.last_loss, abs=1e-5)


def test_evaluate_equals_evaluate_loss(base: torch.nn.Module, spec: BaseModelSpec) -> None:
    adapters = [make_adapter(spec, r, seed=10 + k) for k, r in enumerate((1, 8, 4, 2, 4))]
    heldouts = [make_data(400 + k, n) for k, n in enumerate((3, 11, 1, 7, 5))]
    got = VectorizedLoraTrainer(base, chunk_size=4, tokens_per_pass=50).evaluate(adapters, heldouts)
    for adapter, data, loss in zip(adapters, heldouts, got, strict=True):
        ref = evaluate_loss(attach_adapter(copy.deepcopy(base), adapter, spec), data)
        assert loss == pytest.approx(ref, abs=1e-5)


def test_passes_are_length_sorted_within_budget_and_cover_every_row_once() -> None:
    datas = [make_data(600 + k, 9) for k in range(3)]
    rows = {0: [3, 1, 4, 1], 2: [5, 0, 8, 7, 2]}  # phone 1 inactive; row 1 of phone 0 twice
    passes = plan_passes(datas, rows, tokens_per_pass=40)
    flat = [ref for p in passes for ref in p]
    assert sorted(flat) == sorted((k, i) for k, rs in rows.items() for i in rs)
    lengths = [len(datas[k].ids[i]) for k, i in flat]
    assert lengths == sorted(lengths)
    for p in passes:
        width = max(len(datas[k].ids[i]) for k, i in p)
        assert len(p) == 1 or len(p) * width <= 40
    batch = stack_rows(datas, passes[-1])
    assert batch.row_phone.tolist() == [k for k, _ in passes[-1]]
    assert batch.num_phones == 3


# ---------------------------------------------------------------------------- rank masks
def test_masked_rank_slots_get_zero_gradient_and_stay_zero(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    adapters = [make_adapter(spec, 2, seed=1), make_adapter(spec, 8, seed=2)]
    layout = StackLayout.build({p: spec.linear_shapes[p] for p in adapters[0].modules}, 8)
    stack = PhoneStack.of(layout, adapters, torch.device("cpu"))
    padded = torch.zeros_like(stack.flat, dtype=torch.bool)  # slots >= r of phone 0
    for a, b in layout.factor_views(padded).values():
        a[0, 2:] = True
        b[0, :, 2:] = True
    assert bool((stack.flat[padded] == 0).all())
    data = [make_data(1, 4), make_data(2, 4)]
    batch = stack_rows(data, [(k, i) for i in range(4) for k in (1, 0)])  # interleaved
    stack.flat.requires_grad_(True)
    opt = VectorizedAdamW(stack.flat, lr=[0.1, 0.1], weight_decay=[0.1, 0.1])
    with batched_lora_hooks(base, layout.paths, stack.state):
        for _ in range(3):
            stack.bind(batch.row_phone)
            phone_loss_sums(base, batch).sum().backward()
            assert stack.flat.grad is not None
            assert bool((stack.flat.grad[padded] == 0).all())
            opt.step([True, True])
            stack.flat.grad = None
        assert bool((stack.flat[padded] == 0).all())
        # garbage in masked slots changes nothing either: the mask, not the zeros, decides
        with torch.no_grad():
            stack.bind(batch.row_phone)
            before = phone_loss_sums(base, batch)
            stack.flat[padded] = 123.0
            stack.bind(batch.row_phone)
            assert torch.equal(phone_loss_sums(base, batch), before)


# ---------------------------------------------------------------------------- optimizer
def test_vectorized_adamw_is_bit_identical_to_torch_for_one_phone() -> None:
    torch.manual_seed(0)
    ref = torch.randn(1, 50)
    mine = ref.clone()
    ref_p = torch.nn.Parameter(ref.clone())
    torch_opt = torch.optim.AdamW([ref_p], lr=3e-3, weight_decay=0.05)
    mine.requires_grad_(True)
    opt = VectorizedAdamW(mine, lr=[3e-3], weight_decay=[0.05])
    for _ in range(6):
        g = torch.randn(1, 50)
        ref_p.grad = g.clone()
        mine.grad = g.clone()
        torch_opt.step()
        opt.step([True])
        assert torch.equal(mine.detach(), ref_p.detach())


def test_vectorized_adamw_equals_k_torch_adamws_with_own_lr_steps_and_decay() -> None:
    torch.manual_seed(1)
    k, n = 4, 30
    lrs, wds = [1e-3, 3e-3, 1e-2, 3e-3], [0.0, 0.01, 0.1, 0.0]
    start = torch.randn(k, n)
    refs = [torch.nn.Parameter(start[i : i + 1].clone()) for i in range(k)]
    opts = [torch.optim.AdamW([p], lr=lrs[i], weight_decay=wds[i]) for i, p in enumerate(refs)]
    mine = start.clone().requires_grad_(True)
    opt = VectorizedAdamW(mine, lr=lrs, weight_decay=wds)
    rng = np.random.default_rng(0)
    for _ in range(8):
        active = [bool(x) for x in rng.integers(0, 2, k)]
        g = torch.randn(k, n)
        mine.grad = g.clone()
        for i in range(k):
            if active[i]:
                refs[i].grad = g[i : i + 1].clone()
                opts[i].step()
        before = mine.detach().clone()
        m_before, v_before = opt.exp_avg.clone(), opt.exp_avg_sq.clone()
        opt.step(active)
        for i in range(k):
            if not active[i]:  # untouched: parameters and moments
                assert torch.equal(mine[i], before[i])
                assert torch.equal(opt.exp_avg[i], m_before[i])
                assert torch.equal(opt.exp_avg_sq[i], v_before[i])
            torch.testing.assert_close(
                mine[i : i + 1].detach(), refs[i].detach(), rtol=0, atol=1e-7
            )
        assert list(opt.steps) == [int(opts[i].state[refs[i]].get("step", 0)) for i in range(k)]


def test_per_phone_clipping_equals_separate_clip_grad_norm() -> None:
    torch.manual_seed(2)
    k, sizes = 4, [6, 10, 4]
    grad = torch.randn(k, sum(sizes)) * torch.tensor([[0.1], [3.0], [30.0], [2.0]])
    limits: list[float | None] = [1.0, 1.0, None, 0.5]
    expected = []
    for i in range(k):
        parts = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
        for p, g in zip(parts, grad[i].split(sizes), strict=True):
            p.grad = g.clone()
        if limits[i] is not None:
            torch.nn.utils.clip_grad_norm_(parts, limits[i])
        expected.append(torch.cat([p.grad for p in parts if p.grad is not None]))
    got = grad.clone()
    norms = clip_grad_norm_per_phone_(got, limits)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-6, atol=0)
    torch.testing.assert_close(norms, grad.norm(dim=1))
    assert torch.equal(got[0], grad[0])  # under the limit: untouched


# ---------------------------------------------------------------------------- the base
def test_base_is_shared_frozen_and_left_untouched(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    before = base(input_ids=ids).logits.clone()
    ptrs = {n: p.data_ptr() for n, p in base.named_parameters()}
    job = PhoneJob(make_adapter(spec, 4, seed=5), make_data(5, 6), TrainConfig(steps=2))
    VectorizedLoraTrainer(base).train([job, job])
    assert {n: p.data_ptr() for n, p in base.named_parameters()} == ptrs
    assert not any(p.requires_grad or p.grad is not None for p in base.parameters())
    assert torch.equal(base(input_ids=ids).logits, before)  # hooks removed
    assert not base.training


def test_bad_adapters_are_refused_before_training(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    data = make_data(6, 4)
    wrong_base = make_adapter(spec, 4, seed=6).with_meta(base_fingerprint="other")
    with pytest.raises(AdapterValidationError):
        VectorizedLoraTrainer(base, spec=spec).train([PhoneJob(wrong_base, data, TrainConfig(1))])
    too_big = make_adapter(spec, 8, seed=6)
    with pytest.raises(AdapterValidationError, match="r_max"):
        VectorizedLoraTrainer(base, r_max=4).train([PhoneJob(too_big, data, TrainConfig(1))])


def test_lora_dropout_trains_differently_but_never_touches_evaluation(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    adapter, data = make_adapter(spec, 4, seed=8), make_data(8, 6)
    plain = VectorizedLoraTrainer(base)
    dropped = VectorizedLoraTrainer(base, lora_dropout=0.5)
    assert dropped.evaluate([adapter], [data]) == plain.evaluate([adapter], [data])
    job = PhoneJob(adapter, data, TrainConfig(steps=2))
    torch.manual_seed(0)
    assert max_diff(dropped.train([job])[0].adapter, plain.train([job])[0].adapter) > 1e-6


def test_frozen_a_trains_b_only_like_peft_with_a_frozen(
    base: torch.nn.Module, spec: BaseModelSpec
) -> None:
    """FFA-LoRA: A gets no gradient, no decay, no share of the clip norm — as in PEFT."""
    jobs = [
        PhoneJob(
            make_adapter(spec, r, seed=50 + k),
            make_data(500 + k, 9),
            TrainConfig(steps=3, batch_size=4, weight_decay=0.1, seed=k, max_grad_norm=0.05),
            freeze_a=freeze,
        )
        for k, (r, freeze) in enumerate(((4, True), (2, False), (8, True)))
    ]
    got = VectorizedLoraTrainer(base, chunk_size=3, spec=spec).train(jobs)
    for job, res in zip(jobs, got, strict=True):
        model = attach_adapter(copy.deepcopy(base), job.adapter, spec)
        if job.freeze_a:
            for n, p in model.named_parameters():
                if "lora_A" in n:
                    p.requires_grad_(False)
        ref = train_lora(model, job.data, job.config)
        trained = extract_adapter(model, base_fingerprint=FP)
        assert_same(res, PhoneResult(trained, ref.steps, ref.examples_seen, ref.first_loss,
                                     ref.last_loss), job.adapter)  # fmt: skip
        same_a = all(np.array_equal(res.adapter.pairs[n].A, p.A) for n, p in job.adapter)
        assert same_a == job.freeze_a
