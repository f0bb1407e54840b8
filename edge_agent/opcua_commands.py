"""OPC UA commands of the `edge-agent` CLI: `browse` (address space -> tag config) and `certs`.

`edge-agent browse opc.tcp://HOST:PORT [--depth N]` prints a ready-to-paste `[[drivers]]`
entry for the variables it finds (`drivers.opcua.browse`). `edge-agent certs` shows the
client's application instance certificate (generating it on first use) and the trusted server
certificates; `--trust ENDPOINT` fetches a server's certificate, prints its thumbprint and adds
it to the trust list. The PKI folder is `<agent.state_dir>/pki` of `--config` (or the driver's
`pki_dir`), else `--pki-dir`, else `state/pki`.

Heavy imports (asyncua, cryptography) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any


def _security(args: argparse.Namespace, policy: str = "auto") -> Any:
    """The Security settings the command uses: from the config's OPC UA driver, or flags."""
    from drivers.opcua.config import OpcUaDriverConfig  # noqa: PLC0415
    from drivers.opcua.security import Security  # noqa: PLC0415

    if getattr(args, "config", None):
        from edge_agent.cli import _load_or_exit, _state_dir  # noqa: PLC0415

        cfg, path = _load_or_exit(args.config)
        state = _state_dir(cfg, path)
        drivers = [d for d in getattr(cfg, "drivers", []) if isinstance(d, OpcUaDriverConfig)]
        if args.driver:
            drivers = [d for d in drivers if d.name == args.driver]
        if drivers:
            return drivers[0].security(state)
        return Security(pki_dir=state / "pki", policy=policy)
    return Security(pki_dir=Path(args.pki_dir or "state/pki"), policy=policy)


def _add_pki_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="agent config: its state_dir holds the PKI")
    p.add_argument("--driver", default=None, help="OPC UA driver of --config (default: first)")
    p.add_argument("--pki-dir", default=None, help="PKI folder without --config (state/pki)")


def _print_cert(title: str, info: Any) -> None:
    print(f"{title}: {info.path}")
    print(f"  thumbprint (SHA-1): {info.thumbprint}")
    print(f"  subject:            {info.subject}")
    print(f"  expires:            {info.not_after:%Y-%m-%d %H:%M} UTC")
    if info.uri:
        print(f"  application URI:    {info.uri}")


async def _server_certs(endpoint: str, timeout_s: float) -> list[bytes]:
    from asyncua.client.client import Client  # noqa: PLC0415

    from drivers.opcua.security import first_cert  # noqa: PLC0415

    client = Client(endpoint, timeout=timeout_s)
    endpoints = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout_s + 1)
    certs: list[bytes] = []
    for ep in endpoints:
        if ep.ServerCertificate and first_cert(ep.ServerCertificate) not in certs:
            certs.append(first_cert(ep.ServerCertificate))
    return certs


def cmd_certs(args: argparse.Namespace) -> int:
    from drivers.opcua import security as sec_mod  # noqa: PLC0415

    sec = _security(args)
    existed = sec.cert_file.is_file()
    cert_file, _ = sec_mod.ensure_client_cert(sec)
    _print_cert(
        "client certificate" + ("" if existed else " (generated now)"), sec_mod.cert_info(cert_file)
    )
    print(f"  private key:        {sec.key_file}")
    print("  (a server that checks clients needs this certificate in its trust list)")
    if args.trust:
        try:
            certs = asyncio.run(_server_certs(args.trust, args.timeout))
        except (OSError, TimeoutError, Exception) as exc:  # any failure: report, exit 1
            print(f"error: cannot get the certificate of {args.trust}: {exc!r}", file=sys.stderr)
            return 1
        if not certs:
            print(f"error: {args.trust} offers no certificate (only policy None?)", file=sys.stderr)
            return 1
        for der in certs:
            path = sec_mod.trust(der, sec)
            print(f"trusted now: {path}")
            print(f"  thumbprint (SHA-1): {sec_mod.thumbprint(der)}")
            print(f"  subject:            {sec_mod.subject_of(der)}")
            print("  compare this thumbprint with the one the server shows before relying on it")
    trusted = sec_mod.trusted_certs(sec)
    print(f"trusted server certificates in {sec.trusted_dir}: {len(trusted)}")
    for info in trusted:
        print(f"  {info.thumbprint}  {info.subject}  expires {info.not_after:%Y-%m-%d}")
    return 0


async def _browse(args: argparse.Namespace) -> str:
    from drivers.base import ConnectError  # noqa: PLC0415
    from drivers.opcua import OpcUaDriver, OpcUaTag  # noqa: PLC0415
    from drivers.opcua.browse import browse, to_toml  # noqa: PLC0415

    password = os.environ.get(args.password_env) if args.password_env else None
    sec = _security(args, policy=args.security)
    probe = OpcUaTag("server_state", "i=2259")  # Server_ServerStatus_State, on every server
    driver = OpcUaDriver(
        args.name,
        args.endpoint,
        [probe],
        timeout_s=args.timeout,
        username=args.username,
        password=password,
        security=sec,
    )
    try:
        await driver.connect()
    except ConnectError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        client = driver.client
        found = await browse(client, depth=args.depth)
        namespaces = await client.get_namespace_array()
    finally:
        await driver.aclose()
    return to_toml(found, namespaces, args.endpoint, args.name)


def cmd_browse(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from edge_agent.logs import setup_logging  # noqa: PLC0415

    setup_logging(getattr(args, "log_level", "info"))  # to stderr: stdout is the TOML
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    print(asyncio.run(_browse(args)), end="")
    return 0


def register(subparsers: Any) -> None:
    """Add `browse` and `certs` to the `edge-agent` command line."""
    b = subparsers.add_parser(
        "browse", help="walk an OPC UA server's address space and print a tag config"
    )
    b.add_argument("endpoint", help="opc.tcp://HOST:PORT[/path]")
    b.add_argument("--depth", type=int, default=4, help="levels below Objects (default 4)")
    b.add_argument("--name", default="plc", help="driver name in the output")
    b.add_argument(
        "--security",
        default="auto",
        choices=["auto", "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"],
        help="security policy (default: the strongest the server offers)",
    )
    b.add_argument("--username", default=None)
    b.add_argument("--password-env", default=None, help="environment variable with the password")
    b.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    _add_pki_args(b)
    b.set_defaults(func=cmd_browse)

    c = subparsers.add_parser(
        "certs", help="show (and create) the OPC UA client certificate; trust a server's"
    )
    c.add_argument("--trust", metavar="ENDPOINT", default=None, help="trust this server's cert")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    _add_pki_args(c)
    c.set_defaults(func=cmd_certs)
