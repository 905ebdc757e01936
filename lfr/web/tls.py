"""A self-signed certificate and key for trying the viewer over TLS (``lfr web make-cert``).

A deployment that others reach should use a certificate from the organisation's own authority;
a self-signed one makes browsers warn until it is trusted, but still encrypts the logins, the
session cookies and the faces on the wire.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lfr.keys import write_private

CERT_NAME, KEY_NAME = "web-cert.pem", "web-key.pem"


def make_self_signed(out_dir: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"),
                     days: int = 30) -> tuple[Path, Path]:
    """Write ``web-cert.pem`` and ``web-key.pem`` (P-256, 0600) into ``out_dir``, valid for
    ``hosts`` (names or IP addresses) for ``days`` days. Returns (cert, key)."""
    if not hosts:
        raise ValueError("hosts: name at least one host name or IP address")
    if days <= 0:
        raise ValueError(f"days: must be > 0, got {days}")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lfr (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = out_dir / CERT_NAME, out_dir / KEY_NAME
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
