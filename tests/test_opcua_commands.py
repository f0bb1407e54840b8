"""`edge-agent browse` and `edge-agent certs` against the rig's process PLC, as a user runs them."""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

from asyncua import ua

from drivers.opcua import OpcUaDriver
from drivers.opcua import security as sec_mod
from edge_agent.config import parse_config
from hil.plc_opcua import OpcUaPlc
from hil.tags import tags_of
from tests.fixtures.plc import opcua_tags

MODEL = '[model]\nkind = "loop"\n[model.inputs]\n[model.outputs]\n'


async def cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run `edge-agent ARGS` in a child process; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_browse_prints_config_the_loader_accepts(opcua_plc: OpcUaPlc, tmp_path: Path) -> None:
    """The output parses with the agent's config loader and names every rig tag with its
    namespace-URI node id and engineering unit; properties are not tags."""
    rc, out, err = await cli("browse", opcua_plc.endpoint, "--depth", "3", cwd=tmp_path)
    assert rc == 0, err
    cfg = parse_config(tomllib.loads(MODEL + out), tmp_path / "browsed.toml")
    drv = cfg.drivers[0]
    assert drv.kind == "opcua" and drv.endpoint == opcua_plc.endpoint
    by_name = {t.name: t for t in drv.tags}
    rig = tags_of("process")
    assert set(by_name) == {t.name for t in rig}
    for t in rig:
        assert by_name[t.name].node == f"nsu=urn:edge-agent:hil;s=Loop.{t.name}"
        assert by_name[t.name].unit == t.unit
    assert "# Loop/flow: Double" in out


async def test_browse_depth_limits_the_walk(opcua_plc: OpcUaPlc, tmp_path: Path) -> None:
    """At depth 1 only Objects' direct children are seen: the rig's variables are one deeper."""
    rc, out, err = await cli("browse", opcua_plc.endpoint, "--depth", "1", cwd=tmp_path)
    assert rc == 0, err
    assert "Loop.flow" not in out and out.startswith("# 0 variables found")


async def test_certs_generates_shows_and_trusts(tmp_path: Path) -> None:
    """`certs` creates the client certificate once and shows it; `--trust` adds a secured
    server's certificate, after which a config naming that PKI folder connects."""
    pki = tmp_path / "pki"
    rc, out, err = await cli("certs", "--pki-dir", str(pki))
    assert rc == 0, err
    assert "(generated now)" in out
    thumb = sec_mod.thumbprint((pki / "own" / "cert.der").read_bytes())
    assert thumb in out and "expires:" in out and "subject:" in out
    rc, again, err = await cli("certs", "--pki-dir", str(pki))
    assert rc == 0 and "(generated now)" not in again and thumb in again
    plc = OpcUaPlc(
        tags_of("process"),
        security_policies=(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,),
        pki_dir=tmp_path / "server",
    )
    async with plc:
        rc, out, err = await cli("certs", "--pki-dir", str(pki), "--trust", plc.endpoint)
        assert rc == 0, err
        assert plc.server_certificate is not None
        server_thumb = sec_mod.thumbprint(plc.server_certificate)
        assert f"trusted now: {pki / 'trusted' / server_thumb}.der" in out
        d = OpcUaDriver(
            "p", plc.endpoint, opcua_tags(), security=sec_mod.Security(pki), timeout_s=3
        )
        await d.connect()
        await d.aclose()
        assert d.chosen == ("Basic256Sha256", "SignAndEncrypt")


async def test_certs_with_config_uses_state_dir(tmp_path: Path) -> None:
    """With --config, the certificate goes to <agent.state_dir>/pki next to the config."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nstate_dir = "st"\n'
        + MODEL
        + '[[drivers]]\nkind = "opcua"\nname = "p"\nendpoint = "opc.tcp://127.0.0.1:1/"\n'
        + '[[drivers.tags]]\nname = "a"\nnode = "ns=2;s=a"\n'
    )
    rc, out, err = await cli("certs", "--config", str(cfg))
    assert rc == 0, err
    assert (tmp_path / "st" / "pki" / "own" / "cert.der").is_file()
    assert str(tmp_path / "st" / "pki" / "own" / "cert.der") in out
