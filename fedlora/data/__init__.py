"""Private phone text for federated LoRA: synthetic users, partitions, splits and file loading.

Everything here is pure Python + NumPy and deterministic in integer seeds, so the server,
simulations and tests can all build exactly the same federation without torch or a network.
"""

from fedlora.data.example import (
    KINDS,
    SYSTEM_KIND,
    SYSTEM_TOPIC,
    TOPICS,
    UNKNOWN_TOPIC,
    Example,
)
from fedlora.data.federated import (
    ClientData,
    FederatedDataset,
    build_synthetic_federation,
    federation_from_dir,
    generic_heldout,
)
from fedlora.data.loader import (
    ClientDataError,
    load_client_dir,
    load_client_examples,
    write_client_dir,
)
from fedlora.data.noise import inject_noise
from fedlora.data.partition import (
    partition_dirichlet,
    partition_iid,
    partition_natural,
    topic_skew,
)
from fedlora.data.seeding import stable_seed
from fedlora.data.splits import train_heldout_split
from fedlora.data.style import UserStyle
from fedlora.data.synthetic import (
    UserProfile,
    generate_generic_corpus,
    generate_user_examples,
    make_population,
    make_user,
)

__all__ = [
    "KINDS",
    "SYSTEM_KIND",
    "SYSTEM_TOPIC",
    "TOPICS",
    "UNKNOWN_TOPIC",
    "ClientData",
    "ClientDataError",
    "Example",
    "FederatedDataset",
    "UserProfile",
    "UserStyle",
    "build_synthetic_federation",
    "federation_from_dir",
    "generate_generic_corpus",
    "generate_user_examples",
    "generic_heldout",
    "inject_noise",
    "load_client_dir",
    "load_client_examples",
    "make_population",
    "make_user",
    "partition_dirichlet",
    "partition_iid",
    "partition_natural",
    "stable_seed",
    "topic_skew",
    "train_heldout_split",
    "write_client_dir",
]
