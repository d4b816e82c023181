"""A private certificate authority and the server certificate the SuperLink and hub present.

Why a private CA rather than a self-signed server certificate: phones (SuperNodes, native
apps) pin the CA certificate once, and the server certificate can then be re-issued — new
host name, expiry, key compromise — without touching any phone. The CA key should live
offline once the server certificate is issued.

Keys are ECDSA P-256 (every TLS stack we talk to — Python's ``ssl`` behind uvicorn and httpx,
Android's and iOS's — speaks it, and it is small and fast on phones). The server certificate
names its hosts as subject alternative names (IP addresses as ``IPAddress`` entries, names as
``DNSName``): modern TLS clients ignore the common name, so a host missing from the SANs is a
host the certificate does not cover.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlora.errors import FedloraError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS = 3650
SERVER_DAYS = 365


class CertificateError(FedloraError, ValueError):
    """A certificate or key file is unreadable, or a certificate does not fit its use."""


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window (UTC)."""

    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def for_days(cls, days: int, *, start: dt.datetime | None = None) -> Validity:
        """``days`` from ``start`` (default: now, backdated 5 minutes for clock skew)."""
        if days < 1:
            raise CertificateError(f"a certificate must be valid for at least 1 day, got {days}")
        begin = start or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        return cls(not_before=begin, not_after=begin + dt.timedelta(days=days))

    @classmethod
    def expired(cls) -> Validity:
        """A window that ended yesterday: for testing that clients refuse expired certs."""
        end = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        return cls(not_before=end - dt.timedelta(days=30), not_after=end)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlora"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """IP literals become ``IPAddress`` SANs, everything else ``DNSName``."""
    if not hosts:
        raise CertificateError("a server certificate needs at least one host name or IP")
    names: list[x509.GeneralName] = []
    for raw in hosts:
        host = raw.strip().strip("[]")
        if not host:
            raise CertificateError(f"empty host in {list(hosts)!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate_ca(
    common_name: str | None = None, validity: Validity | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh CA key and self-signed CA certificate (path length 0: it signs leaves only).

    The default name carries a random suffix so that two deployments' CAs are told apart
    in logs and error messages (same-named CAs make "wrong CA" errors baffling).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    window = validity or Validity.for_days(CA_DAYS)
    name = _name(common_name or f"fedlora deployment CA {secrets.token_hex(4)}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window.not_before)
        .not_valid_after(window.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    validity: Validity | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate for ``hosts``, signed by the CA (TLS server auth only)."""
    sans = subject_alt_names(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    window = validity or Validity.for_days(SERVER_DAYS)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window.not_before)
        .not_valid_after(window.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


# ---------------------------------------------------------------------------- PEM I/O
def certificate_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8: uvicorn and Flower read the key file without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_from_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from exc


def ec_private_key_from_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the PEM key is not an ECDSA key")
    return key


# ---------------------------------------------------------------------------- inspection
@dataclass(frozen=True)
class CertificateSummary:
    """What an operator needs to know about a certificate at a glance."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    hosts: tuple[str, ...]
    is_ca: bool
    sha256: str

    def describe(self) -> str:
        hosts = ", ".join(self.hosts) if self.hosts else "-"
        return (
            f"subject {self.subject}; issuer {self.issuer}; "
            f"valid {self.not_before:%Y-%m-%d} .. {self.not_after:%Y-%m-%d}; "
            f"{'CA' if self.is_ca else 'hosts ' + hosts}; sha256 {self.sha256[:16]}…"
        )


def summarize(cert: x509.Certificate) -> CertificateSummary:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple(
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
            + list(san.get_values_for_type(x509.DNSName))
        )
    except x509.ExtensionNotFound:
        hosts = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateSummary(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        hosts=hosts,
        is_ca=is_ca,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def check_server_certificate(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    host: str,
    *,
    at: dt.datetime | None = None,
) -> list[str]:
    """Problems a TLS client would refuse ``cert`` for when connecting to ``host``.

    Empty when the certificate is issued by ``ca_cert``, valid at ``at`` (default now) and
    names ``host``. Lets an operator find a wrong host or an expiry before phones do.
    """
    problems: list[str] = []
    now = at or dt.datetime.now(dt.UTC)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as exc:
        problems.append(f"not issued by the CA {ca_cert.subject.rfc4514_string()}: {exc}")
    except InvalidSignature:
        problems.append(
            f"not issued by the CA {ca_cert.subject.rfc4514_string()}: signature does not verify"
        )
    if now < cert.not_valid_before_utc:
        problems.append(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        problems.append(f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    wanted = subject_alt_names([host])[0]
    summary = summarize(cert)
    names = subject_alt_names(summary.hosts) if summary.hosts else []
    if wanted not in names:
        problems.append(f"does not name host {host!r} (it names {list(summary.hosts)})")
    return problems
