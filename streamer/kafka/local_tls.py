"""Certificates for the secured local broker, generated at start (never stored in the repo).

A throw-away CA signs the broker's certificate (SAN: the host it listens on, localhost and
127.0.0.1) and any client certificates the tests ask for; `expired=True` issues one whose
validity ended yesterday (the broker's expired-certificate listener uses it). Everything is
written as PEM with unencrypted PKCS#8 keys, files mode 0600, into the broker's work directory;
Kafka reads PEM key stores (`ssl.keystore.type=PEM`). Needs `cryptography` (the dev extra): only
`streamer.kafka.local_broker`'s secured mode imports this module.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_BITS = 2048


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        """Certificate (+ key in the same file when no key_path), mode 0600."""
        if key_path is None:
            _write_private(cert_path, self.key_pem + self.cert_pem)
            return
        _write_private(cert_path, self.cert_pem)
        _write_private(key_path, self.key_pem)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class CertificateAuthority:
    """A throw-away CA (10 days) that signs broker and client certificates."""

    def __init__(self, common_name: str = "streamer-test-ca") -> None:
        now = dt.datetime.now(dt.UTC)
        self._key = _key()
        self.name = _name(common_name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (what clients put in ssl_cafile)."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        hosts: tuple[str, ...] = (),
        expired: bool = False,
        days: int = 10,
    ) -> Issued:
        """A certificate for `common_name` (server and client use), SANs for `hosts`."""
        now = dt.datetime.now(dt.UTC)
        key = _key()
        if expired:
            not_before, not_after = now - dt.timedelta(days=3), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        # The chain a server sends: its certificate, then the CA's.
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        return Issued(cert_pem=chain, key_pem=_key_pem(key))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
