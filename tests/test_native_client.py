"""The native-client reference (native/fedlora_native) against a real hub on loopback.

The reference does not import fedlora; these tests check it against fedlora's own code from
the outside: what it verifies and parses is exactly what the registry published, what it
refuses is what a phone must refuse, and the delta it computes is laid out exactly as the
server sums it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "native"))

from fedlora_native import NativeHubClient, Refused, parse_adapter, verify_download  # noqa: E402
from fedlora_native.delta import clip_l2, compute_delta, flatten, pad_to_rank  # noqa: E402
from fedlora_native.hub import Download, HubUnavailable  # noqa: E402
from fedlora_native.verify import pinned_key  # noqa: E402

from fedlora.cli.deploy import LOCAL_TUNING  # noqa: E402
from fedlora.deployment.files import write_file  # noqa: E402
from fedlora.deployment.layout import DeploymentLayout  # noqa: E402
from fedlora.deployment.local import LocalDeployment  # noqa: E402
from fedlora.deployment.pki import init_tls  # noqa: E402


def _registry_overrides(root: Path) -> list[str]:
    return [
        f'server.database_url="sqlite:///{root / "registry.db"}"',
        f'server.blob_dir="{root / "blobs"}"',
    ]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A real hub (HTTPS, its own process) over a registry with an honest and a swapped run."""
    from fedlora.adapter_io import content_hash
    from fedlora.config import load_settings
    from fedlora.privacy.signing import public_key_to_pem, sign_adapter
    from fedlora.server.demo import make_demo_adapter
    from fedlora.server.keys import load_or_create_signing_key
    from fedlora.server.registry import Registry
    from fedlora.server.registry_types import RoundPublication

    layout = DeploymentLayout(tmp_path_factory.mktemp("native-hub"))
    init_tls(layout)
    key = load_or_create_signing_key(layout.signing_key)
    write_file(layout.signing_public_key, public_key_to_pem(key.public_key()), secret=False)
    settings = load_settings(None, _registry_overrides(layout.root))
    honest, other = make_demo_adapter(8, seed=1), make_demo_adapter(8, seed=2)
    runs: dict[str, int] = {}
    reg = Registry.open(settings.server, signing_key=key)
    try:
        runs["good"] = reg.begin_run("good").id
        reg.publish_external(runs["good"], honest, [4])
    finally:
        reg.close()
    keyless = Registry.open(settings.server)  # a compromised hub swapping the blob
    try:
        runs["swapped"] = keyless.begin_run("swapped").id
        forged = dataclasses.replace(sign_adapter(other, key), content_hash=content_hash(honest))
        keyless.publish_round(
            runs["swapped"],
            1,
            RoundPublication(community=honest, signatures={forged.content_hash: forged}),
        )
    finally:
        keyless.close()
    dep = LocalDeployment.create(layout, env={**os.environ, **LOCAL_TUNING})
    try:
        dep.start_hub(_registry_overrides(layout.root))
        yield {"dep": dep, "runs": runs, "honest": honest, "settings": settings}
    finally:
        dep.stop()
        assert not dep.group.leftovers()


def _client(hub: dict[str, object]) -> NativeHubClient:
    dep: LocalDeployment = hub["dep"]  # type: ignore[assignment]
    return NativeHubClient(dep.hub_url, dep.layout.ca_cert)


def _pins(hub: dict[str, object]) -> list:  # type: ignore[type-arg]
    dep: LocalDeployment = hub["dep"]  # type: ignore[assignment]
    return [pinned_key(dep.layout.signing_public_key.read_bytes())]


def test_fetch_verify_parse_matches_what_the_registry_published(hub: dict[str, object]) -> None:
    from fedlora.adapter_io import content_hash

    runs: dict[str, int] = hub["runs"]  # type: ignore[assignment]
    honest = hub["honest"]
    download = _client(hub).latest(run=runs["good"])
    assert download.status == 200
    verified = verify_download(download, _pins(hub))
    assert verified.content_sha256 == content_hash(honest)  # type: ignore[arg-type]
    assert download.etag == f'"{verified.content_sha256}"'
    adapter = verified.adapter
    assert adapter.modules == list(honest.modules)  # type: ignore[attr-defined]
    for module, pair in honest:  # type: ignore[attr-defined]
        a, b = adapter.pair(module)
        np.testing.assert_array_equal(a, pair.A)
        np.testing.assert_array_equal(b, pair.B)
    assert adapter.metadata == honest.meta.model_dump(mode="json")  # type: ignore[attr-defined]

    # the rank-4 view, and a conditional GET that costs a bodiless 304
    view = verify_download(_client(hub).latest(4, run=runs["good"]), _pins(hub)).adapter
    assert view.rank == 4
    again = _client(hub).latest(run=runs["good"], etag=download.etag)
    assert again.status == 304 and again.body == b""


