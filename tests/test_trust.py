"""The trust store: which public keys load, which files are refused and why, and verify()."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from edge_agent.trust import TrustStore, TrustStoreError, fingerprint


def pem_public(key: Ed25519PrivateKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def raw_b64_public(key: Ed25519PrivateKey) -> bytes:
    """The public half as one base64 line of its 32 raw bytes."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw) + b"\n"


def pem_private(key: Ed25519PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    """Two fresh Ed25519 keys."""
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def test_pem_and_raw_base64_keys_load_by_file_stem(
    tmp_path: Path, keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]
) -> None:
    """Both formats load, the key id is the file stem, other suffixes are ignored."""
    a, b = keys
    (tmp_path / "ops-a.pub").write_bytes(pem_public(a))
    (tmp_path / "ops_b.2026.pub").write_bytes(raw_b64_public(b))
    (tmp_path / "README.txt").write_text("not a key")
    with capture_logs() as logs:
        store = TrustStore.load(tmp_path)
    assert [k.key_id for k in store.keys] == ["ops-a", "ops_b.2026"]
    assert "ops-a" in store and "README" not in store and len(store) == 2
    assert store.keys[0].fingerprint == fingerprint(a.public_key())
    assert logs[-1]["event"] == "trust store loaded"
    assert f"ops-a:{fingerprint(a.public_key())}" in logs[-1]["keys"]


def test_verify_accepts_only_the_named_keys_signature(
    tmp_path: Path, keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]
) -> None:
    """A good signature verifies; another message, key, unknown id or cut signature do not."""
    a, b = keys
    (tmp_path / "a.pub").write_bytes(pem_public(a))
    (tmp_path / "b.pub").write_bytes(pem_public(b))
    store = TrustStore.load(tmp_path)
    sig = a.sign(b"message")
    assert store.verify("a", b"message", sig)
    assert not store.verify("a", b"messagE", sig)
    assert not store.verify("b", b"message", sig)
    assert not store.verify("nobody", b"message", sig)
    assert not store.verify("a", b"message", sig[:63])
    assert not store.verify("a", b"message", bytes(64))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("private", "holds a private key"),
        ("ec", "not an Ed25519 key"),
        (b"not base64 at all!", "neither a PEM public key nor base64"),
        (base64.b64encode(bytes(31)), "decodes to 31 bytes"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a readable PEM"),
    ],
    ids=["private-key", "ec-key", "bad-base64", "short-key", "bad-pem"],
)
def test_bad_key_files_are_refused_with_file_and_reason(
    tmp_path: Path,
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
    content: object,
    reason: str,
) -> None:
    """Each unusable key file is a TrustStoreError naming the file and what is wrong."""
    if content == "private":
        data = pem_private(keys[0])
    elif content == "ec":
        data = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    else:
        assert isinstance(content, bytes)
        data = content
    path = tmp_path / "ops.pub"
    path.write_bytes(data)
    with pytest.raises(TrustStoreError) as err:
        TrustStore.load(tmp_path)
    assert err.value.path == path and reason in err.value.reason
    assert str(path) in str(err.value)


def test_private_key_content_never_appears_in_the_error(
    tmp_path: Path, keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]
) -> None:
    """A private key dropped into the store is refused without echoing any of it."""
    pem = pem_private(keys[0])
    (tmp_path / "oops.pub").write_bytes(pem)
    with capture_logs() as logs, pytest.raises(TrustStoreError) as err:
        TrustStore.load(tmp_path)
    body = b"".join(pem.splitlines()[1:-1]).decode()
    for chunk in (body[i : i + 16] for i in range(0, len(body) - 16, 8)):
        assert chunk not in str(err.value) and chunk not in repr(logs)


def test_store_folder_problems_are_refused(
    tmp_path: Path, keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]
) -> None:
    """Missing folder, empty folder, world-writable folder or key, bad key id: each refused."""
    with pytest.raises(TrustStoreError, match="does not exist"):
        TrustStore.load(tmp_path / "missing")
    with pytest.raises(TrustStoreError, match=r"no \.pub files"):
        TrustStore.load(tmp_path)
    key = tmp_path / "ops.pub"
    key.write_bytes(pem_public(keys[0]))
    key.chmod(0o666)
    with pytest.raises(TrustStoreError, match="key file is writable by anyone"):
        TrustStore.load(tmp_path)
    key.chmod(0o644)
    tmp_path.chmod(0o777)
    try:
        with pytest.raises(TrustStoreError, match="folder is writable by anyone"):
            TrustStore.load(tmp_path)
    finally:
        tmp_path.chmod(0o755)
    (tmp_path / "-bad id.pub").write_bytes(pem_public(keys[1]))
    with pytest.raises(TrustStoreError, match="not a valid key id"):
        TrustStore.load(tmp_path)


def test_the_same_key_twice_is_loaded_with_a_warning(
    tmp_path: Path, keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]
) -> None:
    """Two files with one key both work, and the duplication is logged once."""
    (tmp_path / "one.pub").write_bytes(pem_public(keys[0]))
    (tmp_path / "two.pub").write_bytes(raw_b64_public(keys[0]))
    with capture_logs() as logs:
        store = TrustStore.load(tmp_path)
    assert len(store) == 2
    warnings = [e for e in logs if e["event"] == "trust store key twice"]
    assert len(warnings) == 1 and warnings[0]["same_as"] == "one"
