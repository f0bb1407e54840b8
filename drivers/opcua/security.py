"""OPC UA security for the driver: endpoint choice, the client certificate and server trust.

This module owns three decisions taken before a session is opened:

- which endpoint to use: an explicit policy and mode, or `auto` (the default of a config
  without a security setting): the strongest endpoint the server offers that the client
  supports, ranked first by mode (SignAndEncrypt > Sign > None), then by policy
  (Aes256_Sha256_RsaPss > Aes128_Sha256_RsaOaep > Basic256Sha256 > None). `None` is chosen
  only when it is all the server offers, and the caller logs a warning then;
- the client's application instance certificate: a 2048-bit RSA key and a self-signed
  certificate, generated on first use under `<pki_dir>/own/` and reused afterwards;
- whether the server's certificate is trusted: its SHA-1 thumbprint (the OPC UA convention)
  equals a pinned one, or the certificate is in `<pki_dir>/trusted/`. An untrusted certificate
  is copied to `<pki_dir>/rejected/<thumbprint>.der` and refused with an error that names the
  thumbprint and how to trust it.

It does not open sessions (`drivers.opcua.driver` does) and logs nothing: secrets never pass
through here (the password stays with the driver).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua
from asyncua.crypto import security_policies as sp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Policy names as written in configs, their asyncua classes and their strength rank.
POLICIES: dict[str, type[sp.SecurityPolicy]] = {
    "None": sp.SecurityPolicyNone,
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
}
_POLICY_RANK = {cls.URI: rank for rank, cls in enumerate(POLICIES.values())}
_BY_URI = {cls.URI: name for name, cls in POLICIES.items()}
MODES: dict[str, ua.MessageSecurityMode] = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_MODE_RANK = {
    ua.MessageSecurityMode.None_: 0,
    ua.MessageSecurityMode.Sign: 1,
    ua.MessageSecurityMode.SignAndEncrypt: 2,
}
_MODE_NAME = {v: k for k, v in MODES.items()}
CERT_DAYS = 365 * 5


class SecurityError(Exception):
    """Security settings or the server's certificate do not allow a session."""


@dataclass(frozen=True)
class Security:
    """The driver's security settings. `policy`/`mode` "auto" pick the strongest endpoint."""

    pki_dir: Path
    policy: str = "auto"
    mode: str = "auto"
    server_thumbprint: str | None = None
    application_uri: str = ""

    @property
    def cert_file(self) -> Path:
        return self.pki_dir / "own" / "cert.der"

    @property
    def key_file(self) -> Path:
        return self.pki_dir / "own" / "private" / "key.pem"

    @property
    def trusted_dir(self) -> Path:
        return self.pki_dir / "trusted"

    @property
    def rejected_dir(self) -> Path:
        return self.pki_dir / "rejected"

    def app_uri(self) -> str:
        return self.application_uri or f"urn:{socket.gethostname()}:edge-agent"


@dataclass(frozen=True)
class Choice:
    """The endpoint chosen: policy name, mode name, the asyncua policy class, the server cert."""

    policy: str
    mode: str
    policy_class: type[sp.SecurityPolicy]
    message_mode: ua.MessageSecurityMode
    server_cert: bytes | None


def thumbprint(der: bytes) -> str:
    """SHA-1 thumbprint of a DER certificate, upper-case hex (how OPC UA tools show it)."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def first_cert(der: bytes) -> bytes:
    """The leaf certificate of a DER chain (servers may send the chain concatenated)."""
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        size = 4 + int.from_bytes(der[2:4], "big")
        return der[:size]
    return der


def choose(endpoints: Sequence[ua.EndpointDescription], sec: Security | None) -> Choice:
    """The endpoint to use among the server's `endpoints` (see the module docstring)."""
    want_policy = "None" if sec is None else sec.policy
    want_mode = "None" if sec is None else sec.mode
    if want_policy == "None" and want_mode in ("auto", "None"):
        want_mode = "None"
    candidates = []
    for ep in endpoints:
        name = _BY_URI.get(ep.SecurityPolicyUri)
        mode = ep.SecurityMode
        if name is None or mode not in _MODE_RANK:
            continue  # a policy the client does not support (Basic128Rsa15, Basic256)
        if want_policy not in ("auto", name):
            continue
        if want_mode != "auto" and mode != MODES[want_mode]:
            continue
        candidates.append((_MODE_RANK[mode], _POLICY_RANK[ep.SecurityPolicyUri], name, ep))
    if not candidates:
        offered = sorted(
            {
                f"{_BY_URI.get(ep.SecurityPolicyUri, ep.SecurityPolicyUri.rpartition('#')[2])}/"
                f"{_MODE_NAME.get(ep.SecurityMode, str(ep.SecurityMode))}"
                for ep in endpoints
            }
        )
        raise SecurityError(
            f"the server offers no endpoint with security_policy={want_policy!r} and "
            f"security_mode={want_mode!r}; it offers {', '.join(offered) or 'nothing'}"
        )
    _, _, name, ep = max(candidates, key=lambda c: (c[0], c[1]))
    cert = first_cert(ep.ServerCertificate) if ep.ServerCertificate else None
    return Choice(name, _MODE_NAME[ep.SecurityMode], POLICIES[name], ep.SecurityMode, cert)