def test_refuses_swapped_blob_flipped_byte_and_unpinned_key(hub: dict[str, object]) -> None:
    from fedlora.privacy.signing import generate_signing_key

    runs: dict[str, int] = hub["runs"]  # type: ignore[assignment]
    with pytest.raises(Refused) as swapped:
        verify_download(_client(hub).latest(run=runs["swapped"]), _pins(hub))
    assert swapped.value.reason == "invalid_signature"

    good = _client(hub).latest(run=runs["good"])
    body = bytearray(good.body)
    body[-1] ^= 0x01  # one bit of one tensor
    with pytest.raises(Refused) as flipped:
        verify_download(dataclasses.replace(good, body=bytes(body)), _pins(hub))
    assert flipped.value.reason == "invalid_signature"

    stranger = generate_signing_key().public_key()
    with pytest.raises(Refused) as foreign:
        verify_download(good, [stranger])
    assert foreign.value.reason == "wrong_key"

    headers = {k: v for k, v in good.headers.items() if k != "x-fedlora-signature"}
    with pytest.raises(Refused) as missing:
        verify_download(Download(200, good.body, headers), _pins(hub))
    assert missing.value.reason == "missing_signature"


def test_refuses_hub_certificate_from_another_ca(hub: dict[str, object], tmp_path: Path) -> None:
    other = DeploymentLayout(tmp_path / "other")
    init_tls(other)
    dep: LocalDeployment = hub["dep"]  # type: ignore[assignment]
    with pytest.raises(HubUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
        NativeHubClient(dep.hub_url, other.ca_cert).latest()


def test_delta_is_laid_out_exactly_as_the_server_sums_it(hub: dict[str, object]) -> None:
    from fedlora.adapter_io import from_safetensors_bytes
    from fedlora.layout import FlatLayout
    from fedlora.ranks import pad_to_rank as fedlora_pad

    runs: dict[str, int] = hub["runs"]  # type: ignore[assignment]
    download = _client(hub).latest(4, run=runs["good"])
    received = verify_download(download, _pins(hub)).adapter
    rng = np.random.default_rng(0)
    trained = dataclasses.replace(
        received,
        tensors={
            k: v + rng.normal(0, 0.01, v.shape).astype(np.float32)
            for k, v in received.tensors.items()
        },
    )
    delta = compute_delta(received, trained)
    theirs = from_safetensors_bytes(delta.to_safetensors())  # fedlora reads the native delta
    assert theirs.meta.kind == "delta" and theirs.meta.round == received.metadata["round"]
    ours_vec = flatten(pad_to_rank(delta, 16))
    theirs_padded = fedlora_pad(theirs, 16)
    theirs_vec = FlatLayout.of(theirs_padded).flatten(theirs_padded, dtype="float64")
    np.testing.assert_array_equal(ours_vec, theirs_vec)
    clipped, norm = clip_l2(ours_vec, 0.01)
    assert norm > 0.01 and abs(np.linalg.norm(clipped) - 0.01) < 1e-9


def test_parse_refuses_garbage() -> None:
    for data in (b"", b"\x00" * 8, b"\xff" * 16):
        with pytest.raises(Refused) as info:
            parse_adapter(data)
        assert info.value.reason == "unreadable_adapter"


def test_reference_client_imports_neither_torch_nor_fedlora() -> None:
    code = (
        "import sys; sys.path.insert(0, 'native');"
        "import fedlora_native, fedlora_native.delta, fedlora_native.pte;"
        "bad = [m for m in ('torch', 'fedlora') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.slow
def test_training_step_through_the_exported_program(
    default_model_dir: Path, tmp_path: Path
) -> None:
    """Needs ExecuTorch and `fedlora.client.native_export` (the `native` extra)."""
    from fedlora_native.pte import PteTrainer, executorch_training_available

    if not executorch_training_available():
        pytest.skip("ExecuTorch is not installed here (pip install 'fedlora[native]'): .pte step")
    native_export = pytest.importorskip("fedlora.client.native_export")
    from fedlora.adapter import AdapterMetadata, LoraAdapter, LoraPair
    from fedlora.adapter_io import to_safetensors_bytes

    result = native_export.export_native(
        str(default_model_dir),
        tmp_path / "program",
        rank=4,
        alpha=8.0,
        targets=["q_proj", "v_proj"],
        seq_len=16,
        batch_size=2,
    )
    trainer = PteTrainer(Path(result.meta_path).parent)
    # a "received" community view for this base: small random factors at rank 4
    rng = np.random.default_rng(0)
    pairs, shapes = {}, trainer.info.parameters
    for name in sorted({n.rsplit(".lora_", 1)[0] for n in shapes}):
        a_shape, b_shape = shapes[name + ".lora_A"][1], shapes[name + ".lora_B"][1]
        pairs[name] = LoraPair(
            rng.normal(0, 0.05, a_shape).astype(np.float32),
            rng.normal(0, 0.05, b_shape).astype(np.float32),
        )
    meta = AdapterMetadata(
        base_fingerprint=result.base_fingerprint,
        target_modules=("q_proj", "v_proj"),
        ranks=dict.fromkeys(pairs, 4),
        alphas=dict.fromkeys(pairs, 8.0),
    )
    received = parse_adapter(to_safetensors_bytes(LoraAdapter(meta=meta, pairs=pairs)))
    ids = rng.integers(3, 50, size=(2, 16)).astype(np.int64)
    labels = ids.copy()
    labels[:, -3:] = -100
    trainer.load_adapter(received, warmup=(ids, labels))
    loaded = trainer.adapter(received)
    for name, value in received.tensors.items():
        np.testing.assert_array_equal(loaded.tensors[name], value)
    losses = trainer.train([(ids, labels)] * 4, lr=0.05)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    delta = compute_delta(received, trainer.adapter(received))
    assert np.linalg.norm(flatten(delta)) > 0
