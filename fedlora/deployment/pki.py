"""Creating a deployment's TLS material in its directory (what ``fedlora keys tls`` does).

Kept apart from :mod:`fedlora.deployment.tls` (pure certificate logic) so that the file
policy — which files exist, which are secret, never overwrite silently — lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from fedlora.deployment.files import KeyFileExists, write_file
from fedlora.deployment.layout import DeploymentLayout
from fedlora.deployment.tls import (
    DEFAULT_HOSTS,
    CertificateSummary,
    Validity,
    certificate_from_pem,
    certificate_to_pem,
    ec_private_key_from_pem,
    generate_ca,
    issue_server_certificate,
    private_key_to_pem,
    summarize,
)


@dataclass(frozen=True)
class TlsMaterial:
    """Summaries of the CA and server certificates now on disk."""

    ca: CertificateSummary
    server: CertificateSummary


def ensure_ca(
    layout: DeploymentLayout, *, validity: Validity | None = None, overwrite: bool = False
) -> x509.Certificate:
    """Create the CA unless one exists (then it is reused: phones already pin it)."""
    if layout.ca_cert.exists() and layout.ca_key.exists() and not overwrite:
        return certificate_from_pem(layout.ca_cert.read_bytes())
    if (layout.ca_cert.exists() or layout.ca_key.exists()) and not overwrite:
        missing = layout.ca_key if layout.ca_cert.exists() else layout.ca_cert
        raise KeyFileExists(missing.with_name(f"{missing.name} (its pair is missing)"))
    key, cert = generate_ca(validity=validity)
    write_file(layout.ca_key, private_key_to_pem(key), secret=True, overwrite=overwrite)
    write_file(layout.ca_cert, certificate_to_pem(cert), secret=False, overwrite=overwrite)
    return cert


def issue_server(
    layout: DeploymentLayout,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    validity: Validity | None = None,
    overwrite: bool = False,
) -> x509.Certificate:
    """Issue the server certificate for ``hosts`` with the deployment's CA."""
    ca_key = ec_private_key_from_pem(layout.ca_key.read_bytes())
    ca_cert = certificate_from_pem(layout.ca_cert.read_bytes())
    key, cert = issue_server_certificate(ca_key, ca_cert, hosts, validity)
    write_file(layout.server_key, private_key_to_pem(key), secret=True, overwrite=overwrite)
    write_file(layout.server_cert, certificate_to_pem(cert), secret=False, overwrite=overwrite)
    return cert


def init_tls(
    layout: DeploymentLayout,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    server_validity: Validity | None = None,
    overwrite: bool = False,
    new_ca: bool = False,
) -> TlsMaterial:
    """CA (reused if present, replaced only with ``new_ca``) plus a server certificate for
    ``hosts`` (an existing one is replaced only with ``overwrite``: re-issuing is routine,
    replacing the CA locks out every phone that pinned the old one)."""
    ca = ensure_ca(layout, overwrite=new_ca)
    server = issue_server(layout, hosts, validity=server_validity, overwrite=overwrite or new_ca)
    return TlsMaterial(ca=summarize(ca), server=summarize(server))