def _norm_thumb(text: str) -> str:
    return text.replace(":", "").replace(" ", "").upper()


def check_server_cert(der: bytes, sec: Security, endpoint: str) -> None:
    """Raise SecurityError unless the server certificate is pinned or in the trust list."""
    thumb = thumbprint(der)
    sha256 = hashlib.sha256(der).hexdigest().upper()
    if sec.server_thumbprint is not None:
        if _norm_thumb(sec.server_thumbprint) in (thumb, sha256):
            _check_dates(der, thumb)
            return
        raise SecurityError(
            f"server certificate of {endpoint} has thumbprint {thumb}, not the pinned "
            f"server_thumbprint {sec.server_thumbprint}; if the server's certificate was "
            "renewed on purpose, pin the new thumbprint"
        )
    for path in _cert_files(sec.trusted_dir):
        try:
            if load_der(path) == der:
                _check_dates(der, thumb)
                return
        except (OSError, ValueError):
            continue
    sec.rejected_dir.mkdir(parents=True, exist_ok=True)
    (sec.rejected_dir / f"{thumb}.der").write_bytes(der)
    raise SecurityError(
        f"server certificate of {endpoint} is not trusted: thumbprint {thumb} "
        f"(subject {subject_of(der)}); to trust it, move {sec.rejected_dir / (thumb + '.der')} "
        f"into {sec.trusted_dir}/ (or run `edge-agent certs --config FILE --trust {endpoint}`), "
        f'or pin it with server_thumbprint = "{thumb}"'
    )


def _check_dates(der: bytes, thumb: str) -> None:
    cert = x509.load_der_x509_certificate(der)
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SecurityError(
            f"server certificate {thumb} is outside its validity "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})"
        )


def _cert_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt"))


def load_der(path: Path) -> bytes:
    """A certificate file (DER or PEM) as DER bytes."""
    raw = path.read_bytes()
    if raw.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(raw).public_bytes(serialization.Encoding.DER)
    return raw


def subject_of(der: bytes) -> str:
    """The certificate's subject, RFC 4514 text."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def trust(der: bytes, sec: Security) -> Path:
    """Add a server certificate to the trust list; returns the file written."""
    sec.trusted_dir.mkdir(parents=True, exist_ok=True)
    path = sec.trusted_dir / f"{thumbprint(der)}.der"
    path.write_bytes(der)
    rejected = sec.rejected_dir / path.name
    if rejected.exists():
        rejected.unlink()
    return path


def ensure_client_cert(sec: Security) -> tuple[Path, Path]:
    """(cert, key) files of the client, generated when missing or expired."""
    cert_file, key_file = sec.cert_file, sec.key_file
    if cert_file.is_file() and key_file.is_file():
        cert = x509.load_der_x509_certificate(cert_file.read_bytes())
        if cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1):
            return cert_file, key_file
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    uri = sec.app_uri()
    host = socket.gethostname()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "edge-agent"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent"),
        ]
    )
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri), x509.DNSName(host)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file.touch(mode=0o600, exist_ok=True)
    key_file.chmod(0o600)
    key_file.write_bytes(key_bytes)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return cert_file, key_file


def cert_uri(cert_file: Path) -> str:
    """The application URI in a certificate's SubjectAltName (the client must announce it)."""
    cert = x509.load_der_x509_certificate(cert_file.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ""
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


@dataclass(frozen=True)
class CertInfo:
    """What `edge-agent certs` shows about one certificate."""

    path: Path
    thumbprint: str
    subject: str
    not_after: datetime
    uri: str


def cert_info(path: Path) -> CertInfo:
    """Thumbprint, subject, expiry and application URI of a certificate file."""
    der = load_der(path)
    cert = x509.load_der_x509_certificate(der)
    return CertInfo(
        path,
        thumbprint(der),
        cert.subject.rfc4514_string(),
        cert.not_valid_after_utc,
        cert_uri(path) if path.suffix.lower() == ".der" else "",
    )


def trusted_certs(sec: Security) -> list[CertInfo]:
    """Every certificate in the trust list that can be read."""
    out = []
    for path in _cert_files(sec.trusted_dir):
        try:
            out.append(cert_info(path))
        except (OSError, ValueError):
            continue
    return out
