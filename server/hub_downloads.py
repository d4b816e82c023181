"""Adapter download responses: safetensors bytes or a PEFT-directory zip, with the signature
and metadata in headers and the content hash as a strong ETag.

Why headers: a phone gets everything it needs to verify before loading in one round trip
(``X-Fedlora-Signature`` is the base64 of the signature record JSON that
:meth:`fedlora.privacy.signing.AdapterSignature.from_json` reads), and a conditional GET
(``If-None-Match``) costs it a 304 without a body when it already has the latest adapter.
Content-addressed versions never change, so ``/v1/adapters/{version}`` is cacheable for a
year; ``latest`` must be revalidated every time.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import zipfile
from pathlib import Path

from fastapi import Response

from fedlora.adapter_io import from_safetensors_bytes, save_peft_dir

from .registry_types import AdapterVersionInfo

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"
ZIP_MEDIA_TYPE = "application/zip"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def etag_of(content_hash: str, suffix: str = "") -> str:
    return f'"{content_hash}{suffix}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of an ``If-None-Match`` list (or ``*``) with ``etag``."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for part in if_none_match.split(","):
        tag = part.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def adapter_headers(v: AdapterVersionInfo, etag: str, cache_control: str) -> dict[str, str]:
    compact_sig = json.dumps(json.loads(v.signature_json), sort_keys=True, separators=(",", ":"))
    return {
        "ETag": etag,
        "Cache-Control": cache_control,
        "X-Fedlora-Version": str(v.id),
        "X-Fedlora-Run": str(v.run_id),
        "X-Fedlora-Round": str(v.round),
        "X-Fedlora-Rank": str(v.rank),
        "X-Fedlora-Role": v.role,
        "X-Fedlora-Content-Sha256": v.content_hash,
        "X-Fedlora-Key-Id": v.key_id,
        "X-Fedlora-Signature": base64.b64encode(compact_sig.encode()).decode(),
        "X-Fedlora-Metadata": base64.b64encode(v.metadata_json.encode()).decode(),
    }


def not_modified(v: AdapterVersionInfo, etag: str, cache_control: str) -> Response:
    return Response(status_code=304, headers=adapter_headers(v, etag, cache_control))


def safetensors_response(v: AdapterVersionInfo, data: bytes, cache_control: str) -> Response:
    headers = adapter_headers(v, etag_of(v.content_hash), cache_control)
    headers["Content-Disposition"] = f'attachment; filename="fedlora-v{v.id}-r{v.rank}.safetensors"'
    return Response(content=data, media_type=SAFETENSORS_MEDIA_TYPE, headers=headers)


def peft_zip_bytes(v: AdapterVersionInfo, data: bytes) -> bytes:
    """A zip of the PEFT directory (``PeftModel.from_pretrained`` loads it once unpacked),
    plus the signature of the fedlora blob it was made from. Deterministic bytes."""
    adapter = from_safetensors_bytes(data)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="fedlora-peft-") as tmp:
        d = save_peft_dir(adapter, Path(tmp) / "adapter")
        files = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}
    files["fedlora_signature.json"] = v.signature_json.encode()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, content)
    return buf.getvalue()


def peft_zip_response(v: AdapterVersionInfo, zipped: bytes) -> Response:
    headers = adapter_headers(v, etag_of(v.content_hash, "-peft"), IMMUTABLE)
    headers["Content-Disposition"] = f'attachment; filename="fedlora-v{v.id}-r{v.rank}-peft.zip"'
    return Response(content=zipped, media_type=ZIP_MEDIA_TYPE, headers=headers)
