"""What a deployment must refuse, each on real processes over loopback TLS.

* a SuperNode whose key was never registered (node authentication) — next to a registered
  one that is accepted, so the refusal is about registration and not a broken setup;
* a SuperNode that does not trust the SuperLink's certificate: issued by another CA, issued
  for another host, or expired;
* a phone that does not trust the hub's certificate (the same three cases);
* a phone given an adapter whose bytes do not match its signature (the hub's blob was
  swapped), or that is signed by a key the phone did not pin — nothing is written then.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlora.cli.deploy import LOCAL_TUNING, fetch_verified
from fedlora.deployment.files import write_file
from fedlora.deployment.hub_client import HubClient, HubError
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.local import LocalDeployment
from fedlora.deployment.node_keys import write_node_key
from fedlora.deployment.pki import init_tls, issue_server
from fedlora.deployment.services import Service
from fedlora.deployment.tls import Validity

pytestmark = pytest.mark.slow

BAD_CERTS = ["wrong_host", "expired"]


def _signing_key(layout: DeploymentLayout):  # type: ignore[no-untyped-def]
    from fedlora.privacy.signing import public_key_to_pem
    from fedlora.server.keys import load_or_create_signing_key

    key = load_or_create_signing_key(layout.signing_key)
    write_file(layout.signing_public_key, public_key_to_pem(key.public_key()), secret=False)
    return key


def _registry_overrides(root: Path) -> list[str]:
    return [
        f'server.database_url="sqlite:///{root / "registry.db"}"',
        f'server.blob_dir="{root / "blobs"}"',
    ]


def _seed_registry(layout: DeploymentLayout, key) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Three runs: an honest one, one whose blob does not match its signature (the hub's
    storage was tampered with), one signed by a key nobody pinned. Run name -> run id."""
    from fedlora.config import load_settings
    from fedlora.privacy.signing import generate_signing_key, sign_adapter
    from fedlora.server.demo import make_demo_adapter
    from fedlora.server.registry import Registry
    from fedlora.server.registry_types import RoundPublication

    settings = load_settings(None, _registry_overrides(layout.root))
    honest, other = make_demo_adapter(8, seed=1), make_demo_adapter(8, seed=2)
    from fedlora.adapter_io import content_hash

    h = content_hash(honest)
    swapped = dataclasses.replace(sign_adapter(other, key), content_hash=h)
    foreign = sign_adapter(honest, generate_signing_key())
    ids: dict[str, int] = {}
    with_key = Registry.open(settings.server, signing_key=key)
    try:
        ids["good"] = with_key.begin_run("good").id
        with_key.publish_external(ids["good"], honest)
    finally:
        with_key.close()
    keyless = Registry.open(settings.server)  # what a compromised hub could write
    try:
        for name, sig in (("swapped", swapped), ("foreign", foreign)):
            ids[name] = keyless.begin_run(name).id
            pub = RoundPublication(community=honest, signatures={h: sig})
            keyless.publish_round(ids[name], 1, pub)
    finally:
        keyless.close()
    return ids


def _bad_layout(good: DeploymentLayout, kind: str) -> DeploymentLayout:
    """Same CA, but a server certificate for another host, or one that expired."""
    bad = DeploymentLayout(good.root / kind)
    bad.certs.mkdir(parents=True)
    for src in (good.ca_cert, good.ca_key, good.signing_public_key):
        dst = bad.certs / src.name if src.parent == good.certs else bad.signing_public_key
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shutil.copytree(good.nodes, bad.nodes)
    if kind == "wrong_host":
        issue_server(bad, ["fedlora.invalid"])
    else:
        issue_server(bad, ["127.0.0.1", "localhost"], validity=Validity.expired())
    return bad


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("refusals")
    layout = DeploymentLayout(root)
    init_tls(layout)
    for name in ("phone-0", "intruder"):
        write_node_key(layout.nodes, name)
    runs = _seed_registry(layout, _signing_key(layout))
    other = DeploymentLayout(root / "other-ca")
    init_tls(other)
    env = {**os.environ, **LOCAL_TUNING}
    deps = {"good": LocalDeployment.create(layout, env)}
    for kind in BAD_CERTS:
        deps[kind] = LocalDeployment.create(_bad_layout(layout, kind), env)
    try:
        good = deps["good"]
        good.start_superlink()
        ids = good.register(["phone-0"])
        good.start_hub(_registry_overrides(root))
        for kind in BAD_CERTS:
            deps[kind].start_superlink()
            deps[kind].start_hub(_registry_overrides(root))
        yield {"deps": deps, "ids": ids, "runs": runs, "other": other}
    finally:
        for dep in deps.values():
            dep.stop()
        for dep in deps.values():
            assert not dep.group.leftovers(), dep.group.leftovers()


