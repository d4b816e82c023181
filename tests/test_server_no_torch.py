"""The server container has no torch: no server module may import it, even indirectly.

Checked in a fresh interpreter (this test process may already hold torch from other tests):
every module under ``fedlora.server`` is imported, a hub app is built and an adapter is
downloaded both as safetensors and as a PEFT zip; ``torch`` (and the other training
libraries) must still be absent from ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib, pkgutil, sys, tempfile
import fedlora.server as server
for info in pkgutil.walk_packages(server.__path__, "fedlora.server."):
    importlib.import_module(info.name)
from fastapi.testclient import TestClient
from fedlora.privacy.signing import generate_signing_key
from fedlora.server.demo import seed_demo_run
from fedlora.server.hub import create_app
from fedlora.server.registry import Registry
d = tempfile.mkdtemp()
key = generate_signing_key()
reg = Registry.open(database_url=f"sqlite:///{d}/r.db", blob_dir=d, signing_key=key)
last = seed_demo_run(reg, 1)
with TestClient(create_app(reg, tokens=[])) as c:
    assert c.get("/v1/adapters/latest?rank=4").status_code == 200
    assert c.get(f"/v1/adapters/{last.community.id}/peft.zip").status_code == 200
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               {"torch", "transformers", "peft", "bitsandbytes", "accelerate"})
print("HEAVY:", heavy)
"""


def test_server_never_imports_torch(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY: []" in out.stdout, out.stdout
