"""Rules that need each phone's own delta (FLoRA): what the phone uploads, and how the
server checks each upload before anything is accumulated (secure aggregation off)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import AggregationSpec, per_phone_privacy_problems
from fedlora.aggregation.synthetic import default_spec, random_adapter
from fedlora.client.contribute import prepare_contribution
from fedlora.config import load_settings
from fedlora.errors import ConfigError, FedloraError
from fedlora.privacy.dp import RoundContext
from fedlora.protocol import PhoneReport, RoundInstructions
from fedlora.server.app import open_registry
from fedlora.server.round_loop import BaseInfo, RoundAborted, RoundLoop
from fedlora.simulations.scenario import load_scenario

SHAPES = {"model.layers.0.self_attn.q_proj": (12, 10), "model.layers.0.mlp.up_proj": (12, 20)}


def phone_round(
    spec: AggregationSpec, rank: int, noise: str = "none", *, secure: bool = False
) -> tuple[LoraAdapter, LoraAdapter, RoundInstructions, RoundContext]:
    rng = np.random.default_rng(rank)
    community = random_adapter(spec, rank, rng, scale=0.1)
    delta = random_adapter(spec, rank, rng, kind="delta", scale=0.01)
    instr = RoundInstructions(
        round=1,
        rank=rank,
        r_max=spec.r_max,
        local_steps=1,
        batch_size=2,
        learning_rate=1e-3,
        seed=0,
        layout_digest=spec.factor_layout.digest(),
        round_ranks=",".join(map(str, spec.ranks)),
        rule="flora",
        secure_aggregation=secure,
    )
    ctx = RoundContext(
        round=1,
        clip_norm=1e3,
        num_sampled=4,
        noise_mode=noise,  # type: ignore[arg-type]
        noise_multiplier=0.0 if noise == "none" else 1.0,
        seed=7,
    )
    return delta, community, instr, ctx


def test_phone_uploads_its_own_delta_in_the_rank_layout() -> None:
    spec = default_spec((2, 4), linear_shapes=SHAPES)
    delta, community, instr, ctx = phone_round(spec, 2)
    prepared = prepare_contribution(delta, community, instr, ctx, num_examples=17, phone_id="p")
    layout = spec.rank_layout(2)
    assert not prepared.secure and prepared.rank == 2 and prepared.weight == 17.0
    # documented layout: modules in natural order, lora_A then lora_B, row-major, no padding
    assert layout.size == sum(2 * (d_in + d_out) for d_in, d_out in SHAPES.values())
    assert [e.name for e in layout.entries][:2] == [
        "model.layers.0.mlp.up_proj.lora_A.weight",  # natural order: mlp < self_attn
        "model.layers.0.mlp.up_proj.lora_B.weight",
    ]
    np.testing.assert_array_equal(prepared.vector, layout.flatten(delta))
    back = spec.delta_from_vector(prepared.vector, 2)
    for m, pair in delta:
        np.testing.assert_allclose(back.pairs[m].A, pair.A)
        np.testing.assert_allclose(back.pairs[m].B, pair.B)


def test_local_noise_privatizes_the_phone_upload_with_weight_one() -> None:
    spec = default_spec((2, 4), linear_shapes=SHAPES)
    delta, community, instr, ctx = phone_round(spec, 4, "local")
    prepared = prepare_contribution(delta, community, instr, ctx, num_examples=17, phone_id="p")
    plain = spec.rank_layout(4).flatten(delta)
    assert prepared.weight == 1.0 and prepared.vector.shape == plain.shape
    assert np.std(prepared.vector - plain) > 0.5 * ctx.noise_std


@pytest.mark.parametrize(
    ("noise", "secure", "message"),
    [
        ("central", False, "never forms a sum"),
        ("distributed", False, "never forms a sum"),
        ("none", True, "cannot run under secure aggregation"),
    ],
)
def test_phone_refuses_sum_protections_for_a_per_phone_rule(
    noise: str, secure: bool, message: str
) -> None:
    spec = default_spec((2, 4), linear_shapes=SHAPES)
    delta, community, instr, ctx = phone_round(spec, 2, noise, secure=secure)
    with pytest.raises(FedloraError, match=message):
        prepare_contribution(delta, community, instr, ctx, num_examples=3, phone_id="p")


def test_privacy_problems_only_for_rules_that_need_each_phone() -> None:
    for rule in ("rank_fedavg", "hetlora", "ffa", "fedsa", "flexlora"):
        assert not per_phone_privacy_problems(rule, secure_aggregation=True, noise="central")
    assert not per_phone_privacy_problems("flora", secure_aggregation=False, noise="local")
    assert len(per_phone_privacy_problems("flora", secure_aggregation=True, noise="central")) == 2


@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_scenario_refuses_flora_with_noise_on_a_sum(noise: str) -> None:
    with pytest.raises(ConfigError, match=f"privacy.noise: '{noise}' noise .* never forms a sum"):
        load_scenario(
            "smoke",
            [
                'aggregation.rule="flora"',
                "privacy.secure_aggregation=false",
                f'privacy.noise="{noise}"',
            ],
        )
    ok = load_scenario(
        "smoke",
        ['aggregation.rule="flora"', "privacy.secure_aggregation=false", 'privacy.noise="local"'],
    )
    assert ok.settings.aggregation.rule == "flora"


# ---------------------------------------------------------------- server-side checks
@pytest.fixture
def flora_loop(default_model_dir: Path, tmp_path: Path) -> RoundLoop:
    s = load_settings(
        None,
        [
            'aggregation.rule="flora"',
            "privacy.secure_aggregation=false",
            "server.min_clients=2",
            "server.clients_per_round=3",
            f'server.database_url="sqlite:///{tmp_path}/registry.db"',
            f'server.blob_dir="{tmp_path}/blobs"',
        ],
    )
    registry = open_registry(s, tmp_path / "key.pem")
    base = BaseInfo.from_dir(default_model_dir, s.lora.target_modules)
    return RoundLoop(s, registry, base, run_name="flora-checks", node_wait_s=0.1)


def uploads(
    loop: RoundLoop, ranks: dict[int, int]
) -> tuple[dict[int, np.ndarray], dict[int, PhoneReport]]:
    rng = np.random.default_rng(0)
    vectors = {
        n: 1e-3 * rng.standard_normal(loop.spec.rank_layout(r).size).astype(np.float32)
        for n, r in ranks.items()
    }
    reports = {n: PhoneReport(status="trained", num_examples=5, rank=r) for n, r in ranks.items()}
    return vectors, reports


def test_server_accumulates_valid_per_phone_uploads(flora_loop: RoundLoop) -> None:
    ranks = {1: flora_loop.ranks[0], 2: flora_loop.ranks[-1], 3: flora_loop.ranks[0]}
    vectors, reports = uploads(flora_loop, ranks)
    ctx = RoundContext(round=1, clip_norm=1.0, num_sampled=3)
    agg, count = flora_loop._aggregate_each(1, ctx, [1, 2, 3], vectors, reports, ranks)
    assert count == 3 and agg.rule == "flora" and agg.total_weight == 15.0
    # adaptive clipping: the clip bit rides as a last coordinate and is stripped first
    adaptive = replace(ctx, adaptive_clipping=True)
    with_bits = {n: np.append(v, adaptive.bit_scale * 0.5) for n, v in vectors.items()}
    again, _ = flora_loop._aggregate_each(1, adaptive, [1, 2, 3], with_bits, reports, ranks)
    for m in agg.tensors:
        np.testing.assert_array_equal(again.tensors[m], agg.tensors[m])


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("short", r"malformed vector .* own rank-\d+ delta takes"),
        ("nan", "non-finite values"),
        ("rank", "trains at most the rank it was sent"),
        ("other_rank", r"malformed vector .* own rank-\d+ delta takes"),
    ],
)
def test_server_refuses_a_bad_upload_before_accumulating(
    flora_loop: RoundLoop, spoil: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    r_lo, r_hi = flora_loop.ranks[0], flora_loop.ranks[-1]
    ranks = {1: r_lo, 2: r_hi}
    vectors, reports = uploads(flora_loop, ranks)
    if spoil == "short":
        vectors[2] = vectors[2][:-1]
    elif spoil == "nan":
        vectors[2][3] = np.nan
    elif spoil == "rank":
        reports[2] = replace(reports[2], rank=r_hi + 1)
    else:  # a rank-lo upload from a phone sent the rank-hi view (uploads are at the sent rank)
        reports[2] = replace(reports[2], rank=r_lo)
        vectors[2] = vectors[1].copy()
    ctx = RoundContext(round=1, clip_norm=1.0, num_sampled=2)
    with pytest.raises(RoundAborted, match=message):
        flora_loop._aggregate_each(1, ctx, [1, 2], vectors, reports, ranks)


def test_server_takes_a_backed_off_phone_at_the_rank_it_was_sent(flora_loop: RoundLoop) -> None:
    """A phone that trained a lower rank to fit its memory zero-pads its delta back to the
    view's rank and reports the rank it trained: accepted, at the rank it was sent."""
    r_lo, r_hi = flora_loop.ranks[0], flora_loop.ranks[-1]
    ranks = {1: r_lo, 2: r_hi, 3: r_hi}
    vectors, reports = uploads(flora_loop, ranks)
    reports[3] = replace(reports[3], rank=r_lo)  # trained r_lo, upload at r_hi
    ctx = RoundContext(round=1, clip_norm=1.0, num_sampled=3)
    agg, count = flora_loop._aggregate_each(1, ctx, [1, 2, 3], vectors, reports, ranks)
    assert count == 3 and agg.total_weight == 15.0
