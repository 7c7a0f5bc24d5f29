"""Certificates made in the test (cryptography is a dependency already): a CA of the test's own, and
certificates for a DNS name or an IP address, self-signed or signed by that CA, written as PEM files."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey


def subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def alt_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS one for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate(
    common_name: str,
    key: PrivateKey,
    *,
    signer: tuple[x509.Name, PrivateKey] | None = None,
    host: str | None = None,
    ca: bool = False,
    lifetime: timedelta = timedelta(hours=1),
) -> x509.Certificate:
    """A certificate for `key`, valid from a minute ago for `lifetime`, signed by `signer` (issuer name
    and key; None: self-signed), naming `host` as its subject alternative name when given."""
    now = datetime.now(UTC)
    issuer, signing_key = signer or (subject(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(common_name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + lifetime)
    )
    if host is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([alt_name(host)]), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(signing_key, hashes.SHA256())


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_certificate(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for `host` alone (its own CA) and its key: (cert.pem, key.pem)."""
    key = new_key()
    cert = certificate(host, key, host=host, ca=True)
    return write_certificate(directory / "cert.pem", cert), write_key(directory / "key.pem", key)
