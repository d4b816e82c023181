"""The real deployment end to end, on loopback: every service is its own process.

SuperLink (TLS, SuperNode authentication) + ServerApp (submitted with ``flwr run``) + hub
(HTTPS) + four SuperNodes, secure aggregation and distributed DP on, two rounds. During
round 1 one SuperNode is SIGKILLed in the middle of secure aggregation (after it has shared
its keys, before it sends its masked input): the three survivors must still publish round 1
and round 2 must run (a freshly registered phone joins in its place).

Why four phones and not three: our SecAgg+ refuses fewer than 3 contributors (with 2, each
learns the other's input from the sum) and uses a majority threshold t = ⌊(n−1)/2⌋ + 1; with
n = 3 (t = 2) a phone that dies after sharing its keys leaves only one holder of each
survivor's mask seed, so the round must abort — the protocol working as designed, measured
here first. n = 4 (t = 2) is the smallest round that survives one dropout at any stage.

A SuperNode whose key was never registered must be refused. Finally a phone downloads the
community adapter over HTTPS (TLS checked against the deployment CA), verifies its Ed25519
signature against the pinned key and loads it with plain ``peft.PeftModel.from_pretrained``
on the default base.

Round timings are printed (``pytest -s``). Every process is stopped in the fixture's
finalizer, and the test fails if any process of the deployment survives.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlora.cli.deploy import LOCAL_TUNING, fetch_verified
from fedlora.deployment.files import write_file
from fedlora.deployment.hub_client import HubClient
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.local import LocalDeployment
from fedlora.deployment.node_keys import write_node_key
from fedlora.deployment.pki import init_tls

pytestmark = pytest.mark.slow

PHONES = ["phone-0", "phone-1", "phone-2", "phone-3"]
REPLACEMENT = "phone-4"  # registered, joins after phone-1 dies
INTRUDER = "intruder"  # key exists, never registered
VICTIM = "phone-1"
RANKS = {"phone-0": 4, "phone-1": 8, "phone-2": 16, "phone-3": 8, "phone-4": 8}
SECAGG_RECEIVED = re.compile(r"Receiving: train\.secagg message")


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the deployment directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


@pytest.fixture(scope="module")
def deployment(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalDeployment]:
    from fedlora.privacy.signing import public_key_to_pem
    from fedlora.server.keys import load_or_create_signing_key

    layout = DeploymentLayout(tmp_path_factory.mktemp("deployment"))
    init_tls(layout)
    for name in [*PHONES, REPLACEMENT, INTRUDER]:
        write_node_key(layout.nodes, name)
    pub = load_or_create_signing_key(layout.signing_key).public_key()
    write_file(layout.signing_public_key, public_key_to_pem(pub), secret=False)
    dep = LocalDeployment.create(layout, env={**os.environ, **LOCAL_TUNING})
    try:
        yield dep
    finally:
        dep.stop()
        assert not dep.group.leftovers(), f"processes left over: {dep.group.leftovers()}"
        time.sleep(0.5)
        assert not _processes_mentioning(str(layout.root)), _processes_mentioning(str(layout.root))


def _registry_overrides(root: Path) -> list[str]:
    return [
        f'server.database_url="sqlite:///{root / "registry.db"}"',
        f'server.blob_dir="{root / "blobs"}"',
    ]


TINY = [
    "data.num_clients=4",
    "client.local_steps=2",
    "client.batch_size=4",
    "server.rounds=2",
    "server.clients_per_round=4",
    "server.min_clients=2",
    "server.round_timeout_s=240",
    "privacy.secure_aggregation=true",
    'privacy.noise="distributed"',
    "privacy.noise_multiplier=0.5",
    "privacy.clip_norm=0.5",
]


def _wait_for(predicate: object, timeout: float, what: str, poll: float = 1.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def test_tls_node_auth_secagg_dp_dropout_and_phone_download(
    deployment: LocalDeployment, default_model_dir: Path, tmp_path: Path
) -> None:
    dep, layout = deployment, deployment.layout
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = time.monotonic() - t0
        print(f"[{marks[name]:6.1f} s] {name}", flush=True)

    overrides = [*_registry_overrides(layout.root), *TINY]

    # ---- services: SuperLink (TLS + node auth), registrations, hub, three phones
    dep.start_superlink()
    mark("superlink up (https, node auth)")
    ids = dep.register([*PHONES, REPLACEMENT])
    assert len(set(ids.values())) == 5
    mark("5 SuperNode keys registered")
    dep.start_hub(overrides)
    mark("hub up (https)")
    for i, name in enumerate(PHONES):
        dep.start_supernode(name, {"partition-id": i, "rank": RANKS[name]})
    run_id = dep.submit_run(overrides, run_name="e2e")
    mark(f"run {run_id} submitted")

    # ---- an unregistered phone is refused: it never gets a node id, it exits
    intruder = dep.start_supernode(INTRUDER, {"partition-id": 0, "rank": 4}, max_retries=1)
    assert intruder.wait_exit(120) != 0
    assert "Failed to activate SuperNode" in intruder.log_text()
    assert "SuperNode ID:" not in intruder.log_text()
    mark("unregistered SuperNode refused")

    # ---- SIGKILL phone-1 in round 1's secure aggregation, after it shared its keys
    victim = dep.group[f"supernode-{VICTIM}"]

    def victim_at_masked_input() -> bool:
        return len(SECAGG_RECEIVED.findall(victim.log_text())) >= 3

    _wait_for(victim_at_masked_input, 400, "phone-1 to reach the masked-input stage", 0.2)
    victim.crash()
    assert not victim.running()
    mark("phone-1 SIGKILLed during secure aggregation (round 1)")
    dep.start_supernode(REPLACEMENT, {"partition-id": 1, "rank": RANKS[REPLACEMENT]})

    # ---- both rounds publish; the run completes
    hub = HubClient(dep.hub_url, layout.ca_cert)

    def run_info() -> dict[str, object] | None:
        runs = [r for r in hub.json("/v1/runs") if r["name"] == "e2e"]
        return runs[0] if runs else None

    seen: set[tuple[int, str]] = set()

    def finished() -> bool:
        dep.group.snapshot()
        info = run_info()
        if info is None:
            return False
        for r in hub.json(f"/v1/runs/{info['id']}/rounds"):
            if (r["number"], r["status"]) not in seen:
                seen.add((r["number"], r["status"]))
                mark(f"round {r['number']} {r['status']}")
        return info["status"] == "finished"

    _wait_for(finished, 420, "the run to finish", 2.0)
    mark("run finished in the registry")
    _wait_for(lambda: dep.run_status(run_id).startswith("finished"), 120, "Flower's run end", 3)
    assert dep.run_status(run_id) == "finished:completed"
    info = run_info()
    assert info is not None
    rounds = hub.json(f"/v1/runs/{info['id']}/rounds")
    for r in rounds:
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
        print(
            f"round {r['number']}: {r['status']} in {r['duration_s'] or 0:.1f} s ({timings}); "
            f"participants {r['participants']}, rank mix {r['rank_mix']}, "
            f"epsilon {r['epsilon']}, failure {r['failure_reason']}",
            flush=True,
        )
    assert [r["status"] for r in rounds] == ["committed", "committed"]
    assert rounds[0]["participants"] == 3, "phone-1 died: the sum of the 3 survivors"
    assert rounds[1]["participants"] == 4, "round 2: the survivors and the new phone-4"
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]

    # ---- a phone downloads the community view over HTTPS, verifies, loads it with PEFT
    phone_dir = tmp_path / "phone"
    summary = fetch_verified(
        dep.hub_url, phone_dir, ca_cert=layout.ca_cert, pinned=[layout.signing_public_key], rank=8
    )
    assert "verified" in summary and "round 2" in summary, summary
    again = fetch_verified(
        dep.hub_url, phone_dir, ca_cert=layout.ca_cert, pinned=[layout.signing_public_key], rank=8
    )
    assert again.startswith("up to date"), again  # ETag: a 304, nothing downloaded
    mark("phone: TLS + signature verified, PEFT directory written")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fedlora.adapter_io import load_adapter

    base = AutoModelForCausalLM.from_pretrained(default_model_dir)
    model = PeftModel.from_pretrained(base, str(phone_dir / "peft"))
    adapter = load_adapter(phone_dir / "adapter.safetensors")
    module, pair = next(iter(adapter.pairs.items()))
    loaded = dict(model.named_parameters())
    key = next(k for k in loaded if module in k and "lora_B" in k)
    assert torch.allclose(loaded[key].detach().float(), torch.from_numpy(pair.B).float())
    assert float(torch.from_numpy(pair.B).abs().sum()) > 0, "two rounds moved the adapter"
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert torch.isfinite(out.logits).all()
    mark("phone: plain peft.PeftModel.from_pretrained loaded it")
    print(f"end-to-end wall time {time.monotonic() - t0:.1f} s", flush=True)
