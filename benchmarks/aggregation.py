"""Benchmark: time and peak memory to aggregate 100 and 1000 contributions, per rule.

The contributions are synthetic deltas of fedlora's default adapter (Llama, hidden 128,
4 layers, LoRA on q/k/v/o_proj, all 128 → 128) at ranks drawn from 4/8/16, generated one at
a time and dropped after they are accumulated — exactly how a server streams them in. No
model is loaded.

For each rule: ``accumulate`` time (generation excluded), the one-off ``finalize`` + server
step + per-rank views time, and the tracemalloc peak of the streaming loop (accumulate +
finalize, including generating the contribution in flight) above a warmed-up baseline.
Streaming means the peak does not grow with the number of phones: ``mem_1000_over_100`` ≈ 1.

BLAS threads are pinned to one (before NumPy is imported) unless the caller set them: on a
shared 2-core machine OpenBLAS's threads fight each other and small SVDs get ~50× slower.

Run:  python benchmarks/aggregation.py        (≈ 1 minute; prints a table, then one JSON line)
"""

from __future__ import annotations

import gc
import json
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from fedlora.aggregation import (  # noqa: E402
    Aggregator,
    Contribution,
    FedAvg,
    finish_round,
    make_aggregator,
)
from fedlora.aggregation.synthetic import (  # noqa: E402
    default_spec,
    random_adapter,
    random_contributions,
)

SIZES = (100, 1000)
WARMUP = 100
RULES = ("rank_fedavg", "hetlora", "ffa", "fedsa", "flexlora", "flexlora_dense", "flora")


def make_rule(name: str, spec: Any, community: Any) -> Aggregator[Any]:
    if name == "flexlora_dense":  # the secure-aggregation (dense upload) variant
        return make_aggregator("flexlora", spec, secure_aggregation=True, community=community)
    return make_aggregator(name, spec, community=community)


def phones(spec: Any, n: int, seed: int, zero_a: bool) -> Iterator[Contribution]:
    return random_contributions(spec, n, np.random.default_rng(seed), scale=0.01, zero_a=zero_a)


def timed_run(
    rule: Aggregator[Any], spec: Any, community: Any, n: int, zero_a: bool
) -> tuple[float, float, Any]:
    """(accumulate seconds, finalize + server step + views seconds, result)."""
    state = rule.init_state()
    acc = 0.0
    for c in phones(spec, n, 1, zero_a):
        t = time.perf_counter()
        state = rule.accumulate(state, c)
        acc += time.perf_counter() - t
    t = time.perf_counter()
    result = finish_round(community, rule.finalize(state), FedAvg())
    return acc, time.perf_counter() - t, result


def peak_bytes(run: Callable[[int], object], sizes: tuple[int, ...]) -> dict[int, int]:
    """Traced peak of ``run(n)`` for each ``n``, above the steady state of a warm-up.

    The warm-up runs under tracing too: caches inside Python and NumPy that turn over while
    phones stream in (regex, dtype and pydantic internals) are then already counted in the
    baseline, so what remains is what the round itself holds — the accumulator and the one
    contribution in flight.
    """
    out: dict[int, int] = {}
    gc.collect()
    tracemalloc.start()
    try:
        run(WARMUP)
        for n in sizes:
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            run(n)
            out[n] = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return out


def main() -> None:
    spec = default_spec((4, 8, 16))
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for name in RULES:
        zero_a = name == "ffa"
        community = random_adapter(spec, spec.r_max, np.random.default_rng(0), scale=0.05)
        rule = make_rule(name, spec, community)
        timed = {n: timed_run(rule, spec, community, n, zero_a) for n in SIZES}

        def stream(n: int, rule: Aggregator[Any] = rule, zero_a: bool = zero_a) -> object:
            state = rule.init_state()
            for c in phones(spec, n, 1, zero_a):
                state = rule.accumulate(state, c)
                del c  # drop it before the next one is generated: one in flight at a time
            return rule.finalize(state)

        peaks = peak_bytes(stream, SIZES)
        for n in SIZES:
            acc_s, fin_s, result = timed[n]
            rows.append(
                {
                    "rule": name,
                    "n": n,
                    "linear": rule.linear,
                    "exact": rule.exact,
                    "accumulate_s": acc_s,
                    "finalize_server_views_s": fin_s,
                    "peak_bytes": peaks[n],
                    "view_errors": {r: round(v.error, 4) for r, v in result.views.items()},
                    "publish_error": result.publish_error,
                }
            )
    by = {(r["rule"], r["n"]): r for r in rows}
    header = (
        f"{'rule':<15}{'linear':>7}{'exact':>6}{'phones':>7}{'accum s':>9}{'ms/phone':>9}"
        f"{'final s':>8}{'peak MiB':>9}{'1000/100':>9}  view errors (4/8/16)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r["peak_bytes"] / by[(r["rule"], 100)]["peak_bytes"]
        errs = "/".join(f"{e:.3f}" for e in r["view_errors"].values())
        print(
            f"{r['rule']:<15}{r['linear']!s:>7}{r['exact']!s:>6}{r['n']:>7}"
            f"{r['accumulate_s']:>9.3f}{1000 * r['accumulate_s'] / r['n']:>9.3f}"
            f"{r['finalize_server_views_s']:>8.3f}{r['peak_bytes'] / 2**20:>9.2f}"
            f"{ratio if r['n'] == 1000 else 1.0:>9.3f}  {errs}"
        )
    secs = {
        name: by[(name, 1000)]["accumulate_s"] + by[(name, 1000)]["finalize_server_views_s"]
        for name in RULES
    }
    mem = {name: by[(name, 1000)]["peak_bytes"] / by[(name, 100)]["peak_bytes"] for name in RULES}
    print(f"total benchmark wall time: {time.perf_counter() - t_all:.1f} s")
    print(
        json.dumps(
            {
                "seconds_1000": round(max(secs.values()), 4),
                "mem_1000_over_100": round(max(mem.values()), 4),
                "seconds_1000_by_rule": {k: round(v, 4) for k, v in secs.items()},
                "mem_1000_over_100_by_rule": {k: round(v, 4) for k, v in mem.items()},
                "peak_mib_1000_by_rule": {
                    k: round(by[(k, 1000)]["peak_bytes"] / 2**20, 3) for k in RULES
                },
                "adapter": "llama h128 L4, q/k/v/o 128x128, ranks 4/8/16",
            }
        )
    )


if __name__ == "__main__":
    main()
