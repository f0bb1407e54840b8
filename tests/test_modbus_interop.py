"""Interoperability beyond Python: the driver against a libmodbus server (C, compiled here from
tests/interop/modbus_server.c) and the rig's Modbus PLC read by mbpoll (a C client).

Both come from Debian (libmodbus-dev, mbpoll; `scripts/ensure.d/modbus.sh` installs them). A
missing one fails the test with that hint; it is never skipped.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from drivers.base import Quality
from drivers.modbus import ModbusDriver, ModbusTag
from hil.plc_modbus import ModbusPlc
from hil.tags import DRIVE_UNIT, tags_of
from tests.fixtures.plc import PLAUSIBLE, plausible

SOURCE = Path(__file__).parent / "interop" / "modbus_server.c"
HINT = "install the Modbus test peers: bash scripts/ensure.d/modbus.sh (apt: libmodbus-dev mbpoll)"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found; {HINT}")
    return path


@pytest.fixture(scope="module")
def server_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The libmodbus server, compiled with gcc into a temporary directory."""
    gcc, pkg_config = _need("gcc"), _need("pkg-config")
    flags = subprocess.run(
        [pkg_config, "--cflags", "--libs", "libmodbus"],
        capture_output=True,
        text=True,
        check=False,
    )
    if flags.returncode != 0:
        pytest.fail(f"libmodbus is not installed ({flags.stderr.strip()}); {HINT}")
    out = tmp_path_factory.mktemp("interop") / "modbus_server"
    subprocess.run([gcc, "-O1", "-o", str(out), str(SOURCE), *flags.stdout.split()], check=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def libmodbus_port(server_binary: Path) -> Iterator[int]:
    """A running libmodbus server; yields its port."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(server_binary), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def holding(i: int) -> int:
    return (i * 7) & 0xFFFF


def test_driver_reads_every_table_from_libmodbus(libmodbus_port: int) -> None:
    """Registers of several types and orders, coils and discrete inputs decode as the C server
    holds them, with several requests in flight on the connection."""
    tags = [
        ModbusTag("u16", 5),
        ModbusTag("i32", 10, "int32"),
        ModbusTag("f32_cdab", 20, "float32", "CDAB"),
        ModbusTag("u64_dcba", 40, "uint64", "DCBA"),
        ModbusTag("in", 600, table="input"),
        ModbusTag("bit3", 9, "bool", bit=3),
        *[ModbusTag(f"c{i}", i, "bool", table="coil") for i in (0, 1, 300)],
        *[ModbusTag(f"d{i}", i, "bool", table="discrete") for i in (998, 999)],
    ]
    want = {
        "u16": 35.0,
        "i32": float((holding(10) << 16) | holding(11)),
        "f32_cdab": struct.unpack(">f", struct.pack(">HH", holding(21), holding(20)))[0],
        # DCBA: the wire bytes, register after register, are the value little-endian.
        "u64_dcba": float(
            struct.unpack("<Q", struct.pack(">4H", *(holding(i) for i in range(40, 44))))[0]
        ),
        "in": 1600.0,
        "bit3": float((holding(9) >> 3) & 1),
        "c0": 1.0, "c1": 0.0, "c300": 1.0, "d998": 0.0, "d999": 1.0,
    }  # fmt: skip

    async def run() -> list[dict[str, float]]:
        d = ModbusDriver(
            "c", "127.0.0.1", libmodbus_port, tags, timeout_s=2, max_outstanding=4, max_gap=2
        )
        assert len(d.requests) >= 5
        await d.connect()
        try:
            rounds = []
            for _ in range(20):
                got = await d.read()
                assert all(s.quality is Quality.GOOD for s in got), got
                rounds.append({s.tag: s.value for s in got})
            assert d.errors == {}
            return rounds
        finally:
            await d.aclose()

    for got in asyncio.run(run()):
        assert got == pytest.approx(want, rel=1e-6)


def test_driver_writes_to_libmodbus(libmodbus_port: int) -> None:
    """FC 5, 6 and 16 writes are acknowledged by libmodbus and read back equal."""
    tags = [
        ModbusTag("w16", 100, writable=True),
        ModbusTag("wf64", 110, "float64", "CDAB", writable=True),
        ModbusTag("wtxt", 120, "string", length=4, writable=True),
        ModbusTag("wcoil", 2, "bool", table="coil", writable=True),
    ]

    async def run() -> None:
        d = ModbusDriver("c", "127.0.0.1", libmodbus_port, tags, timeout_s=2)
        await d.connect()
        try:
            r1 = await d.write("w16", 4321)
            r2 = await d.write("wf64", -0.125)
            r3 = await d.write("wtxt", "libmb")
            r4 = await d.write("wcoil", True)
            assert [r.outcome for r in (r1, r2, r3, r4)] == ["written"] * 4
            assert (r1.old, r1.new) == (700.0, 4321.0)
            assert (r2.new, r3.new, r4.old, r4.new) == (-0.125, "libmb", 0.0, 1.0)
            got = {s.tag: s for s in await d.read()}
            assert got["w16"].value == 4321 and got["wtxt"].text == "libmb"
        finally:
            await d.aclose()

    asyncio.run(run())


@pytest_asyncio.fixture
async def drive_plc() -> AsyncIterator[ModbusPlc]:
    async with plausible(ModbusPlc(tags_of("drive"))) as plc:
        yield plc


async def test_mbpoll_reads_the_rig_plc(drive_plc: ModbusPlc) -> None:
    """mbpoll, a C client, reads the drive's input registers as the tag table encodes them."""
    mbpoll = _need("mbpoll")
    proc = await asyncio.create_subprocess_exec(
        mbpoll,
        *("-m", "tcp", "-a", str(DRIVE_UNIT), "-t", "3", "-r", "1", "-c", "11", "-1"),
        *("-p", str(drive_plc.port), "-o", "2", drive_plc.host),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    regs: dict[int, int] = {}
    for line in out.decode().splitlines():
        if line.startswith("[") and "]:" in line:
            ref, value = line.split(":", 1)
            regs[int(ref.strip("[]")) - 1] = int(value.split()[0]) & 0xFFFF
    assert len(regs) == 11
    assert regs[0] == 1450 and regs[10] == 1  # motor_speed, status_word
    assert regs[3] == 485  # motor_temp 48.5 degC at scale 0.1
    f = struct.unpack(">f", struct.pack(">HH", regs[2], regs[1]))[0]  # motor_current, CDAB
    assert f == PLAUSIBLE["motor_current"]
