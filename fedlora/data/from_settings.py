"""The federation a run's `[data]` settings describe (synthetic or a directory)."""

from __future__ import annotations

from pathlib import Path

from fedlora.config import DataSettings
from fedlora.data.federated import (
    FederatedDataset,
    build_synthetic_federation,
    federation_from_dir,
)


def load_federation(data: DataSettings) -> FederatedDataset:
    if data.source == "synthetic":
        return build_synthetic_federation(
            num_clients=data.num_clients,
            examples_per_client=data.examples_per_client,
            seed=data.seed,
            partition=data.partition,
            dirichlet_alpha=data.dirichlet_alpha,
            heldout_fraction=data.heldout_fraction,
        )
    return federation_from_dir(
        Path(data.source), heldout_fraction=data.heldout_fraction, seed=data.seed
    )
