"""Child process for the crash test: runs the round loop on an in-process grid and prints a
line when each phone starts training, so the parent can SIGKILL it mid-round."""

from __future__ import annotations

import sys
from pathlib import Path

from fedlora.client.app import make_client_app
from fedlora.client.round_training import train_round
from fedlora.config import load_settings
from fedlora.server.app import open_registry
from fedlora.server.round_loop import BaseInfo, RoundLoop
from fedlora.simulations.local_grid import LocalGrid


def main() -> None:
    workdir, model_dir = Path(sys.argv[1]), Path(sys.argv[2])
    s = load_settings(
        None,
        [
            "data.num_clients=4",
            "server.rounds=3",
            "server.clients_per_round=4",
            "server.min_clients=2",
            "client.local_steps=1",
            "client.batch_size=4",
            f'server.database_url="sqlite:///{workdir}/registry.db"',
            f'server.blob_dir="{workdir}/blobs"',
        ],
    )

    def trainer(instr, community, data, settings, context):  # type: ignore[no-untyped-def]
        print(f"TRAINING round={instr.round}", flush=True)
        return train_round(instr, community, data, settings, context)

    registry = open_registry(s, workdir / "key.pem")
    loop = RoundLoop(
        s,
        registry,
        BaseInfo.from_dir(model_dir, s.lora.target_modules),
        run_name="crash",
        node_wait_s=0.1,
        progress=lambda sm: print(f"DONE round={sm.round} status={sm.status}", flush=True),
    )
    print(f"START round={loop.start_round}", flush=True)
    grid = LocalGrid(
        make_client_app(s, trainer=trainer), {i: {"partition-id": i} for i in range(4)}
    )
    loop.run(grid)


if __name__ == "__main__":
    main()
