"""``fedlora keys …``: every key and certificate a deployment needs, in one directory.

Three kinds of secrets, three jobs (see docs/deployment.md):

* **TLS** — a private CA and the server certificate the SuperLink and hub present; phones
  pin the CA (``fedlora keys tls``);
* **SuperNode authentication** — one ECDSA key pair per phone; the public half is registered
  with the SuperLink, the private half stays on the phone (``fedlora keys node``);
* **adapter signing** — the Ed25519 key the ServerApp signs community adapters with; phones
  pin its public half and refuse anything it did not sign (``fedlora keys signing``).

``fedlora keys init`` makes all of them; existing keys are kept unless ``--force`` (a new CA
or signing key locks out every phone that pinned the old one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import console, friendly_errors
from fedlora.deployment.layout import DeploymentLayout

app = typer.Typer(
    help="Generate TLS certificates, SuperNode keys and the adapter-signing key.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DirOpt = Annotated[
    Path, typer.Option("--dir", "-d", help="Deployment directory (created if missing).")
]
HostsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="Host name or IP the server certificate must cover (repeatable; default "
        "127.0.0.1 and localhost).",
    ),
]
DaysOpt = Annotated[int, typer.Option(min=1, max=36500, help="Server certificate lifetime.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace existing files.")]


def _say(text: str) -> None:
    console.print(text, markup=False, soft_wrap=True, highlight=False)


def _layout(directory: Path) -> DeploymentLayout:
    return DeploymentLayout(directory.expanduser().resolve())


def _hosts(hosts: list[str] | None) -> list[str]:
    from fedlora.deployment.tls import DEFAULT_HOSTS

    out: list[str] = []
    for item in hosts or list(DEFAULT_HOSTS):
        out.extend(h.strip() for h in item.split(",") if h.strip())
    return out


def make_tls(
    layout: DeploymentLayout, hosts: list[str], days: int, force: bool, new_ca: bool
) -> None:
    from fedlora.deployment.files import KeyFileExists
    from fedlora.deployment.pki import init_tls
    from fedlora.deployment.tls import Validity, certificate_from_pem, summarize

    try:
        material = init_tls(
            layout,
            hosts,
            server_validity=Validity.for_days(days),
            overwrite=force,
            new_ca=new_ca,
        )
    except KeyFileExists:
        if force or not layout.server_cert.exists():
            raise
        cert = summarize(certificate_from_pem(layout.server_cert.read_bytes()))
        _say(f"kept server certificate {layout.server_cert}: {cert.describe()}")
        return
    _say(f"CA      {layout.ca_cert}: {material.ca.describe()}")
    _say(f"server  {layout.server_cert}: {material.server.describe()}")


def make_nodes(layout: DeploymentLayout, names: list[str], force: bool) -> None:
    from fedlora.deployment.files import KeyFileExists
    from fedlora.deployment.node_keys import fingerprint, load_node_public_key, write_node_key

    for name in names:
        try:
            files, fp = write_node_key(layout.nodes, name, overwrite=force)
            _say(f"node    {name}: {files.private} (+ .pub) {fp}")
        except KeyFileExists:
            fp = fingerprint(load_node_public_key(layout.node(name).public))
            _say(f"kept node key {name}: {fp}")


def make_signing(layout: DeploymentLayout, force: bool) -> None:
    from fedlora.deployment.files import write_file
    from fedlora.privacy.signing import key_id, public_key_to_pem
    from fedlora.server.keys import load_or_create_signing_key

    if force:
        layout.signing_key.unlink(missing_ok=True)
    existed = layout.signing_key.exists()
    pub = load_or_create_signing_key(layout.signing_key).public_key()
    write_file(layout.signing_public_key, public_key_to_pem(pub), secret=False, overwrite=True)
    verb = "kept" if existed else "signing"
    _say(f"{verb} {layout.signing_key} (public: {layout.signing_public_key}) key id {key_id(pub)}")


@app.command("init")
def init(
    directory: DirOpt,
    host: HostsOpt = None,
    nodes: Annotated[
        int, typer.Option(min=0, max=10_000, help="SuperNode key pairs phone-0 … phone-(N-1).")
    ] = 3,
    days: DaysOpt = 365,
    force: ForceOpt = False,
) -> None:
    """CA + server certificate, N SuperNode key pairs and the adapter-signing key."""
    layout = _layout(directory)
    with friendly_errors():
        make_tls(layout, _hosts(host), days, force, new_ca=force)
        make_nodes(layout, [f"phone-{i}" for i in range(nodes)], force)
        make_signing(layout, force)
    _say(
        f"\nnext: copy {layout.ca_cert} and {layout.signing_public_key} to every phone, and "
        f"each {layout.nodes}/NAME to that phone only; register the .pub files "
        "(`fedlora deploy register`)."
    )


@app.command("tls")
def tls(
    directory: DirOpt,
    host: HostsOpt = None,
    days: DaysOpt = 365,
    force: Annotated[bool, typer.Option("--force", help="Re-issue the server cert.")] = False,
    new_ca: Annotated[
        bool, typer.Option("--new-ca", help="Also replace the CA (phones must re-pin it).")
    ] = False,
) -> None:
    """The CA (reused if present) and a server certificate for the given hosts."""
    with friendly_errors():
        make_tls(_layout(directory), _hosts(host), days, force, new_ca)


@app.command("node")
def node(
    names: Annotated[list[str], typer.Argument(help="SuperNode key names (e.g. phone-7).")],
    directory: DirOpt,
    force: ForceOpt = False,
) -> None:
    """SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)."""
    with friendly_errors():
        make_nodes(_layout(directory), names, force)


@app.command("signing")
def signing(directory: DirOpt, force: ForceOpt = False) -> None:
    """The Ed25519 adapter-signing key (kept if present) and its public half for pinning."""
    with friendly_errors():
        make_signing(_layout(directory), force)


@app.command("show")
def show(
    directory: DirOpt,
    host: Annotated[
        list[str] | None, typer.Option("--host", help="Check the server cert for this host.")
    ] = None,
) -> None:
    """What is in a deployment directory, and whether the server certificate still works."""
    from fedlora.deployment.node_keys import fingerprint, load_node_public_key
    from fedlora.deployment.tls import (
        certificate_from_pem,
        check_server_certificate,
        summarize,
    )
    from fedlora.privacy.signing import key_id, public_key_from_pem

    layout = _layout(directory)
    problems = 0
    with friendly_errors():
        ca = certificate_from_pem(layout.ca_cert.read_bytes())
        _say(f"CA      {summarize(ca).describe()}")
        if layout.server_cert.exists():
            cert = certificate_from_pem(layout.server_cert.read_bytes())
            summary = summarize(cert)
            _say(f"server  {summary.describe()}")
            for h in _hosts(host) if host else list(summary.hosts):
                for p in check_server_certificate(cert, ca, h):
                    problems += 1
                    _say(f"  PROBLEM for {h}: {p}")
        registered = layout.registered()
        for name in layout.node_names():
            fp = fingerprint(load_node_public_key(layout.node(name).public))
            node_id = registered.get(name)
            state = f"registered as node {node_id}" if node_id else "not registered"
            _say(f"node    {name}: {fp} ({state})")
        if layout.signing_public_key.exists():
            pub = public_key_from_pem(layout.signing_public_key.read_bytes())
            _say(f"signing key id {key_id(pub)} ({layout.signing_public_key})")
    if problems:
        raise typer.Exit(1)
