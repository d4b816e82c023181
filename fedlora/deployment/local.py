"""A whole deployment on one machine: SuperLink, hub, SuperNodes and a run, over TLS.

What ``fedlora deploy local`` and the end-to-end tests drive. Every service is a real
process started with the same command line an operator would type (see
:mod:`fedlora.deployment.commands`); nothing is in-process or mocked, so what passes here is
what a real deployment does — only the addresses are loopback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedlora.deployment import commands, flwr_cli
from fedlora.deployment.flower_config import DEFAULT_CONNECTION, write_superlink_connection
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.services import Service, ServiceGroup, free_port


@dataclass
class LocalDeployment:
    """Drives the services of one deployment directory on loopback."""

    layout: DeploymentLayout
    group: ServiceGroup
    host: str = "127.0.0.1"
    superlink_port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    connection: str = DEFAULT_CONNECTION

    @classmethod
    def create(
        cls, layout: DeploymentLayout, env: Mapping[str, str] | None = None
    ) -> LocalDeployment:
        return cls(layout=layout, group=ServiceGroup(layout.logs, env))

    @property
    def superlink_address(self) -> str:
        return f"{self.host}:{self.superlink_port}"

    @property
    def hub_url(self) -> str:
        return f"https://{self.host}:{self.hub_port}"

    # ------------------------------------------------------------------ services
    def start_superlink(self, *, node_auth: bool = True, timeout: float = 90.0) -> Service:
        """The SuperLink with TLS (+ node auth); writes the flwr CLI connection to it."""
        argv = commands.superlink_command(
            self.layout, host=self.host, port=self.superlink_port, node_auth=node_auth
        )
        env = commands.service_env(self.layout, "superlink", signing_key=True)
        service = self.group.start("superlink", argv, env=env)
        service.wait_for_port(self.host, self.superlink_port, timeout)
        write_superlink_connection(
            self.layout.flwr_home, self.superlink_address, self.layout.ca_cert, name=self.connection
        )
        return service

    def register(self, names: Sequence[str]) -> dict[str, int]:
        return flwr_cli.register_nodes(self.layout, names, self.connection, env=self.group.env)

    def start_supernode(
        self,
        name: str,
        node_config: Mapping[str, commands.NodeConfigValue],
        *,
        key: str | None = None,
        root_certificates: Path | None = None,
        max_retries: int | None = None,
        max_wait_time: float | None = None,
        service_name: str | None = None,
    ) -> Service:
        """A SuperNode authenticating with key ``key`` (default: ``name``'s)."""
        argv = commands.supernode_command(
            superlink=self.superlink_address,
            root_certificates=root_certificates or self.layout.ca_cert,
            auth_key=self.layout.node(key or name).private,
            node_config=node_config,
            runtime_host=self.host,
            runtime_port=free_port(self.host),
            max_retries=max_retries,
            max_wait_time=max_wait_time,
        )
        sname = service_name or f"supernode-{name}"
        return self.group.start(sname, argv, env=commands.service_env(self.layout, sname))

    def start_hub(self, overrides: Sequence[str] = (), timeout: float = 90.0) -> Service:
        """The hub over HTTPS, reading the registry these settings name."""
        argv = commands.hub_command(
            self.layout, host=self.host, port=self.hub_port, overrides=overrides
        )
        service = self.group.start("hub", argv, env=commands.service_env(self.layout, "hub"))
        service.wait_for_port(self.host, self.hub_port, timeout)
        return service

    # ------------------------------------------------------------------ runs
    def submit_run(self, overrides: Sequence[str], *, run_name: str = "") -> int:
        return flwr_cli.submit_run(
            self.layout, self.connection, overrides, run_name=run_name, env=self.group.env
        )

    def run_status(self, run_id: int) -> str:
        return flwr_cli.run_status(self.layout, self.connection, run_id, env=self.group.env)

    def stop(self) -> None:
        self.group.stop_all()
