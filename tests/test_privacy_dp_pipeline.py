"""The composed pipeline end to end (with a stand-in mask step), the round context on the
wire, assembly rules, and the torch-free import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedlora.config import PrivacySettings
from fedlora.privacy.dp import (
    ClipStep,
    GaussianNoiseStep,
    Metrics,
    PrivacyConfigError,
    PrivacyPipeline,
    PrivacyStep,
    RoundContext,
    build_pipeline,
    from_modular,
    make_controller,
    round_context,
    to_modular,
)


class ModularSumMask:
    """Stand-in for the secure-aggregation step: residues mod 2^b, signed sum back."""

    name = "mask"

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        assert vec.dtype == np.int64
        assert ctx.modulus_bits is not None
        return to_modular(vec, ctx.modulus_bits), {}

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        assert ctx.modulus_bits is not None
        return from_modular(aggregate, ctx.modulus_bits)


def test_steps_satisfy_the_protocol() -> None:
    assert isinstance(ModularSumMask(), PrivacyStep)
    assert isinstance(ClipStep(), PrivacyStep)
    assert isinstance(PrivacyPipeline([ClipStep()]), PrivacyStep)  # pipelines nest


@pytest.mark.parametrize("noise", ["none", "local", "central", "distributed"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_end_to_end_sum_is_the_clipped_sum_plus_the_modes_noise(noise: str, adaptive: bool) -> None:
    n, d, bits = 20, 4000, 40
    settings = PrivacySettings(
        noise=noise,  # type: ignore[arg-type]
        noise_multiplier=1.0,
        clip_norm=0.5,
        adaptive_clipping=adaptive,
        secure_aggregation=True,
        secagg_bits=bits,
        honest_fraction=0.5,
    )
    controller = make_controller(settings)
    pipe = build_pipeline(settings, mask=ModularSumMask(), controller=controller)
    assert [s.name for s in pipe.steps] == [
        "clip",
        "noise",
        "quantize",
        "distributed_noise",
        "mask",
    ]
    ctx = round_context(
        settings, round=1, num_sampled=n, sampling_rate=0.01, controller=controller, seed=42
    )
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(d) * rng.uniform(0.001, 0.02) for _ in range(n)]
    residue = np.zeros(d + adaptive, dtype=np.uint64)
    for i, x in enumerate(xs):
        sent, _ = pipe.postprocess_one_user(x, ctx.for_phone(f"phone-{i}"))
        assert sent.dtype == np.uint64  # only masked residues leave the phone
        residue = (residue + sent) % np.uint64(2**bits)
    agg = pipe.postprocess_server(residue, ctx.with_contributors(n))
    assert agg.shape == (d,)
    clipped_sum = np.sum([x * min(1.0, 0.5 / float(np.linalg.norm(x))) for x in xs], axis=0)
    err = agg - clipped_sum
    expected_var = {
        "none": 0.0,
        "local": n * ctx.noise_std**2,
        "central": ctx.noise_std**2,
        "distributed": ctx.noise_std**2 / 0.5,
    }[noise]
    if noise == "none":
        assert np.abs(err).max() < n * 2.0**-20  # quantization error only
    else:
        assert err.var() == pytest.approx(expected_var, rel=0.1)
    if adaptive:
        assert controller is not None and len(controller.history) == 1


def test_server_half_needs_the_number_of_contributors() -> None:
    pipe = PrivacyPipeline([ClipStep(), GaussianNoiseStep()])
    ctx = RoundContext(round=1, clip_norm=1.0, num_sampled=3)
    with pytest.raises(PrivacyConfigError, match="with_contributors"):
        pipe.postprocess_server(np.zeros(3), ctx)
    with pytest.raises(PrivacyConfigError, match="num_contributors must be in"):
        ctx.with_contributors(4)  # more than sampled: headroom would not hold


def test_step_names_must_be_unique() -> None:
    with pytest.raises(PrivacyConfigError, match="unique"):
        PrivacyPipeline([ClipStep(), ClipStep()])


def test_round_context_config_round_trip() -> None:
    ctx = RoundContext(
        round=7,
        clip_norm=0.25,
        num_sampled=33,
        noise_mode="distributed",
        noise_multiplier=0.9,
        sampling_rate=0.003,
        honest_fraction=0.6,
        adaptive_clipping=True,
        clip_count_stddev=2.0,
        modulus_bits=32,
        distributed_noise="skellam",
    )
    config = ctx.to_config()
    assert all(isinstance(v, int | float | str | bool) for v in config.values())
    assert all(k.startswith("dp.") for k in config)
    assert RoundContext.from_config({**config, "other.key": 1}) == ctx
    with pytest.raises(PrivacyConfigError, match="unknown"):
        RoundContext.from_config({**config, "dp.bogus": 1})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": "distributed"}, "secure_aggregation=true"),
        ({"secure_aggregation": True}, "masking step"),
        ({"noise": "none", "epsilon_budget": 1.0}, "infinite"),
    ],
)
def test_build_refuses_weakening_configurations(kwargs: dict, match: str) -> None:
    with pytest.raises(PrivacyConfigError, match=match):
        build_pipeline(PrivacySettings(**kwargs))


def test_invalid_context_names_every_problem() -> None:
    with pytest.raises(PrivacyConfigError) as err:
        RoundContext(round=-1, clip_norm=0.0, num_sampled=0, sampling_rate=2.0)
    msg = str(err.value)
    for key in ("round", "clip_norm", "num_sampled", "sampling_rate"):
        assert key in msg


def test_phone_side_import_needs_neither_torch_nor_dp_accounting() -> None:
    code = (
        "import sys, fedlora.privacy.dp as d\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'dp_accounting' not in sys.modules, 'dp_accounting'\n"
        "assert callable(d.build_pipeline)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
