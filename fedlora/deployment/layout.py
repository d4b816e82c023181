"""Where a deployment keeps its keys, certificates and Flower CLI state: one directory.

Every command (``fedlora keys …``, ``fedlora deploy …``) and the tests take the same
``--dir`` and find each file here, so nobody passes eight paths around::

    DIR/certs/ca.pem            CA certificate      — pinned by phones, SuperNodes, flwr CLI
    DIR/certs/ca.key            CA private key      — 0600; keep it offline after issuing
    DIR/certs/server.pem        server certificate  — SuperLink and hub present it
    DIR/certs/server.key        server private key  — 0600
    DIR/nodes/NAME              SuperNode auth key  — 0600, copied to that phone only
    DIR/nodes/NAME.pub          its public key      — registered with the SuperLink
    DIR/signing/signing_key.pem adapter-signing key — 0600, only the ServerApp reads it
    DIR/signing/signing_key.pub.pem                 — pinned by phones and native apps
    DIR/flwr-home/config.toml   Flower CLI connection (FLWR_HOME), written by us
    DIR/registered.json         node name -> SuperLink node id, written on registration
    DIR/logs/                   service logs of ``fedlora deploy local``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedlora.deployment.files import write_file
from fedlora.deployment.node_keys import NodeKeyFiles


@dataclass(frozen=True)
class DeploymentLayout:
    """Paths inside one deployment directory (nothing is created by constructing it)."""

    root: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.certs / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.certs / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.certs / "server.key"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes"

    def node(self, name: str) -> NodeKeyFiles:
        return NodeKeyFiles.at(self.nodes, name)

    def node_names(self) -> list[str]:
        """Names of the SuperNode key pairs present (both halves), sorted."""
        if not self.nodes.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.nodes.glob("*.pub")
            if (self.nodes / p.stem).is_file() and not p.stem.startswith(".")
        )

    @property
    def signing_key(self) -> Path:
        return self.root / "signing" / "signing_key.pem"

    @property
    def signing_public_key(self) -> Path:
        return self.root / "signing" / "signing_key.pub.pem"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def registered_file(self) -> Path:
        return self.root / "registered.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    # ------------------------------------------------------------------ registrations
    def registered(self) -> dict[str, int]:
        """Node name -> node id of every SuperNode registered through ``fedlora deploy``."""
        if not self.registered_file.exists():
            return {}
        raw = json.loads(self.registered_file.read_text())
        return {str(k): int(v) for k, v in raw.items()}

    def record_registration(self, name: str, node_id: int) -> None:
        data = self.registered()
        data[name] = node_id
        write_file(
            self.registered_file,
            json.dumps(data, indent=2, sort_keys=True).encode(),
            secret=False,
            overwrite=True,
        )
