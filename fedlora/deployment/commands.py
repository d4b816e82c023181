"""The exact command lines of a fedlora deployment on Flower 1.41, built in one place.

``fedlora deploy`` runs them, ``--dry-run`` prints them, docs/deployment.md shows them and the
end-to-end test starts them: one builder per command keeps all four in agreement.

What Flower 1.41 expects (read from its ``--help`` and source):

* **SuperLink** — one HTTPS port (``--host/--port``) serves the Fleet API (SuperNodes), the
  Control API (``flwr`` CLI) and the Runtime API (its ServerApp process). TLS is on unless
  ``--insecure``; it needs ``--ssl-certfile``, ``--ssl-keyfile`` and ``--ssl-ca-certfile``.
  ``--enable-supernode-auth`` requires TLS and turns off self-registration: only nodes whose
  public key was registered with ``flwr supernode register`` may connect. Runtime
  dependency installation (``uv sync`` of the App's dependencies) is on by default and needs
  the network, so we turn it off: the hosts have fedlora installed.
* **SuperNode** — ``--superlink HOST:PORT`` (no scheme), ``--root-certificates CA.pem`` to
  verify the SuperLink, ``--auth-supernode-private-key`` (OpenSSH ECDSA), ``--node-config``
  (space-separated ``key=value``; fedlora reads ``partition-id`` or ``client-id`` and
  ``rank``), and its own local Runtime API (``--host/--port``, default 127.0.0.1:9094: give
  each SuperNode on one machine its own port).
* **flwr CLI** — ``flwr supernode register KEY.pub CONNECTION`` and ``flwr run APP_DIR
  CONNECTION --run-config FILE.toml``; connections come from ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.services import python_tool

NodeConfigValue = str | int | float | bool


def superlink_command(
    layout: DeploymentLayout,
    *,
    host: str = "127.0.0.1",
    port: int = 9092,
    node_auth: bool = True,
    database: Path | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS (the deployment's server certificate) and node auth."""
    argv = [
        python_tool("flower-superlink"),
        "--ssl-ca-certfile",
        str(layout.ca_cert),
        "--ssl-certfile",
        str(layout.server_cert),
        "--ssl-keyfile",
        str(layout.server_key),
        "--host",
        host,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if node_auth:
        argv.append("--enable-supernode-auth")
    if database is not None:
        argv += ["--database", str(database)]
    return argv


def node_config_arg(config: Mapping[str, NodeConfigValue]) -> str:
    """``--node-config`` value: space-separated ``key=value`` with strings quoted (TOML)."""
    parts = []
    for key, value in config.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"invalid node-config key {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            if '"' in value or any(c.isspace() for c in value):
                raise ValueError(f"node-config value {value!r} may not hold quotes or spaces")
            text = f'"{value}"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(
    *,
    superlink: str,
    root_certificates: Path,
    auth_key: Path | None,
    node_config: Mapping[str, NodeConfigValue],
    runtime_host: str = "127.0.0.1",
    runtime_port: int = 9094,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> list[str]:
    """``flower-supernode`` over TLS, authenticating with ``auth_key`` when given."""
    argv = [
        python_tool("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(root_certificates),
    ]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    if node_config:
        argv += ["--node-config", node_config_arg(node_config)]
    argv += ["--host", runtime_host, "--port", str(runtime_port)]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    return argv


def register_command(public_key: Path, connection: str) -> list[str]:
    """``flwr supernode register`` (JSON output carries the node id)."""
    return [
        python_tool("flwr"),
        "supernode",
        "register",
        str(public_key),
        connection,
        "--format",
        "json",
    ]


def run_command(app_dir: Path, connection: str, run_config: Path) -> list[str]:
    """``flwr run`` of the fedlora App with a run-config file (JSON output has the run id)."""
    return [
        python_tool("flwr"),
        "run",
        str(app_dir),
        connection,
        "--run-config",
        str(run_config),
        "--format",
        "json",
    ]


def list_runs_command(connection: str, run_id: int | None = None) -> list[str]:
    argv = [python_tool("flwr"), "ls", connection, "--format", "json"]
    if run_id is not None:
        argv += ["--run-id", str(run_id)]
    return argv


def hub_command(
    layout: DeploymentLayout,
    *,
    host: str = "127.0.0.1",
    port: int = 8443,
    overrides: Sequence[str] = (),
) -> list[str]:
    """The hub over HTTPS with the deployment's server certificate (``fedlora deploy hub``)."""
    argv = [
        sys.executable,
        "-m",
        "fedlora.cli.deploy",
        "hub",
        "--dir",
        str(layout.root),
        "--host",
        host,
        "--port",
        str(port),
    ]
    for item in overrides:
        argv += ["--set", item]
    return argv


def service_env(
    layout: DeploymentLayout, service: str, *, signing_key: bool = False
) -> dict[str, str]:
    """Environment additions for one service of a deployment.

    Each service gets its own ``FLWR_HOME`` (Flower unpacks the App there; two SuperNodes on
    one machine must not share it) and Flower's telemetry and update check are off (they call
    out to the internet). Only server-side services (``signing_key=True``: the SuperLink,
    whose ServerApp signs, and the hub) learn where the adapter-signing key is — never a
    SuperNode.
    """
    env = {
        "FLWR_HOME": str(layout.root / "homes" / service),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    if signing_key:
        env["FEDLORA_SIGNING_KEY"] = str(layout.signing_key)
    return env


def cli_env(layout: DeploymentLayout) -> dict[str, str]:
    """Environment of ``flwr`` CLI calls: the deployment's connection file, no telemetry."""
    return {
        "FLWR_HOME": str(layout.flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
