"""Memory planning: the measured peak, the back-off ladder, and a round that fits its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_client_support import (  # noqa: E402
    PRIVATE_TEXTS,
    community_adapter,
    instructions,
    write_char_tokenizer,
)

from fedlora.client.memory_meter import MB, PeakMemoryMeter  # noqa: E402
from fedlora.client.memory_plan import (  # noqa: E402
    PROFILES,
    MemoryBudgetError,
    ModelFootprint,
    TrainPlan,
    candidate_plans,
    estimate_bytes,
    fit_plan,
    plan_training,
)
from fedlora.client.session import PhoneSession  # noqa: E402
from fedlora.config import FedloraSettings  # noqa: E402

# A 1B-class Llama (TinyLlama-like shapes) with a 4-bit base: what an 8 GB phone trains.
ONE_B = ModelFootprint(
    weight_bytes=700 * MB,
    num_layers=22,
    hidden=2048,
    intermediate=5632,
    heads=32,
    vocab=32000,
    act_bytes=2,
    lora_dims=tuple((2048, 2048) for _ in range(22 * 4)),
)


def test_meter_sees_real_allocations() -> None:
    with PeakMemoryMeter("cpu") as meter:
        block = torch.ones(64 * MB // 4)
        block += 1
        del block
    assert 60 * MB <= meter.peak_increase_bytes <= 80 * MB
    with PeakMemoryMeter("cpu") as idle:
        pass
    assert idle.peak_increase_bytes < 8 * MB


def test_ladder_order_micro_then_checkpointing_then_rank_then_mezo() -> None:
    ladder = [p.describe() for p in candidate_plans(rank=8, batch_size=4)]
    assert ladder[:8] == [
        "backprop r=8 mb=4x1",
        "backprop r=8 mb=2x2",
        "backprop r=8 mb=1x4",
        "backprop r=8 mb=4x1+ckpt",
        "backprop r=8 mb=2x2+ckpt",
        "backprop r=8 mb=1x4+ckpt",
        "backprop r=4 mb=4x1",
        "backprop r=4 mb=2x2",
    ]
    assert ladder[-3:] == ["mezo r=8 mb=4x1", "mezo r=8 mb=2x2", "mezo r=8 mb=1x4"]
    assert [p.rank for p in candidate_plans(8, 4) if p.method == "backprop"][-1] == 1


def test_estimates_follow_the_measured_levers() -> None:
    """Accumulation ×4 cuts activations ~4×; checkpointing ~3.5×; MeZO keeps no state."""
    seq = 256

    def act(plan: TrainPlan) -> float:
        return estimate_bytes(ONE_B, plan, seq) - ONE_B.weight_bytes

    full = act(TrainPlan("backprop", 8, 8, 1, False))
    accum = act(TrainPlan("backprop", 8, 2, 4, False))
    ckpt = act(TrainPlan("backprop", 8, 8, 1, True))
    mezo = act(TrainPlan("mezo", 8, 8, 1, False))
    assert 3.0 < full / accum < 4.2
    assert 2.0 < full / ckpt < 6.0
    assert mezo < ckpt


def test_planner_backs_off_step_by_step_for_an_8gb_phone() -> None:
    kw = {"rank": 16, "batch_size": 8, "seq_len": 256}
    budgets = [
        (99999, "backprop r=16 mb=8x1"),
        (3500, "backprop r=16 mb=2x4"),  # smaller micro-batch first
        (2300, "backprop r=16 mb=1x8"),
        (1700, "backprop r=16 mb=4x2+ckpt"),  # then checkpointing
        (1100, "backprop r=16 mb=1x8+ckpt"),
    ]
    for budget, want in budgets:
        assert plan_training(ONE_B, budget, **kw).describe() == want
    # a phone with many LoRA modules: at rank 16 their state alone is too much
    lean = ModelFootprint(**{**ONE_B.__dict__, "lora_dims": ONE_B.lora_dims * 40})
    assert plan_training(lean, 2000, **kw).describe() == "backprop r=2 mb=1x8+ckpt"
    # below rank-1 backprop: MeZO; below even that: a clear error
    assert plan_training(ONE_B, 900, **kw).describe() == "mezo r=16 mb=1x8"
    with pytest.raises(MemoryBudgetError, match="below the smallest plan"):
        plan_training(ONE_B, 800, **kw)
    assert PROFILES["phone-8gb"].budget_mb == int(8192 * 0.35) - 400


def test_fit_plan_backs_off_when_measurement_exceeds_the_estimate() -> None:
    """Estimates can be wrong; measured peaks decide, and each miss tightens the next pick."""
    probed: list[str] = []

    def probe(plan: TrainPlan) -> float:  # this phone uses 1.8× the estimated activations
        probed.append(plan.describe())
        base = ONE_B.weight_bytes / MB
        return base + 1.8 * (plan.estimate_mb - base)

    fit = fit_plan(ONE_B, 3500, probe, rank=16, batch_size=8, seq_len=256)
    assert probed[0] == "backprop r=16 mb=2x4"
    assert len(fit.tried) >= 2 and fit.backoffs == probed[:-1]
    assert fit.plan.measured_mb is not None and fit.plan.measured_mb <= 3500
    assert fit.activation_scale > 1.5


def test_fit_plan_measures_mezo_when_every_estimate_is_over_budget() -> None:
    def probe(plan: TrainPlan) -> float:
        return 650.0 if plan.method == "mezo" else 900.0

    fit = fit_plan(ONE_B, 700, probe, rank=8, batch_size=4, seq_len=256)
    assert fit.plan.method == "mezo" and fit.plan.measured_mb == 650.0
    with pytest.raises(MemoryBudgetError):
        fit_plan(ONE_B, 600, lambda p: 650.0, rank=8, batch_size=4, seq_len=256)


@pytest.fixture(scope="module")
def wide_phone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a 32k vocabulary: its logits make activations large enough that
    micro-batch choices differ by tens of MB — measurable in the resident set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32768,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    out = tmp_path_factory.mktemp("wide-phone")
    LlamaForCausalLM(cfg).save_pretrained(out)
    write_char_tokenizer(out)
    return out


def wide_settings(wide_phone: Path, budget: int) -> FedloraSettings:
    return FedloraSettings.model_validate(
        {"model": {"base": str(wide_phone)}, "client": {"memory_budget_mb": budget}}
    )


def test_round_fits_a_tight_budget_with_a_smaller_micro_batch(wide_phone: Path) -> None:
    community = community_adapter(wide_phone, 4)
    texts = PRIVATE_TEXTS[:8]
    out = PhoneSession().run_round(
        instructions(4, batch_size=8, local_steps=1),
        community,
        texts,
        wide_settings(wide_phone, 80),
    )
    assert out.report.status == "trained", out.report
    plan = str(out.metrics["plan"])
    assert plan.startswith("backprop r=4") and "mb=8x1" not in plan
    assert out.report.peak_memory_mb is not None and out.report.peak_memory_mb <= 80
    assert out.metrics["memory_budget_mb"] == 80.0
    # the same round without a budget runs the whole batch at once, and needs more
    unbounded = FedloraSettings.model_validate({"model": {"base": str(wide_phone)}})
    free = PhoneSession().run_round(
        instructions(4, batch_size=8, local_steps=1), community, texts, unbounded
    )
    assert free.metrics["plan"] == "backprop r=4 mb=8x1"
    assert free.report.peak_memory_mb is not None
    assert free.report.peak_memory_mb > out.report.peak_memory_mb + 40


def test_round_below_backprop_budget_trains_with_mezo(wide_phone: Path) -> None:
    community = community_adapter(wide_phone, 4)
    out = PhoneSession().run_round(
        instructions(4, batch_size=8, local_steps=1),
        community,
        PRIVATE_TEXTS[:8],
        wide_settings(wide_phone, 42),
    )
    assert out.report.status == "trained", out.report
    assert str(out.metrics["plan"]).startswith("mezo")
    assert "mezo" in out.report.reason
    assert out.delta is not None and out.delta.max_rank == 4
    assert out.report.peak_memory_mb is not None and out.report.peak_memory_mb <= 42


def test_round_with_an_impossible_budget_fails_with_a_reason(wide_phone: Path) -> None:
    out = PhoneSession().run_round(
        instructions(4, batch_size=8, local_steps=1),
        community_adapter(wide_phone, 4),
        PRIVATE_TEXTS[:8],
        wide_settings(wide_phone, 16),
    )
    assert out.report.status == "failed" and out.delta is None
    assert out.report.reason.startswith("memory:")
