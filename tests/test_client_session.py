"""The round API: PhoneSession.run_round → RoundOutcome(delta, report, metrics)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_client_support import (  # noqa: E402
    PRIVATE_TEXTS,
    community_adapter,
    instructions,
    phone_model_dir,
)

from fedlora.adapter import LoraAdapter  # noqa: E402
from fedlora.client.memory_plan import TrainPlan  # noqa: E402
from fedlora.client.policy import DeviceState, StaticProbe  # noqa: E402
from fedlora.client.session import PhoneOptions, PhoneSession  # noqa: E402
from fedlora.config import FedloraSettings  # noqa: E402
from fedlora.errors import AdapterValidationError  # noqa: E402
from fedlora.protocol import PhoneReport  # noqa: E402

OK = DeviceState(charging=True, battery_pct=90, has_battery=True, network="unmetered",
                 temperature_c=30.0)  # fmt: skip


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-session"))


@pytest.fixture(scope="module")
def settings(phone_dir: Path) -> FedloraSettings:
    return FedloraSettings.model_validate({"model": {"base": str(phone_dir), "max_seq_len": 64}})


@pytest.fixture(scope="module")
def community(phone_dir: Path) -> LoraAdapter:
    return community_adapter(phone_dir, 4, b_scale=0.01)


def assert_same_layout(delta: LoraAdapter, community: LoraAdapter) -> None:
    assert delta.meta.kind == "delta"
    assert delta.modules == community.modules
    assert delta.meta.ranks == community.meta.ranks
    assert delta.meta.alphas == community.meta.alphas
    assert delta.meta.base_fingerprint == community.meta.base_fingerprint
    for name, pair in delta:
        assert pair.A.shape == community.pairs[name].A.shape
        assert pair.B.shape == community.pairs[name].B.shape


def test_round_returns_lora_delta_and_report(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    texts = (*PRIVATE_TEXTS, "Your verification code is 554433", PRIVATE_TEXTS[0])
    out = PhoneSession().run_round(
        instructions(4, local_steps=8, learning_rate=3e-2),
        community,
        texts,
        settings,
        StaticProbe(OK),
    )
    r = out.report
    assert r.status == "trained" and r.reason == ""
    assert r.num_examples == len(PRIVATE_TEXTS) and r.steps == 8 and r.rank == 4
    assert r.loss_before is not None and r.loss_after is not None
    assert r.loss_after < r.loss_before
    assert (r.backend, r.dtype, r.quantization) == ("cpu", "float32", "none")
    assert r.peak_memory_mb is not None and r.peak_memory_mb > 0 and r.seconds > 0
    assert out.metrics["dropped_automated"] == 1 and out.metrics["dropped_exact_duplicate"] == 1
    assert out.delta is not None
    assert_same_layout(out.delta, community)
    assert out.delta.meta.round == 1
    assert float(np.abs(out.delta.pairs[community.modules[0]].B).max()) > 0
    # the delta is exactly trained − received: adding it back gives the trained adapter
    trained = community.plus(out.delta)
    assert not np.allclose(
        trained.pairs[community.modules[0]].B, community.pairs[community.modules[0]].B
    )


def test_report_records_quantized_backend(phone_dir: Path, community: LoraAdapter) -> None:
    s = FedloraSettings.model_validate(
        {"model": {"base": str(phone_dir), "quantization": "nf4", "max_seq_len": 64}}
    )
    out = PhoneSession().run_round(instructions(4, local_steps=2), community, PRIVATE_TEXTS, s)
    assert out.report.status == "trained"
    assert out.report.quantization == "nf4+dq"
    assert out.report.dtype in ("bfloat16", "float32")
    assert out.report.backend == "cpu"


def test_dynamic_rank_scaling_pads_the_delta_back(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    plan = TrainPlan("backprop", rank=2, micro_batch=2, accumulation=2, checkpointing=True)
    out = PhoneSession(PhoneOptions(force_plan=plan)).run_round(
        instructions(4), community, PRIVATE_TEXTS, settings
    )
    assert out.report.status == "trained" and out.report.rank == 2
    assert "rank 4->2" in out.report.reason and "zero-padded" in out.report.reason
    assert out.metrics["rank_trained"] == 2 and out.metrics["rank_instructed"] == 4
    assert out.delta is not None
    assert_same_layout(out.delta, community)
    for _, pair in out.delta:
        assert np.all(pair.A[2:] == 0) and np.all(pair.B[:, 2:] == 0)
        assert np.any(pair.B[:, :2] != 0)


def test_ffa_trains_only_b(settings: FedloraSettings, community: LoraAdapter) -> None:
    out = PhoneSession().run_round(instructions(4, rule="ffa"), community, PRIVATE_TEXTS, settings)
    assert out.delta is not None
    for _, pair in out.delta:
        assert np.all(pair.A == 0)
    assert any(np.any(p.B != 0) for _, p in out.delta)


def test_fedsa_keeps_b_on_the_phone(
    settings: FedloraSettings, community: LoraAdapter, tmp_path: Path
) -> None:
    session = PhoneSession()
    first = session.run_round(
        instructions(4, rule="fedsa"), community, PRIVATE_TEXTS, settings, state_dir=tmp_path
    )
    assert first.metrics["fedsa_b"] == "community"
    assert first.delta is not None
    for _, pair in first.delta:
        assert np.all(pair.B == 0)
    assert any(np.any(p.A != 0) for _, p in first.delta)
    personal = tmp_path / "fedsa_personal.safetensors"
    assert personal.exists()
    from fedlora.adapter_io import load_adapter

    kept_b = load_adapter(personal)
    second = session.run_round(
        instructions(4, rule="fedsa", round=2), community, PRIVATE_TEXTS, settings,
        state_dir=tmp_path,
    )  # fmt: skip
    assert second.metrics["fedsa_b"] == "local"
    # round 2 started from the phone's own B, not the community's: its loss is lower
    assert second.report.loss_before is not None and first.report.loss_before is not None
    assert second.report.loss_before < first.report.loss_before
    name = community.modules[0]
    assert not np.allclose(kept_b.pairs[name].B, community.pairs[name].B)


def test_phone_that_may_not_train_says_why_without_loading_anything(
    community: LoraAdapter,
) -> None:
    nowhere = FedloraSettings.model_validate({"model": {"base": "/nonexistent/model"}})
    hot = replace(OK, temperature_c=44.0)
    out = PhoneSession().run_round(
        instructions(4), community, PRIVATE_TEXTS, nowhere, StaticProbe(hot)
    )
    assert out.delta is None
    assert out.report.status == "not_allowed"
    assert out.report.reason == "temperature 44.0C > 40.0C"


def test_no_usable_data(settings: FedloraSettings, community: LoraAdapter) -> None:
    junk = ["Missed call from +1 555 0199", "ok", "Your verification code is 123123"]
    out = PhoneSession().run_round(instructions(4), community, junk, settings)
    assert out.report.status == "no_data" and out.delta is None
    assert out.metrics["dropped_too_short"] == 1 and out.metrics["dropped_automated"] == 2


def test_deadline_returns_the_steps_done(settings: FedloraSettings, community: LoraAdapter) -> None:
    s = settings.model_copy(
        update={"client": settings.client.model_copy(update={"cooling_every": 1,
                                                             "cooling_seconds": 1.0})}
    )  # fmt: skip
    out = PhoneSession().run_round(
        instructions(4, local_steps=200, deadline_s=6.0), community, PRIVATE_TEXTS, s
    )
    assert out.report.status == "deadline"
    assert 1 <= out.report.steps < 200
    assert out.report.reason.startswith("deadline after")
    assert out.delta is not None and any(np.any(p.B != 0) for _, p in out.delta)


def test_base_is_loaded_once_and_left_clean(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    session = PhoneSession()
    base = session.base_for(settings.model, settings.client.device)
    weights = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    for rnd in (1, 2):
        session.run_round(instructions(4, round=rnd), community, PRIVATE_TEXTS, settings)
    assert PhoneSession().base_for(settings.model, "cpu") is base  # shared across sessions
    assert not any("lora" in n for n, _ in base.model.named_modules())
    for n, p in base.model.named_parameters():
        assert torch.equal(p, weights[n]) and not p.requires_grad


def test_adapter_for_another_base_is_refused(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    alien = community.with_meta(base_fingerprint="0" * 12 + ":" + "1" * 12)
    with pytest.raises(AdapterValidationError, match="made for base model"):
        PhoneSession().run_round(instructions(4), alien, PRIVATE_TEXTS, settings)
    with pytest.raises(AdapterValidationError, match="instructions say rank 8"):
        PhoneSession().run_round(instructions(8), community, PRIVATE_TEXTS, settings)


def test_rehearsal_is_mixed_in_and_reported(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    out = PhoneSession(PhoneOptions(rehearsal_fraction=0.25)).run_round(
        instructions(4, local_steps=2), community, PRIVATE_TEXTS, settings
    )
    assert out.metrics["rehearsal_examples"] == 4
    assert out.report.num_examples == len(PRIVATE_TEXTS)  # the weight counts private data only


SECRETS = (
    "Meet me at 14 Quarry Lane, the spare key is under the blue flowerpot.",
    "My bank PIN changed, the new one ends in 7731, don't tell anyone.",
    "Therapy went well today, talked about dad and the hospital stay.",
    "Picking up Zoe's inhaler prescription at Greenway pharmacy after work.",
)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def test_nothing_but_lora_tensors_and_numbers_leaves_the_phone(
    settings: FedloraSettings, community: LoraAdapter, phone_dir: Path
) -> None:
    from flwr.app import ConfigRecord, RecordDict
    from safetensors.numpy import load_file

    from fedlora.protocol import DELTA, REPORT
    from fedlora.records import put_adapter

    texts = SECRETS + PRIVATE_TEXTS
    out = PhoneSession().run_round(
        instructions(4), community, texts, settings, heldout_texts=SECRETS[:2]
    )
    assert out.delta is not None
    reply = RecordDict({REPORT: out.report.to_record(), "metrics": ConfigRecord(dict(out.metrics))})
    put_adapter(reply, DELTA, out.delta)

    base_shapes = {tuple(t.shape) for t in load_file(str(phone_dir / "model.safetensors")).values()}
    arrays = 0
    for record in reply.array_records.values():
        for name, array in record.items():
            arrays += 1
            assert name.endswith((".lora_A.weight", ".lora_B.weight")), name
            shape = tuple(array.shape)
            assert 4 in shape and len(shape) == 2, (name, shape)
            assert shape not in base_shapes, f"{name} has a base weight's shape {shape}"
    assert arrays == 2 * len(community.modules)

    strings: list[str] = []
    for record_name, record in reply.config_records.items():
        for key, value in record.items():
            strings.append(key)
            if isinstance(value, str | list):
                found = _strings(value)
                if record_name in (REPORT, "metrics"):  # short status strings only
                    assert all(len(v) <= 200 for v in found), (key, value)
                strings.extend(found)
            else:
                assert isinstance(value, int | float | bool), (key, value)
    strings.extend(_strings(out.delta.meta.model_dump()))
    assert out.delta.meta.extra == {} and out.delta.meta.producer == "fedlora-phone"
    for s in strings:
        for text in texts:
            for i in range(0, len(text) - 12):
                assert text[i : i + 12] not in s, f"private text fragment in {s!r}"
    report_fields = PhoneReport.__dataclass_fields__
    for field_name in report_fields:
        value = getattr(out.report, field_name)
        assert value is None or isinstance(value, int | float | str)


def test_interrupted_round_resumes_from_the_phone_state_dir(
    settings: FedloraSettings,
    community: LoraAdapter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedlora.client.peft_round as peft_round_mod

    s = settings.model_copy(
        update={"client": settings.client.model_copy(update={"checkpoint_every": 2,
                                                             "memory_budget_mb": 512})}
    )  # fmt: skip
    instr = instructions(4, local_steps=6)
    reference = PhoneSession().run_round(instr, community, PRIVATE_TEXTS, s)

    class Killed(Exception):
        pass

    real = peft_round_mod.train_lora

    def dies_after_step_3(model, data, cfg, on_step=None, **kw):  # type: ignore[no-untyped-def]
        def hook(step: int, loss: float) -> None:
            if step == 3:
                raise Killed

        return real(model, data, cfg, on_step=hook, **kw)

    monkeypatch.setattr(peft_round_mod, "train_lora", dies_after_step_3)
    with pytest.raises(Killed):
        PhoneSession().run_round(instr, community, PRIVATE_TEXTS, s, state_dir=tmp_path)
    assert (tmp_path / "train_state.pt").exists() and (tmp_path / "round_plan.json").exists()
    monkeypatch.setattr(peft_round_mod, "train_lora", real)
    resumed = PhoneSession().run_round(instr, community, PRIVATE_TEXTS, s, state_dir=tmp_path)
    assert resumed.metrics["resumed_from_step"] == 2
    assert resumed.report.steps == 6
    assert not (tmp_path / "train_state.pt").exists()  # the finished round cleans up
    assert reference.delta is not None and resumed.delta is not None
    for name, pair in reference.delta:
        np.testing.assert_allclose(resumed.delta.pairs[name].A, pair.A, atol=1e-6)
        np.testing.assert_allclose(resumed.delta.pairs[name].B, pair.B, atol=1e-6)
