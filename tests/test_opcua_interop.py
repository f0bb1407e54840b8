"""The OPC UA driver against node-opcua's server (not our rig, not asyncua): a secured endpoint
(Basic256Sha256 SignAndEncrypt only) with a username, as an operator would set it up.

node-opcua is installed by `scripts/ensure.d/opcua.sh` (`npm ci` in tests/interop/nodeopcua);
without it these tests fail and say so: they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from drivers.base import ConnectError, Quality
from drivers.opcua import OpcUaDriver, OpcUaTag
from drivers.opcua.browse import browse, to_toml
from drivers.opcua.security import Security

PEER = Path(__file__).resolve().parent / "interop" / "nodeopcua"
PASSWORD = "interop-pw-52d1"
NS = "nsu=urn:edge-agent:interop;s=Plant."
WAIT_S = 90.0  # node-opcua creates its certificate on the first start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def nodeopcua(tmp_path: Path) -> AsyncIterator[str]:
    """node-opcua's server on a free port; yields its endpoint."""
    node = shutil.which("node")
    if node is None or not (PEER / "node_modules" / "node-opcua").is_dir():
        pytest.fail(
            "node-opcua is not installed: run `bash scripts/ensure.d/opcua.sh` "
            "(npm ci in tests/interop/nodeopcua); this test is not optional"
        )
    env = dict(os.environ, INTEROP_PASSWORD=PASSWORD)
    proc = await asyncio.create_subprocess_exec(
        node,
        "server.js",
        str(_free_port()),
        str(tmp_path / "server-pki"),
        cwd=PEER,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    pytest.fail("node-opcua server exited before it was ready")
                if line.startswith("ready "):
                    endpoint = line.split()[1]
                    break
        yield endpoint
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def tags() -> list[OpcUaTag]:
    return [
        OpcUaTag("temperature", NS + "temperature", 50.0),
        OpcUaTag("pressure", NS + "pressure", 50.0),
        OpcUaTag("count", NS + "count", 50.0),
    ]


async def test_secured_endpoint_with_username(nodeopcua: str, tmp_path: Path) -> None:
    """Untrusted at first (ConnectError naming the thumbprint); once its certificate is moved
    from rejected/ to trusted/, auto security picks Basic256Sha256 SignAndEncrypt, the user
    logs in, a read is GOOD and the subscription delivers increasing counts."""
    sec = Security(tmp_path / "pki")
    d = OpcUaDriver(
        "n",
        nodeopcua,
        tags(),
        security=sec,
        username="operator",
        password=PASSWORD,
        timeout_s=5,
        publishing_interval_ms=50,
    )
    with pytest.raises(ConnectError) as err:
        await d.connect()
    rejected = list(sec.rejected_dir.iterdir())
    assert len(rejected) == 1 and rejected[0].stem in str(err.value)
    sec.trusted_dir.mkdir(parents=True)
    rejected[0].rename(sec.trusted_dir / rejected[0].name)
    await d.connect()
    try:
        assert d.chosen == ("Basic256Sha256", "SignAndEncrypt")
        got = {s.tag: s for s in await d.read()}
        assert all(s.quality is Quality.GOOD for s in got.values())
        assert got["pressure"].value == 2.5
        it = d.subscribe()
        counts: list[float] = []
        async with asyncio.timeout(30):
            while len(counts) < 5:
                counts += [s.value for s in await anext(it) if s.tag == "count"]
        await it.aclose()  # type: ignore[attr-defined]
        assert counts == sorted(counts) and counts[-1] > counts[0]
        found = await browse(d.client, depth=3)
        text = to_toml(found, await d.client.get_namespace_array(), nodeopcua, "peer")
    finally:
        await d.aclose()
    assert 'node = "nsu=urn:edge-agent:interop;s=Plant.temperature"' in text
    assert "range = [0.0, 150.0]" in text


async def test_wrong_password_and_no_none_endpoint(nodeopcua: str, tmp_path: Path) -> None:
    """A wrong password is refused with a clear error; asking for policy None names what the
    server offers instead."""
    sec = Security(tmp_path / "pki", server_thumbprint=None)
    probe = OpcUaDriver("n", nodeopcua, tags(), security=sec, timeout_s=5)
    with pytest.raises(ConnectError):
        await probe.connect()  # untrusted: puts the certificate in rejected/
    sec.trusted_dir.mkdir(parents=True)
    for f in sec.rejected_dir.iterdir():
        f.rename(sec.trusted_dir / f.name)
    bad = OpcUaDriver(
        "n", nodeopcua, tags(), security=sec, username="operator", password="not-it", timeout_s=5
    )
    with pytest.raises(ConnectError, match="user identity"):
        await bad.connect()
    await bad.aclose()
    none = OpcUaDriver(
        "n", nodeopcua, tags(), security=Security(tmp_path / "x", policy="None"), timeout_s=5
    )
    with pytest.raises(ConnectError, match="Basic256Sha256/SignAndEncrypt"):
        await none.connect()
    await none.aclose()
