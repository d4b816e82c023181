"""The Flower ServerApp: one federated run of the round loop against the registry.

:func:`make_server_app` builds it with settings in hand (simulation, tests); the module-level
``app`` reads them from the run config (``fedlora-config`` TOML path, ``fedlora-set``
overrides separated by ``;``) for deployments started with ``flwr run``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora.base_model import resolve_model
from fedlora.config import FedloraSettings, settings_from_run_config
from fedlora.server.keys import load_or_create_signing_key
from fedlora.server.paths import signing_key_path
from fedlora.server.registry import Registry
from fedlora.server.round_loop import BaseInfo, ProgressFn, RoundLoop, RoundSummary

log = logging.getLogger(__name__)


def open_registry(settings: FedloraSettings, key_path: Path | None = None) -> Registry:
    key = load_or_create_signing_key(key_path or signing_key_path())
    return Registry.open(settings.server, signing_key=key)


def make_server_app(
    settings: FedloraSettings | None = None,
    *,
    registry_factory: Callable[[FedloraSettings], Registry] | None = None,
    run_name: str | None = None,
    population_size: int | None = None,
    progress: ProgressFn | None = None,
    on_done: Callable[[list[RoundSummary], RoundLoop], None] | None = None,
    node_wait_s: float = 60.0,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings if settings is not None else settings_from_run_config(context.run_config)
        registry = (registry_factory or open_registry)(s)
        try:
            base_dir = resolve_model(s.model.base)
            base = BaseInfo.from_dir(base_dir, s.lora.target_modules)
            loop = RoundLoop(
                s,
                registry,
                base,
                run_name=run_name or str(context.run_config.get("fedlora-run", "")) or None,
                population_size=population_size,
                progress=progress,
                node_wait_s=node_wait_s,
            )
            summaries = loop.run(grid)
            if on_done is not None:
                on_done(summaries, loop)
        finally:
            registry.close()

    return app


# Deployment entry point: `flwr run` loads "fedlora.server.app:app".
app = make_server_app()
