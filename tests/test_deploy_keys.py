"""Keys, certificates and the files Flower reads — checked with Flower's and Python's own
loaders, so that what we generate is what the real tools accept (fast, no services)."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora.deployment import commands
from fedlora.deployment.files import KeyFileExists, write_file
from fedlora.deployment.flower_app import PYPROJECT, write_flower_app
from fedlora.deployment.flower_config import (
    fedlora_set_value,
    run_config_toml,
    write_superlink_connection,
)
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.node_keys import (
    fingerprint,
    load_node_private_key,
    load_node_public_key,
    write_node_key,
)
from fedlora.deployment.pki import init_tls, issue_server
from fedlora.deployment.tls import (
    CertificateError,
    Validity,
    certificate_from_pem,
    check_server_certificate,
    subject_alt_names,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tls_material_is_a_ca_and_a_server_cert_for_the_hosts(tmp_path: Path) -> None:
    layout = DeploymentLayout(tmp_path)
    material = init_tls(layout, ["127.0.0.1", "localhost", "fl.example.org"])
    assert material.ca.is_ca and not material.server.is_ca
    assert set(material.server.hosts) == {"127.0.0.1", "localhost", "fl.example.org"}
    assert _mode(layout.ca_key) == 0o600 and _mode(layout.server_key) == 0o600
    assert _mode(layout.ca_cert) == 0o644 and _mode(layout.server_cert) == 0o644
    ca = certificate_from_pem(layout.ca_cert.read_bytes())
    server = certificate_from_pem(layout.server_cert.read_bytes())
    for host in ("127.0.0.1", "localhost", "fl.example.org"):
        assert check_server_certificate(server, ca, host) == []
    # Python's TLS stack (what uvicorn, httpx and the SuperNode use) accepts the pair
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(layout.server_cert, layout.server_key)
    ssl.create_default_context(cafile=str(layout.ca_cert))


def test_certificate_problems_are_named(tmp_path: Path) -> None:
    layout = DeploymentLayout(tmp_path / "a")
    init_tls(layout)
    ca = certificate_from_pem(layout.ca_cert.read_bytes())
    server = certificate_from_pem(layout.server_cert.read_bytes())
    assert "does not name host '10.0.0.7'" in " ".join(
        check_server_certificate(server, ca, "10.0.0.7")
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert any("expired" in p for p in check_server_certificate(server, ca, "127.0.0.1", at=later))
    other = DeploymentLayout(tmp_path / "b")
    init_tls(other)
    other_ca = certificate_from_pem(other.ca_cert.read_bytes())
    assert any(
        "not issued by" in p for p in check_server_certificate(server, other_ca, "localhost")
    )
    issue_server(layout, ["127.0.0.1"], validity=Validity.expired(), overwrite=True)
    expired = certificate_from_pem(layout.server_cert.read_bytes())
    assert any("expired" in p for p in check_server_certificate(expired, ca, "127.0.0.1"))


def test_existing_keys_are_kept_unless_forced(tmp_path: Path) -> None:
    layout = DeploymentLayout(tmp_path)
    init_tls(layout)
    ca_before = layout.ca_cert.read_bytes()
    with pytest.raises(KeyFileExists):
        init_tls(layout)
    init_tls(layout, overwrite=True)  # re-issues the server cert, keeps the CA
    assert layout.ca_cert.read_bytes() == ca_before
    init_tls(layout, new_ca=True)
    assert layout.ca_cert.read_bytes() != ca_before
    with pytest.raises(KeyFileExists):
        write_file(layout.ca_key, b"x", secret=True)


def test_bad_hosts_and_lifetimes_are_refused() -> None:
    with pytest.raises(CertificateError):
        subject_alt_names([])
    with pytest.raises(CertificateError):
        subject_alt_names([" "])
    with pytest.raises(CertificateError):
        Validity.for_days(0)


def test_node_keys_are_what_flower_loads(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    files, fp = write_node_key(tmp_path, "phone-7")
    assert _mode(files.private) == 0o600 and _mode(files.public) == 0o644
    assert try_load_public_key(files.public)  # `flwr supernode register` reads this
    private = load_ssh_private_key(files.private.read_bytes(), None)  # flower-supernode
    assert private.public_key() == load_node_public_key(files.public)
    assert fingerprint(load_node_private_key(files.private).public_key()) == fp
    assert fp.startswith("SHA256:")
    with pytest.raises(KeyFileExists):
        write_node_key(tmp_path, "phone-7")


def test_connection_file_is_what_the_flwr_cli_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    layout = DeploymentLayout(tmp_path)
    init_tls(layout)
    write_superlink_connection(layout.flwr_home, "127.0.0.1:9092", layout.ca_cert)
    monkeypatch.setenv("FLWR_HOME", str(layout.flwr_home))
    conn = read_superlink_connection(None)
    assert conn.address == "127.0.0.1:9092"
    assert conn.root_certificates == str(layout.ca_cert.resolve())
    assert not conn.insecure


def test_run_config_and_node_config_survive_flowers_parser(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    overrides = ['server.database_url="sqlite:////tmp/x.db"', "privacy.noise='distributed'"]
    path = tmp_path / "run.toml"
    path.write_text(run_config_toml(overrides, run_name="r1"))
    parsed = parse_config_args([str(path)])
    assert parsed["fedlora-set"] == fedlora_set_value(overrides)
    assert parsed["fedlora-run"] == "r1"
    from fedlora.config import load_settings

    split = [s for s in str(parsed["fedlora-set"]).split(";") if s.strip()]
    assert load_settings(None, split).privacy.noise == "distributed"
    with pytest.raises(ValueError):
        fedlora_set_value(["a.b=1;c.d=2"])

    arg = commands.node_config_arg({"partition-id": 3, "rank": 8, "client-id": "alice"})
    assert parse_config_args([arg]) == {"partition-id": 3, "rank": 8, "client-id": "alice"}
    with pytest.raises(ValueError):
        commands.node_config_arg({"client-id": "has space"})


def test_flower_app_is_valid_and_matches_the_checked_in_copy(tmp_path: Path) -> None:
    from flwr.cli.config_utils import load_and_validate

    assert (ROOT / "deploy" / "flower-app" / "pyproject.toml").read_text() == PYPROJECT
    app_dir = write_flower_app(tmp_path / "app")
    config, _ = load_and_validate(app_dir / "pyproject.toml")
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "fedlora.server.app:app",
        "clientapp": "fedlora.client.app:app",
    }
    assert set(config["tool"]["flwr"]["app"]["config"]) == {
        "fedlora-config",
        "fedlora-set",
        "fedlora-run",
    }


def test_commands_use_tls_and_node_auth(tmp_path: Path) -> None:
    layout = DeploymentLayout(tmp_path)
    link = commands.superlink_command(layout, host="0.0.0.0", port=9092)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-certfile") + 1] == str(layout.server_cert)
    assert "--disable-runtime-dependency-installation" in link
    node = commands.supernode_command(
        superlink="10.0.0.2:9092",
        root_certificates=layout.ca_cert,
        auth_key=layout.node("phone-0").private,
        node_config={"partition-id": 0},
    )
    assert "--insecure" not in node
    assert node[node.index("--root-certificates") + 1] == str(layout.ca_cert)
    assert node[node.index("--auth-supernode-private-key") + 1] == str(
        layout.node("phone-0").private
    )
    assert "FEDLORA_SIGNING_KEY" not in commands.service_env(layout, "supernode-phone-0")
    assert commands.service_env(layout, "superlink", signing_key=True)["FEDLORA_SIGNING_KEY"]


def test_keys_cli_init_show_and_deploy_dry_run(tmp_path: Path) -> None:
    from fedlora.cli.deploy import app as deploy_app
    from fedlora.cli.keys import app as keys_app

    runner = CliRunner()
    d = str(tmp_path / "dep")
    res = runner.invoke(keys_app, ["init", "--dir", d, "--nodes", "2", "--host", "127.0.0.1"])
    assert res.exit_code == 0, res.output
    layout = DeploymentLayout(Path(d))
    assert layout.node_names() == ["phone-0", "phone-1"]
    assert layout.signing_key.exists() and _mode(layout.signing_key) == 0o600
    again = runner.invoke(keys_app, ["init", "--dir", d, "--nodes", "2"])
    assert again.exit_code == 0 and "kept" in again.output  # nothing replaced
    show = runner.invoke(keys_app, ["show", "--dir", d])
    assert show.exit_code == 0 and "not registered" in show.output, show.output
    bad = runner.invoke(keys_app, ["show", "--dir", d, "--host", "10.1.2.3"])
    assert bad.exit_code == 1 and "PROBLEM" in bad.output
    dry = runner.invoke(deploy_app, ["superlink", "--dir", d, "--dry-run"])
    assert dry.exit_code == 0 and "--enable-supernode-auth" in dry.output, dry.output
    dry = runner.invoke(
        deploy_app, ["supernode", "phone-1", "--dir", d, "--rank", "8", "--dry-run"]
    )
    assert dry.exit_code == 0 and "--auth-supernode-private-key" in dry.output
    summary = summarize(certificate_from_pem(layout.server_cert.read_bytes()))
    assert summary.hosts == ("127.0.0.1",)
