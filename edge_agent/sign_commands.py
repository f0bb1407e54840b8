"""Operator tools for signed commands: `edge-agent keygen` and `edge-agent sign`.

    edge-agent keygen --out keys/ --name ops-2026
        writes keys/ops-2026.key (Ed25519 private key, PKCS#8 PEM, mode 0600; encrypted when
        --passphrase-env names a variable holding a passphrase) and keys/ops-2026.pub (the
        public key, PEM). Copy the .pub file into each gateway's trust store folder; the key id
        is the file stem.
    edge-agent sign --key keys/ops-2026.key --agent demo-gateway --detector new.onnx \\
        [--expires-in 3600] > command.json
        prints one signed command (see `edge_agent.downlink` for the format) on stdout; publish
        it to the agent's command topic. Exactly one of --detector FILE, --parameters FILE
        (TOML or JSON: name = value, or a model TOML's [params] table with `nominal`),
        --rollback parameters|detector, --reload-config, --rebirth.

A detector is loaded and checked before it is signed; parameter values must be finite numbers.
The key id defaults to the key file's stem (`--key-id` overrides it). Nothing secret is printed:
stderr gets the command id, the content's SHA-256, the key id and its fingerprint.
Exit codes: 0 done, 2 a key, parameter or detector file cannot be used (the reason is printed).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

EXIT_INPUT = 2


class SigningError(Exception):
    """A key, parameter or detector file cannot be used; names the file and the reason."""


def _passphrase(env: str | None) -> bytes | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise SigningError(f"--passphrase-env {env}: the variable is not set or empty")
    return value.encode()


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; `SigningError` names the file and the reason."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise SigningError(
            f"{path}: the key is encrypted and needs --passphrase-env, or is not encrypted "
            "and must not get one"
        ) from None
    except ValueError:
        raise SigningError(f"{path}: not a PEM private key, or a wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def build_command(
    key: Ed25519PrivateKey | None,
    key_id: str,
    *,
    agent_id: str,
    cmd: str,
    kind: str = "",
    content: bytes | None = None,
    issued_at: int | None = None,
    expires_in_s: int = 3600,
    command_id: str | None = None,
) -> dict[str, Any]:
    """A command document; signed with `key` unless it is None."""
    from edge_agent.downlink import ENVELOPE_VERSION, signing_message  # noqa: PLC0415

    issued = int(time.time()) if issued_at is None else issued_at
    doc: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": command_id or uuid.uuid4().hex,
        "cmd": cmd,
        "agent_id": agent_id,
        "issued_at": issued,
        "expires_at": issued + expires_in_s,
    }
    if kind:
        doc["kind"] = kind
    if content is not None:
        doc["content"] = base64.b64encode(content).decode("ascii")
    if key is not None:
        message = signing_message(
            command_id=doc["id"],
            cmd=cmd,
            kind=kind,
            agent_id=agent_id,
            issued_at=doc["issued_at"],
            expires_at=doc["expires_at"],
            content_sha256=hashlib.sha256(content or b"").hexdigest(),
            key_id=key_id,
        )
        value = base64.b64encode(key.sign(message)).decode("ascii")
        doc["sig"] = {"alg": "ed25519", "key_id": key_id, "value": value}
    return doc


def read_parameters(path: Path) -> dict[str, float]:
    """name -> value from a JSON or TOML file (flat, or a `params` table with `nominal`)."""
    try:
        raw = path.read_bytes()
        doc = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except OSError as exc:
        raise SigningError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SigningError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'} ({exc})"
        ) from None
    table = doc.get("params", doc) if isinstance(doc, dict) else None
    if not isinstance(table, dict) or not table:
        raise SigningError(f"{path}: expected a table of name = value")
    out: dict[str, float] = {}
    for name, entry in table.items():
        value = entry.get("nominal") if isinstance(entry, dict) else entry
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SigningError(f"{path}: {name}: expected a number (or {{ nominal = ... }})")
        if not math.isfinite(value):
            raise SigningError(f"{path}: {name}: must be finite")
        out[str(name)] = float(value)
    return out


def parameters_content(values: dict[str, float]) -> bytes:
    """The bytes a parameter update carries: compact JSON, sorted names."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _detector_content(path: Path) -> bytes:
    from models.anomaly.detector import OnnxDetector  # noqa: PLC0415
    from models.base import ModelError  # noqa: PLC0415

    try:
        OnnxDetector.load(path)
    except ModelError as exc:
        raise SigningError(f"refusing to sign: {exc}") from None
    return path.read_bytes()


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write NAME.key (0600) and NAME.pub into --out."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    from edge_agent.trust import KEY_ID_PATTERN, fingerprint  # noqa: PLC0415

    out = Path(args.out)
    if not KEY_ID_PATTERN.match(args.name):
        print(f"error: --name {args.name!r} is not a valid key id", file=sys.stderr)
        return EXIT_INPUT
    priv_path, pub_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    try:
        passphrase = _passphrase(args.passphrase_env)
        for p in (priv_path, pub_path):
            if p.exists():
                raise SigningError(f"{p}: exists; choose another --name or move it away")
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)
    public = key.public_key()
    pub_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    print(f"private key {priv_path} (mode 0600, keep it off the gateways)")
    print(f"public key  {pub_path} (copy into each gateway's trust store)")
    print(f"key id {args.name}, fingerprint {fingerprint(public)}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Print one signed command on stdout."""
    from edge_agent.downlink import AGENT_PATTERN  # noqa: PLC0415
    from edge_agent.trust import KEY_ID_PATTERN, fingerprint  # noqa: PLC0415

    key_path = Path(args.key)
    key_id = args.key_id or key_path.stem
    try:
        if not KEY_ID_PATTERN.match(key_id):
            raise SigningError(f"key id {key_id!r} is not valid; pass --key-id")
        if not AGENT_PATTERN.match(args.agent):
            raise SigningError(f"--agent {args.agent!r} is not a valid agent id")
        if not 1 <= args.expires_in <= 86_400:
            raise SigningError("--expires-in must be 1 to 86400 s (the agent's default limit)")
        key = load_private_key(key_path, _passphrase(args.passphrase_env))
        kind, content = "", None
        if args.detector:
            cmd, kind, content = "model-update", "detector", _detector_content(Path(args.detector))
        elif args.parameters:
            values = read_parameters(Path(args.parameters))
            cmd, kind, content = "model-update", "parameters", parameters_content(values)
        elif args.rollback:
            cmd, kind = "rollback", args.rollback
        else:
            cmd = "reload-config" if args.reload_config else "rebirth"
    except SigningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if key_path.stat().st_mode & 0o077:
        print(f"warning: {key_path} is readable by others; chmod 600 it", file=sys.stderr)
    doc = build_command(
        key, key_id, agent_id=args.agent, cmd=cmd, kind=kind, content=content,
        expires_in_s=args.expires_in,
    )  # fmt: skip
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    digest = hashlib.sha256(content or b"").hexdigest()
    print(
        f"signed {cmd} {kind} for {args.agent}: id {doc['id']}, expires_at {doc['expires_at']}, "
        f"content sha256 {digest}, key {key_id} ({fingerprint(key.public_key())})",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keygen` and `sign` to the `edge-agent` command line."""
    k = subparsers.add_parser("keygen", help="create an Ed25519 key pair for signing commands")
    k.add_argument("--out", required=True, help="folder for NAME.key and NAME.pub")
    k.add_argument("--name", default="operator", help="key id (file stem), default operator")
    k.add_argument("--passphrase-env", help="encrypt the private key with this variable's value")
    k.set_defaults(func=cmd_keygen)

    s = subparsers.add_parser("sign", help="print a signed command for an agent (JSON)")
    s.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    s.add_argument("--key-id", help="key id in the trust store (default: the key file's stem)")
    s.add_argument("--passphrase-env", help="variable holding the key's passphrase")
    s.add_argument("--agent", required=True, help="id of the agent the command is for")
    s.add_argument("--expires-in", type=int, default=3600, help="seconds (default 3600)")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("--detector", metavar="FILE.onnx", help="model update: a new detector")
    what.add_argument(
        "--parameters", metavar="FILE", help="model update: parameters (TOML or JSON)"
    )
    what.add_argument("--rollback", choices=["parameters", "detector"])
    what.add_argument("--reload-config", action="store_true")
    what.add_argument("--rebirth", action="store_true")
    s.set_defaults(func=cmd_sign)
