"""``fedlora deploy …``: run a real deployment — SuperLink, SuperNodes, hub — over TLS.

Each service command starts one service with the command line that docs/deployment.md
documents (``--dry-run`` prints it instead), reading keys and certificates from the
deployment directory that ``fedlora keys init`` made. ``fedlora deploy local`` starts all of
them on loopback, runs a federation and stops everything: the quickest way to see the whole
system work. ``fedlora deploy fetch`` is the phone's side of the hub: download over TLS,
verify the signature against the pinned key, write a PEFT directory.

Runs alone as ``python -m fedlora.cli.deploy`` (the hub service is started that way, so a
deployment works before this sub-app is mounted in the main CLI).
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import console, friendly_errors
from fedlora.deployment import commands
from fedlora.deployment.flower_config import DEFAULT_CONNECTION
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.local import LocalDeployment

app = typer.Typer(
    help="Run SuperLink, SuperNodes and the hub over TLS with node authentication.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Keeps the commands as sub-commands even when this module runs alone."""


DirOpt = Annotated[
    Path,
    typer.Option("--dir", "-d", help="Deployment directory (made by `fedlora keys init`)."),
]
HostOpt = Annotated[str, typer.Option(help="Bind address.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="fedlora setting section.key=value. Repeatable."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the command, run nothing.")]
ConnOpt = Annotated[str, typer.Option(help="Name of the flwr CLI SuperLink connection.")]
SuperLinkOpt = Annotated[
    str | None,
    typer.Option("--superlink", help="SuperLink HOST:PORT (writes the flwr CLI connection)."),
]


def _layout(directory: Path) -> DeploymentLayout:
    return DeploymentLayout(directory.expanduser().resolve())


def _say(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True)


def _exec(argv: list[str], env_extra: dict[str, str], dry_run: bool) -> None:
    """Replace this process with ``argv`` so signals reach the service itself."""
    if dry_run:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_extra.items())
        _say(f"{prefix} {shlex.join(argv)}".strip())
        return
    os.execvpe(argv[0], argv, {**os.environ, **env_extra})


def _connect(layout: DeploymentLayout, superlink: str | None, connection: str) -> None:
    from fedlora.deployment.flower_config import write_superlink_connection

    if superlink is not None:
        write_superlink_connection(layout.flwr_home, superlink, layout.ca_cert, name=connection)
    elif not (layout.flwr_home / "config.toml").exists():
        raise FileNotFoundError(
            f"no flwr connection in {layout.flwr_home}: pass --superlink HOST:PORT "
            "(or start the SuperLink with `fedlora deploy superlink`, which writes it)"
        )


# ---------------------------------------------------------------------------- services
@app.command("superlink")
def superlink(
    directory: DirOpt,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The one HTTPS port (Fleet, Control, Runtime).")] = 9092,
    address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT the flwr CLI should use (default: --host:--port)."),
    ] = None,
    node_auth: Annotated[bool, typer.Option(help="Only registered SuperNodes may connect.")] = True,
    connection: ConnOpt = DEFAULT_CONNECTION,
    dry_run: DryRunOpt = False,
) -> None:
    """Run the SuperLink (TLS with the deployment's server certificate, node auth on)."""
    from fedlora.deployment.flower_config import write_superlink_connection

    layout = _layout(directory)
    argv = commands.superlink_command(layout, host=host, port=port, node_auth=node_auth)
    env = commands.service_env(layout, "superlink", signing_key=True)
    if not dry_run:
        with friendly_errors():
            for needed in (layout.ca_cert, layout.server_cert, layout.server_key):
                if not needed.exists():
                    raise FileNotFoundError(f"{needed} is missing: run `fedlora keys init`")
            cli_address = address or f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            write_superlink_connection(
                layout.flwr_home, cli_address, layout.ca_cert, name=connection
            )
    _exec(argv, env, dry_run)


@app.command("register")
def register(
    names: Annotated[list[str], typer.Argument(help="SuperNode key names (nodes/NAME.pub).")],
    directory: DirOpt,
    superlink: SuperLinkOpt = None,
    connection: ConnOpt = DEFAULT_CONNECTION,
) -> None:
    """Register SuperNode public keys with the SuperLink; prints the node ids."""
    from fedlora.deployment.flwr_cli import register_nodes

    layout = _layout(directory)
    with friendly_errors():
        _connect(layout, superlink, connection)
        for name in names:
            if not layout.node(name).public.exists():
                raise FileNotFoundError(f"no key {layout.node(name).public}: `fedlora keys node`")
        ids = register_nodes(layout, names, connection)
    for name, node_id in ids.items():
        _say(f"{name}: node {node_id}")


