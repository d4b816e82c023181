"""Calling the ``flwr`` CLI for a deployment: register SuperNodes, submit and watch runs.

We drive Flower's own CLI (with ``--format json``) instead of its internal Control API
client: the CLI is Flower's supported interface, so what our commands do is exactly what an
operator would type, and a Flower upgrade that changes internals does not break us.
Every call runs with ``FLWR_HOME`` pointing into the deployment directory (see
:mod:`fedlora.deployment.flower_config`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fedlora.deployment import commands
from fedlora.deployment.flower_app import write_flower_app
from fedlora.deployment.flower_config import write_run_config
from fedlora.deployment.layout import DeploymentLayout
from fedlora.errors import FedloraError

CLI_TIMEOUT_S = 120.0


class FlwrCliError(FedloraError, RuntimeError):
    """A ``flwr`` command failed; the message carries its output."""


def json_from_output(text: str) -> Any:
    """The JSON object a ``flwr … --format json`` command printed (after any banners)."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the output")
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    return obj


def _env(layout: DeploymentLayout, base: Mapping[str, str] | None) -> dict[str, str]:
    return {**(os.environ if base is None else base), **commands.cli_env(layout)}


def flwr_json(
    layout: DeploymentLayout,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> dict[str, Any]:
    """Run one ``flwr … --format json`` command; its JSON object, or :class:`FlwrCliError`."""
    proc = subprocess.run(
        list(argv),
        env=_env(layout, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    try:
        data = json_from_output(proc.stdout)
    except ValueError:
        data = None
    if proc.returncode != 0 or not isinstance(data, dict) or data.get("success") is False:
        out = (proc.stdout + proc.stderr)[-3000:]
        raise FlwrCliError(f"`{' '.join(argv[:3])} …` failed (exit {proc.returncode}):\n{out}")
    return data


def register_nodes(
    layout: DeploymentLayout,
    names: Sequence[str],
    connection: str,
    *,
    env: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Register SuperNode public keys (in parallel: each call starts a Python); name -> id.

    Each id is also recorded in the deployment's ``registered.json``.
    """
    procs = {
        name: subprocess.Popen(
            commands.register_command(layout.node(name).public, connection),
            env=_env(layout, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for name in names
    }
    ids: dict[str, int] = {}
    failures: list[str] = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
        try:
            node_id = int(json_from_output(out)["node-id"])
        except (ValueError, KeyError, TypeError):
            failures.append(f"{name}:\n{out[-1500:]}")
            continue
        layout.record_registration(name, node_id)
        ids[name] = node_id
    if failures:
        raise FlwrCliError("registering SuperNodes failed for " + "\n".join(failures))
    return ids


def submit_run(
    layout: DeploymentLayout,
    connection: str,
    overrides: Sequence[str],
    *,
    run_name: str = "",
    env: Mapping[str, str] | None = None,
) -> int:
    """``flwr run`` the fedlora App with these settings; the Flower run id."""
    app_dir = write_flower_app(layout.root / "flower-app")
    run_config = write_run_config(layout.root / "run-config.toml", overrides, run_name=run_name)
    data = flwr_json(layout, commands.run_command(app_dir, connection, run_config), env=env)
    return int(data["run-id"])


def run_status(
    layout: DeploymentLayout,
    connection: str,
    run_id: int,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Flower's status of a run: ``pending``, ``running``, ``finished:completed``, …"""
    data = flwr_json(layout, commands.list_runs_command(connection, run_id), env=env)
    for run in data.get("runs", []):
        if int(run.get("run-id", -1)) == run_id:
            return str(run.get("status", ""))
    raise FlwrCliError(f"run {run_id} is not known to the SuperLink")


def wait_run(
    layout: DeploymentLayout,
    connection: str,
    run_id: int,
    timeout: float,
    *,
    poll: float = 5.0,
    env: Mapping[str, str] | None = None,
) -> str:
    """Block until the run finishes; its final status (``finished:…``)."""
    deadline = time.monotonic() + timeout
    while True:
        status = run_status(layout, connection, run_id, env=env)
        if status.startswith("finished"):
            return status
        if time.monotonic() > deadline:
            raise FlwrCliError(f"run {run_id} still {status!r} after {timeout:.0f} s")
        time.sleep(poll)