def _supernode(dep: LocalDeployment, key: str, **kw: object) -> Service:
    return dep.start_supernode(
        key,
        {"partition-id": 0, "rank": 4},
        max_retries=1,
        service_name=f"supernode-{key}-{len(dep.group.services)}",
        **kw,  # type: ignore[arg-type]
    )


def test_registered_supernode_is_accepted(world: dict[str, object]) -> None:
    dep = world["deps"]["good"]  # type: ignore[index]
    node = _supernode(dep, "phone-0")
    try:
        m = node.wait_for_log(r"SuperNode ID: (\d+)", 120)
        assert int(m.group(1)) == world["ids"]["phone-0"]  # type: ignore[index]
    finally:
        node.stop()


def test_unregistered_supernode_is_refused(world: dict[str, object]) -> None:
    dep = world["deps"]["good"]  # type: ignore[index]
    node = _supernode(dep, "intruder")
    assert node.wait_exit(120) != 0
    log = node.log_text()
    assert "Failed to activate SuperNode" in log and "SuperNode ID:" not in log


def test_supernode_refuses_superlink_certificate_from_another_ca(
    world: dict[str, object],
) -> None:
    dep = world["deps"]["good"]  # type: ignore[index]
    other: DeploymentLayout = world["other"]  # type: ignore[assignment]
    node = _supernode(dep, "phone-0", root_certificates=other.ca_cert)
    assert node.wait_exit(120) != 0
    log = node.log_text()
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log, log[-2000:]
    assert "SuperNode ID:" not in log


@pytest.mark.parametrize("kind", BAD_CERTS)
def test_supernode_refuses_bad_superlink_certificate(world: dict[str, object], kind: str) -> None:
    dep = world["deps"][kind]  # type: ignore[index]
    node = _supernode(dep, "phone-0", root_certificates=world["deps"]["good"].layout.ca_cert)  # type: ignore[index]
    assert node.wait_exit(120) != 0
    log = node.log_text()
    reason = "not valid for '127.0.0.1'" if kind == "wrong_host" else "certificate has expired"
    assert "CERTIFICATE_VERIFY_FAILED" in log and reason in log, log[-2000:]
    assert "SuperNode ID:" not in log


@pytest.mark.parametrize("kind", ["other_ca", *BAD_CERTS])
def test_phone_refuses_untrusted_hub_certificate(
    world: dict[str, object], kind: str, tmp_path: Path
) -> None:
    deps = world["deps"]  # type: ignore[assignment]
    good = deps["good"]  # type: ignore[index]
    ca = world["other"].ca_cert if kind == "other_ca" else good.layout.ca_cert  # type: ignore[attr-defined]
    hub_url = good.hub_url if kind == "other_ca" else deps[kind].hub_url  # type: ignore[index]
    with pytest.raises(HubError, match="TLS certificate refused") as info:
        HubClient(hub_url, ca).json("/healthz")
    expected = {
        "other_ca": "unable to get local issuer",
        "wrong_host": "not valid for '127.0.0.1'",
        "expired": "certificate has expired",
    }
    assert expected[kind] in str(info.value)
    out = tmp_path / "phone"
    with pytest.raises(HubError):
        fetch_verified(hub_url, out, ca_cert=ca, pinned=[good.layout.signing_public_key], rank=8)
    assert not out.exists()
    assert HubClient(good.hub_url, good.layout.ca_cert).json("/healthz")["status"] == "ok"


def test_phone_verifies_the_honest_adapter(world: dict[str, object], tmp_path: Path) -> None:
    good = world["deps"]["good"]  # type: ignore[index]
    run = world["runs"]["good"]  # type: ignore[index]
    summary = fetch_verified(
        good.hub_url,
        tmp_path,
        ca_cert=good.layout.ca_cert,
        pinned=[good.layout.signing_public_key],
        rank=8,
        run=run,
    )
    assert summary.startswith("verified"), summary
    assert (tmp_path / "peft" / "adapter_config.json").exists()


@pytest.mark.parametrize(
    ("run_name", "reason"), [("swapped", "tensors_tampered"), ("foreign", "wrong_key")]
)
def test_phone_refuses_tampered_or_foreign_adapter(
    world: dict[str, object], run_name: str, reason: str, tmp_path: Path
) -> None:
    from fedlora.privacy.signing import SignatureError

    good = world["deps"]["good"]  # type: ignore[index]
    out = tmp_path / "phone"
    with pytest.raises(SignatureError) as info:
        fetch_verified(
            good.hub_url,
            out,
            ca_cert=good.layout.ca_cert,
            pinned=[good.layout.signing_public_key],
            rank=8,
            run=world["runs"][run_name],  # type: ignore[index]
        )
    assert info.value.reason == reason
    assert not out.exists(), "nothing may be written from a refused download"