@app.command("supernode")
def supernode(
    name: Annotated[str, typer.Argument(help="This phone's key name (nodes/NAME).")],
    directory: DirOpt,
    superlink: Annotated[str, typer.Option(help="SuperLink HOST:PORT.")] = "127.0.0.1:9092",
    partition_id: Annotated[
        int | None, typer.Option(help="Synthetic data partition (demos, tests).")
    ] = None,
    client_id: Annotated[str | None, typer.Option(help="Whose data (data.source).")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="Highest LoRA rank it trains.")] = None,
    runtime_port: Annotated[int, typer.Option(help="Local Runtime API port.")] = 9094,
    dry_run: DryRunOpt = False,
) -> None:
    """Run a SuperNode: TLS against the deployment CA, authenticated with nodes/NAME."""
    layout = _layout(directory)
    node_config: dict[str, commands.NodeConfigValue] = {}
    if partition_id is not None:
        node_config["partition-id"] = partition_id
    if client_id is not None:
        node_config["client-id"] = client_id
    if rank is not None:
        node_config["rank"] = rank
    argv = commands.supernode_command(
        superlink=superlink,
        root_certificates=layout.ca_cert,
        auth_key=layout.node(name).private,
        node_config=node_config,
        runtime_port=runtime_port,
    )
    _exec(argv, commands.service_env(layout, f"supernode-{name}"), dry_run)


@app.command("hub")
def hub(
    directory: DirOpt,
    host: HostOpt = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port.")] = 8443,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the hub over HTTPS with the deployment's server certificate.

    It reads only the adapter-signing *public* key: the hub serves what the ServerApp signed
    and can sign nothing itself, so a compromised hub cannot forge adapters.
    """
    import uvicorn

    from fedlora.config import load_settings
    from fedlora.privacy.signing import public_key_from_pem
    from fedlora.server.hub import create_app
    from fedlora.server.registry import Registry

    layout = _layout(directory)
    with friendly_errors():
        settings = load_settings(config, set_ or [])
        pub = public_key_from_pem(layout.signing_public_key.read_bytes())
        registry = Registry.open(settings.server)
        application = create_app(registry, public_key=pub)
    _say(f"fedlora hub on https://{host}:{port}/ (certificate {layout.server_cert})")
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level,
        ssl_certfile=str(layout.server_cert),
        ssl_keyfile=str(layout.server_key),
        proxy_headers=False,
    )


# ---------------------------------------------------------------------------- runs
@app.command("run")
def run(
    directory: DirOpt,
    set_: SetOpt = None,
    run_name: Annotated[str, typer.Option(help="Run name in the registry.")] = "",
    superlink: SuperLinkOpt = None,
    connection: ConnOpt = DEFAULT_CONNECTION,
    wait: Annotated[bool, typer.Option(help="Wait until the run finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="--wait limit in seconds.")] = 3600.0,
) -> None:
    """Submit a federated run (`flwr run` of the fedlora App) with these settings."""
    from fedlora.config import load_settings
    from fedlora.deployment.flwr_cli import submit_run, wait_run

    layout = _layout(directory)
    with friendly_errors():
        load_settings(None, set_ or [])  # refuse a bad setting here, not on every phone
        _connect(layout, superlink, connection)
        run_id = submit_run(layout, connection, set_ or [], run_name=run_name)
        _say(f"started run {run_id}")
        if wait:
            _say(f"run {run_id}: {wait_run(layout, connection, run_id, timeout)}")


@app.command("status")
def status(
    run_id: Annotated[int, typer.Argument(help="Flower run id.")],
    directory: DirOpt,
    connection: ConnOpt = DEFAULT_CONNECTION,
) -> None:
    """Flower's status of a run (pending, running, finished:completed, …)."""
    from fedlora.deployment.flwr_cli import run_status

    with friendly_errors():
        _say(run_status(_layout(directory), connection, run_id))


# ---------------------------------------------------------------------------- phone side
@app.command("fetch")
def fetch(
    hub_url: Annotated[str, typer.Argument(help="Hub base URL, e.g. https://10.0.0.2:8443.")],
    out: Annotated[Path, typer.Option(help="Directory for adapter + PEFT directory.")],
    ca: Annotated[Path, typer.Option(help="The deployment CA certificate (PEM).")],
    pin: Annotated[
        list[Path], typer.Option(help="Pinned signing public key(s) (PEM). Repeatable.")
    ],
    rank: Annotated[int | None, typer.Option(min=1, help="The rank this phone trains.")] = None,
    run: Annotated[int | None, typer.Option(min=1, help="Registry run id (default: any).")] = None,
) -> None:
    """Download the latest community adapter over TLS, verify it, write a PEFT directory.

    Refuses (exit 2) a TLS certificate not issued by the CA, and an adapter whose Ed25519
    signature does not verify under a pinned key; nothing is written then.
    """
    with friendly_errors():
        _say(fetch_verified(hub_url, out, ca_cert=ca, pinned=pin, rank=rank, run=run))


def fetch_verified(
    hub_url: str,
    out: Path,
    *,
    ca_cert: Path,
    pinned: list[Path],
    rank: int | None,
    run: int | None = None,
) -> str:
    """The phone's download path; returns a one-line summary (or raises, writing nothing).

    Order matters: TLS (CA) → signature under a pinned key → only then anything on disk.
    The PEFT directory is made from the *verified* adapter, so what PEFT loads is exactly
    what the server signed. A conditional GET (the ETag of what ``out`` holds) makes an
    unchanged adapter cost one 304.
    """
    import shutil
    import tempfile

    from fedlora.adapter_io import atomic_write_bytes, save_peft_dir
    from fedlora.deployment.hub_client import HubClient
    from fedlora.privacy.signing import (
        AdapterSignature,
        SignatureError,
        SignatureFailure,
        load_verified,
        public_key_from_pem,
    )

    keys = [public_key_from_pem(p.read_bytes()) for p in pinned]
    blob, etag_file = out / "adapter.safetensors", out / "adapter.etag"
    etag = etag_file.read_text().strip() if blob.exists() and etag_file.exists() else None
    download = HubClient(hub_url, ca_cert).latest(rank, etag=etag, run=run)
    if download.not_modified:
        return f"up to date ({etag})"
    raw_sig = download.signature_json
    if raw_sig is None:
        raise SignatureError(SignatureFailure.MISSING, "the hub sent no X-Fedlora-Signature")
    signature = AdapterSignature.from_json(raw_sig)
    adapter = load_verified(download.body, signature, keys)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".peft-") as tmp:
        staged = save_peft_dir(adapter, Path(tmp) / "peft")
        shutil.rmtree(out / "peft", ignore_errors=True)
        staged.rename(out / "peft")
    atomic_write_bytes(blob, download.body)
    atomic_write_bytes(out / "adapter.sig.json", signature.to_json().encode())
    atomic_write_bytes(etag_file, (download.etag or "").encode())
    meta = adapter.meta
    return (
        f"verified v{download.header('X-Fedlora-Version')} (round {meta.round}, rank "
        f"{adapter.max_rank}, key {signature.key_id}) -> {out / 'peft'}"
    )


