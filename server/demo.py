"""A synthetic run for demos, smoke tests and benchmarks of the registry and hub.

``fedlora hub seed-demo`` fills an empty registry with a few rounds of plausible numbers so
that the dashboard and the download endpoints can be seen working without a federation
(the container smoke test and ``benchmarks/hub_load.py`` use it). Nothing here trains: the
adapters are random LoRA factors in the real format, and the metrics follow smooth curves.
"""

from __future__ import annotations

import math

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.ranks import truncate_to_rank

from .registry import Registry
from .registry_types import CommittedRound, PrivacySnapshot, RoundMetrics, RoundPublication

DEMO_FINGERPRINT = "demo-base:0000000000000000"


def make_demo_adapter(
    rank: int = 16,
    *,
    hidden: int = 64,
    layers: int = 2,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
    round: int = 0,
) -> LoraAdapter:
    """A random adapter of the given shape (float32), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for layer in range(layers):
        for m in modules:
            a = rng.normal(0, 0.02, size=(rank, hidden)).astype(np.float32)
            b = rng.normal(0, 0.02, size=(hidden, rank)).astype(np.float32)
            pairs[f"model.layers.{layer}.self_attn.{m}"] = LoraPair(a, b)
    return LoraAdapter.create(
        pairs,
        base_fingerprint=DEMO_FINGERPRINT,
        alpha=2.0 * rank,
        version=round,
        round=round,
        producer="fedlora-demo",
    )


def demo_publication(
    number: int,
    *,
    r_max: int = 16,
    view_ranks: tuple[int, ...] = (4, 8),
    hidden: int = 64,
    layers: int = 2,
    clients: int = 10,
) -> RoundPublication:
    """Round ``number`` of the demo run: adapter, views, metrics, privacy, participants."""
    community = make_demo_adapter(r_max, hidden=hidden, layers=layers, seed=number, round=number)
    views = {r: truncate_to_rank(community, r) for r in view_ranks if r < r_max}
    dropouts = number % 3
    survivors = clients - dropouts
    mix_ranks = (*view_ranks, r_max)
    rank_mix = {r: 0 for r in mix_ranks}
    for i in range(survivors):
        rank_mix[mix_ranks[i % len(mix_ranks)]] += 1
    loss = 3.2 * math.exp(-0.15 * number) + 1.1
    eps = 0.9 * math.sqrt(number)
    ledger = {
        "format": "fedlora.privacy-ledger",
        "version": 1,
        "delta": 1e-5,
        "epsilon_budget": None,
        "accountant": "rdp",
        "amplification": True,
        "rounds": [
            {
                "round": k,
                "noise_mode": "distributed",
                "noise_multiplier": 1.1,
                "sampling_rate": 0.05,
                "epsilon": 0.9 * math.sqrt(k),
            }
            for k in range(1, number + 1)
        ],
    }
    import json

    return RoundPublication(
        community=community,
        views=views,
        metrics=RoundMetrics(
            rank_mix=rank_mix,
            bytes_up=survivors * 180_000,
            bytes_down=clients * 240_000,
            loss=loss,
            perplexity=math.exp(loss),
            timings={
                "configure": 0.4,
                "train": 20.0 + 2.0 * (number % 4),
                "secagg": 3.0 + 0.1 * number,
                "aggregate": 0.8,
                "publish": 0.2,
            },
        ),
        privacy=PrivacySnapshot(
            epsilon=eps,
            delta=1e-5,
            noise_mode="distributed",
            noise_multiplier=1.1,
            sampling_rate=0.05,
            clip_norm=1.0,
            ledger_json=json.dumps(ledger),
        ),
        participants=[f"phone-{(number * 7 + i) % 40}" for i in range(survivors)],
        dropouts=[f"phone-{(number * 7 + survivors + i) % 40}" for i in range(dropouts)],
    )


def seed_demo_run(
    registry: Registry,
    rounds: int = 8,
    *,
    name: str = "demo",
    hidden: int = 64,
    layers: int = 2,
    failed_round: int | None = None,
) -> CommittedRound | None:
    """Publish ``rounds`` demo rounds into run ``name`` (plus one failed round if asked)."""
    run = registry.begin_run(name, config={"demo": True, "rounds": rounds})
    last = registry.latest_committed_round(run.id)
    for _ in range(rounds):
        number = registry.start_round(run.id).number
        if failed_round is not None and number == failed_round:
            registry.fail_round(run.id, number, "demo: only 1 survivor, min_clients=2")
            number = registry.start_round(run.id).number
        pub = demo_publication(number, hidden=hidden, layers=layers)
        last = registry.publish_round(run.id, number, pub)
    return last
