"""The agent's trust store: the Ed25519 public keys whose signatures it accepts on commands.

A trust store is one folder. Each key is a file named `<key id>.pub`; the key id is the file's
stem (letters, digits, `_`, `.`, `-`; up to 64 characters) and is what a signed command names in
`sig.key_id`. A file holds either

- a PEM public key (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo, what
  `edge-agent keygen` writes), or
- the raw 32-byte Ed25519 public key in base64 on one line (what other tools print).

Every key also has a fingerprint, the first 16 hex digits of the SHA-256 of its raw 32 bytes;
it is logged at load and printed by `edge-agent keygen`, so an operator can check that the key
on the gateway is the one they hold. Files with another suffix are ignored.

Loading refuses, with the file and the reason (`TrustStoreError`): a missing folder, a folder or
key file anyone may write to (anyone on the gateway could add a key), a file holding a private
key, a key that is not Ed25519, bad base64 or a wrong length, an empty store. A private key's
content is never echoed in an error or a log line.

This module owns keys and signature checks only; what is signed is `edge_agent.downlink`'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = structlog.get_logger(__name__)

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
SUFFIX = ".pub"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_KEY_FILE_BYTES = 16_384


class TrustStoreError(Exception):
    """A trust store or one of its files cannot be used; names the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def fingerprint(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """One public key of the store."""

    key_id: str
    fingerprint: str
    path: Path
    public: Ed25519PublicKey


def _world_writable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IWOTH)


def parse_public_key(data: bytes, path: Path) -> Ed25519PublicKey:
    """A PEM or raw-base64 Ed25519 public key; `TrustStoreError` names `path` and the reason."""
    if b"PRIVATE KEY" in data:
        raise TrustStoreError(
            path, "holds a private key; a trust store holds public keys only (move it out and "
            "keep it secret; `edge-agent keygen` writes the public half as NAME.pub)"
        )  # fmt: skip
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise TrustStoreError(path, f"not a readable PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TrustStoreError(
                path, f"not an Ed25519 key ({type(key).__name__}); only Ed25519 is accepted"
            )
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TrustStoreError(
            path, "neither a PEM public key nor base64 (expected one base64 line of 32 bytes)"
        ) from None
    if len(raw) != RAW_KEY_BYTES:
        raise TrustStoreError(
            path, f"base64 decodes to {len(raw)} bytes; an Ed25519 public key is 32 bytes"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


class TrustStore:
    """The loaded public keys, by key id. Immutable: reload by calling `load` again."""

    def __init__(self, keys: dict[str, TrustedKey], directory: Path) -> None:
        self._keys = dict(keys)
        self.directory = directory

    @classmethod
    def load(cls, directory: str | Path) -> TrustStore:
        """Read every `*.pub` file of `directory`; any problem is a `TrustStoreError`."""
        folder = Path(directory)
        if not folder.is_dir():
            raise TrustStoreError(
                folder, "trust store folder does not exist (create it and put the operators' "
                "public keys in it as NAME.pub)"
            )  # fmt: skip
        if _world_writable(folder):
            raise TrustStoreError(folder, "trust store folder is writable by anyone; chmod o-w it")
        keys: dict[str, TrustedKey] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix != SUFFIX or not path.is_file():
                continue
            keys[path.stem] = cls._load_file(path)
        if not keys:
            raise TrustStoreError(
                folder, f"no {SUFFIX} files: add an operator's public key (`edge-agent keygen "
                "--out DIR` writes one) or disable the downlink"
            )  # fmt: skip
        seen: dict[str, str] = {}
        for key in keys.values():
            if key.fingerprint in seen:
                log.warning(
                    "trust store key twice",
                    key_id=key.key_id,
                    same_as=seen[key.fingerprint],
                    fingerprint=key.fingerprint,
                )
            seen.setdefault(key.fingerprint, key.key_id)
        log.info(
            "trust store loaded",
            directory=str(folder),
            keys=[f"{k.key_id}:{k.fingerprint}" for k in keys.values()],
        )
        return cls(keys, folder)

    @staticmethod
    def _load_file(path: Path) -> TrustedKey:
        key_id = path.stem
        if not KEY_ID_PATTERN.match(key_id):
            raise TrustStoreError(
                path, "file name is not a valid key id (letters, digits, _ . -, at most 64 "
                "characters, starting with a letter or digit)"
            )  # fmt: skip
        if _world_writable(path):
            raise TrustStoreError(path, "key file is writable by anyone; chmod o-w it")
        try:
            size = path.stat().st_size
            if size > MAX_KEY_FILE_BYTES:
                raise TrustStoreError(path, f"{size} bytes is too large for a public key file")
            data = path.read_bytes()
        except OSError as exc:
            raise TrustStoreError(path, f"cannot read ({exc.strerror})") from None
        public = parse_public_key(data, path)
        return TrustedKey(key_id, fingerprint(public), path, public)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        """The keys, sorted by key id."""
        return tuple(self._keys[k] for k in sorted(self._keys))

    def verify(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """True when `signature` is key `key_id`'s Ed25519 signature of `message`.

        False for an unknown key id, a signature of the wrong length or one that does not
        verify; use `key_id in store` first to tell an unknown key from a bad signature.
        """
        key = self._keys.get(key_id)
        if key is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            key.public.verify(signature, message)
        except InvalidSignature:
            return False
        return True
