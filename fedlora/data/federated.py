"""A federation ready to simulate: each client's train and held-out texts, plus generic text.

Simulations and tests want one object that says who the clients are, what each may train on,
what each is evaluated on (personalisation), and what generic text checks that adapters do not
make the model forget general language. The builders here produce it from synthetic users
(natural, IID or Dirichlet-partitioned) or from a directory of user-supplied files.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fedlora.data.example import Example
from fedlora.data.loader import load_client_examples
from fedlora.data.noise import inject_noise
from fedlora.data.partition import partition_dirichlet, partition_iid, partition_natural
from fedlora.data.seeding import stable_seed
from fedlora.data.splits import train_heldout_split
from fedlora.data.synthetic import generate_generic_corpus, generate_user_examples, make_population

Partition = Literal["natural", "iid", "dirichlet"]

DEFAULT_GENERIC_HELDOUT = 64
"""Generic held-out documents per federation (enough for a stable forgetting check)."""


@dataclass(frozen=True)
class ClientData:
    """What one client trains on and is evaluated on; texts never leave the client."""

    client_id: str
    train: tuple[str, ...]
    heldout: tuple[str, ...]


@dataclass(frozen=True)
class FederatedDataset:
    """All clients of a federation (sorted by id) and generic held-out text."""

    clients: dict[str, ClientData]
    generic_heldout: tuple[str, ...]

    @property
    def client_ids(self) -> list[str]:
        return list(self.clients)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, client_id: str) -> ClientData:
        return self.clients[client_id]


def client_id_for(index: int) -> str:
    """Id of the ``index``-th re-partitioned (IID/Dirichlet) client; sorts in index order."""
    return f"client_{index:05d}"


def generic_heldout(seed: int, n_docs: int = DEFAULT_GENERIC_HELDOUT) -> tuple[str, ...]:
    """Generic documents from a seed stream of their own, apart from any pretraining seed."""
    return tuple(generate_generic_corpus(n_docs, stable_seed("generic-heldout", seed)))


def _client(
    client_id: str,
    examples: Sequence[Example],
    heldout_fraction: float,
    seed: int,
    noise_rate: float,
) -> ClientData:
    split_seed = stable_seed("split", seed, client_id)
    train, heldout = train_heldout_split(examples, heldout_fraction, split_seed)
    if noise_rate > 0.0:
        train = inject_noise(
            train, noise_rate, random.Random(stable_seed("noise", seed, client_id))
        )
    return ClientData(client_id, tuple(e.text for e in train), tuple(e.text for e in heldout))


def build_synthetic_federation(
    num_clients: int,
    examples_per_client: int,
    seed: int,
    partition: Partition = "natural",
    dirichlet_alpha: float = 0.5,
    heldout_fraction: float = 0.2,
    *,
    topic_concentration: float = 0.5,
    noise_rate: float = 0.05,
    generic_heldout_docs: int = DEFAULT_GENERIC_HELDOUT,
) -> FederatedDataset:
    """A synthetic federation of ``num_clients`` clients.

    ``"natural"``: client ``i`` is synthetic user ``i`` with ``examples_per_client`` texts.
    ``"iid"`` / ``"dirichlet"``: the same users' texts are pooled and dealt out again (sizes
    then vary under Dirichlet, every client gets at least one text). Each client's texts are
    split into train and held-out; then, on the train side only, ``noise_rate`` of texts are
    replaced by automated messages or duplicates (for the on-device filter to remove), so
    held-out evaluation always measures genuine user text.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if examples_per_client < 1:
        raise ValueError(f"examples_per_client must be >= 1, got {examples_per_client}")
    if partition not in ("natural", "iid", "dirichlet"):
        raise ValueError(f"partition must be 'natural', 'iid' or 'dirichlet', got {partition!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if partition == "dirichlet" and not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    users = make_population(num_clients, seed, topic_concentration)
    pool = [e for u in users for e in generate_user_examples(u, examples_per_client, seed, 0.0)]
    groups: dict[str, list[Example]]
    if partition == "natural":
        groups = partition_natural(pool)
    else:
        part_seed = stable_seed("partition", seed) % 2**63
        parts = (
            partition_iid(pool, num_clients, part_seed)
            if partition == "iid"
            else partition_dirichlet(pool, num_clients, dirichlet_alpha, part_seed)
        )
        groups = {client_id_for(i): part for i, part in enumerate(parts)}
    clients = {
        cid: _client(cid, groups[cid], heldout_fraction, seed, noise_rate) for cid in sorted(groups)
    }
    return FederatedDataset(clients, generic_heldout(seed, generic_heldout_docs))


def federation_from_dir(
    path: str | os.PathLike[str],
    heldout_fraction: float,
    seed: int,
    *,
    generic_heldout_docs: int = DEFAULT_GENERIC_HELDOUT,
) -> FederatedDataset:
    """A federation from ``<client_id>.jsonl``/``.txt`` files (see :mod:`fedlora.data.loader`)."""
    clients = {
        cid: _client(cid, examples, heldout_fraction, seed, noise_rate=0.0)
        for cid, examples in load_client_examples(path).items()
    }
    return FederatedDataset(clients, generic_heldout(seed, generic_heldout_docs))