# ---------------------------------------------------------------------------- all of it
LOCAL_TUNING = {
    # several SuperNodes share a few cores here: one BLAS/OpenMP thread each
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # SuperExec asks for new work every second by default; loopback can afford 0.2 s
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}


@app.command("local")
def local(
    directory: DirOpt,
    nodes: Annotated[int, typer.Option(min=2, max=16, help="SuperNodes to start.")] = 3,
    set_: SetOpt = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 1800.0,
) -> None:
    """Everything on loopback: keys (if missing), SuperLink, hub, N SuperNodes, one run.

    Stops every service at the end (also on Ctrl-C). Logs are in DIR/logs.
    """
    from fedlora.cli.keys import make_nodes, make_signing, make_tls

    layout = _layout(directory)
    names = [f"phone-{i}" for i in range(nodes)]
    registry = [
        f'server.database_url="sqlite:///{layout.root / "registry.db"}"',
        f'server.blob_dir="{layout.root / "blobs"}"',
    ]
    overrides = [*registry, f"data.num_clients={nodes}", *(set_ or [])]
    ranks = (4, 8, 16)
    with friendly_errors():
        make_tls(layout, ["127.0.0.1", "localhost"], 365, force=False, new_ca=False)
        make_nodes(layout, names, force=False)
        make_signing(layout, force=False)
        dep = LocalDeployment.create(layout, env={**os.environ, **LOCAL_TUNING})
        try:
            started = time.monotonic()
            dep.start_superlink()
            _say(f"SuperLink https://{dep.superlink_address} (node auth on)")
            for name, node_id in dep.register(names).items():
                _say(f"registered {name} as node {node_id}")
            dep.start_hub(overrides)
            _say(f"hub {dep.hub_url}")
            for i, name in enumerate(names):
                dep.start_supernode(name, {"partition-id": i, "rank": ranks[i % len(ranks)]})
            # a fresh name: the registry resumes a run of the same name instead of starting over
            run_name = time.strftime("local-%Y%m%d-%H%M%S")
            run_id = dep.submit_run(overrides, run_name=run_name)
            _say(f"run {run_id} submitted; logs in {layout.logs}")
            final = _wait_local(dep, run_id, timeout)
            _say(f"run {run_id}: {final} after {time.monotonic() - started:.0f} s")
            _print_rounds(dep, run_name)
        finally:
            dep.stop()
    if not final.endswith("completed"):
        raise typer.Exit(1)


def _print_rounds(dep: LocalDeployment, run_name: str) -> None:
    """The rounds of ``run_name`` as the hub reports them (over HTTPS, CA-verified)."""
    from fedlora.deployment.hub_client import HubClient

    hub = HubClient(dep.hub_url, dep.layout.ca_cert)
    for run in hub.json("/v1/runs"):
        if run["name"] != run_name:
            continue
        for r in hub.json(f"/v1/runs/{run['id']}/rounds"):
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
            why = f" ({r['failure_reason']})" if r["failure_reason"] else ""
            _say(
                f"round {r['number']}: {r['status']}{why}, {r['participants']} phones, "
                f"{(r['duration_s'] or 0):.1f} s [{parts}]"
            )


def _wait_local(dep: LocalDeployment, run_id: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = dep.run_status(run_id)
        if state.startswith("finished"):
            return state
        dep.group.snapshot()
        time.sleep(5)
    return "timed out"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
