"""Ways to deal a pool of examples out to federated clients.

Federated results depend heavily on how non-IID clients are, so experiments need the standard
knobs: an IID split (the easy baseline), the label-Dirichlet split over topics (``alpha``
tunes how skewed each client's topic mix is) and the natural split (one client per writer).
:func:`topic_skew` measures the result so runs can report how non-IID they really were.
All randomness comes from ``numpy.random.default_rng(seed)``; no example is lost or duplicated.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from fedlora.data.example import Example


def _check_clients(num_clients: int, n_examples: int, min_size: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if n_examples < num_clients * min_size:
        raise ValueError(
            f"too few examples: {n_examples} cannot give each of {num_clients} clients "
            f"at least {min_size} example(s) (need {num_clients * min_size})"
        )


def partition_iid(examples: Sequence[Example], num_clients: int, seed: int) -> list[list[Example]]:
    """Shuffle and split into ``num_clients`` parts whose sizes differ by at most one."""
    _check_clients(num_clients, len(examples), 1)
    order = np.random.default_rng(seed).permutation(len(examples))
    return [[examples[int(i)] for i in part] for part in np.array_split(order, num_clients)]


def partition_dirichlet(
    examples: Sequence[Example],
    num_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
) -> list[list[Example]]:
    """Label-Dirichlet partition over topics: the usual non-IID benchmark split.

    For each topic (in sorted order), its examples are shuffled and dealt to clients in
    proportions drawn from Dirichlet(``alpha``); small ``alpha`` gives each client few
    topics, large ``alpha`` approaches IID. Afterwards any client below ``min_size`` takes
    examples, one at a time, from the currently largest client (a deterministic rebalance,
    so the call always terminates, unlike resampling until every client is large enough).
    """
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    _check_clients(num_clients, len(examples), min_size)
    rng = np.random.default_rng(seed)
    by_topic: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_topic.setdefault(example.topic, []).append(i)

    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for topic in sorted(by_topic):
        idx = np.asarray(by_topic[topic])[rng.permutation(len(by_topic[topic]))]
        props = rng.dirichlet(np.full(num_clients, alpha))
        props = np.nan_to_num(props, nan=0.0)
        if props.sum() <= 0:  # all mass underflowed at tiny alpha: give it to one client
            props = np.eye(num_clients)[int(rng.integers(num_clients))]
        cuts = np.round(np.cumsum(props / props.sum()) * len(idx)).astype(int)[:-1]
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(int(i) for i in chunk)

    _rebalance(parts, min_size, rng)
    return [[examples[i] for i in part] for part in parts]


def _rebalance(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move examples from the largest clients to those below ``min_size``, in place."""
    needy = [c for c, part in enumerate(parts) if len(part) < min_size]
    if not needy:
        return
    donors = [(-len(part), c) for c, part in enumerate(parts) if len(part) > min_size]
    heapq.heapify(donors)
    for c in needy:
        while len(parts[c]) < min_size:
            neg_size, donor = heapq.heappop(donors)
            taken = parts[donor].pop(int(rng.integers(-neg_size)))
            parts[c].append(taken)
            if len(parts[donor]) > min_size:
                heapq.heappush(donors, (-len(parts[donor]), donor))


def partition_natural(examples: Sequence[Example]) -> dict[str, list[Example]]:
    """One client per writer (``user_id``), in sorted id order; example order is kept."""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.user_id, []).append(example)
    return {uid: groups[uid] for uid in sorted(groups)}


def topic_skew(
    partitions: Sequence[Sequence[Example]], topics: Sequence[str] | None = None
) -> float:
    """Mean total-variation distance between each client's topic mix and the pooled mix.

    0 means every client sees topics in the pooled proportions (IID); values near 1 mean
    clients see disjoint topics. Only ``topics`` are counted (default: every topic present);
    clients with no counted example are skipped.
    """
    labels = sorted({e.topic for part in partitions for e in part}) if topics is None else topics
    index = {t: i for i, t in enumerate(labels)}
    counts = np.zeros((len(partitions), len(index)))
    for c, part in enumerate(partitions):
        for e in part:
            j = index.get(e.topic)
            if j is not None:
                counts[c, j] += 1
    sizes = counts.sum(axis=1)
    nonempty = sizes > 0
    if not nonempty.any():
        return 0.0
    pooled = counts.sum(axis=0) / sizes.sum()
    local = counts[nonempty] / sizes[nonempty, None]
    return float(np.mean(0.5 * np.abs(local - pooled).sum(axis=1)))
