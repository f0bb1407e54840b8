"""Writes through the OPC UA driver against the rig's process PLC: only writable tags, sent as
the node's own data type, read back and compared; refusals by the server are results."""

from __future__ import annotations

import math
import struct
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua

from drivers.base import ConnectError
from drivers.opcua import OpcUaDriver, OpcUaTag
from drivers.opcua.write import WriteRefusedError
from edge_agent.config import ConfigError, parse_config
from hil.plc_opcua import OpcUaPlc
from hil.tags import AGENT_NODES, NAMESPACE_URI, WritableNode, tags_of
from tests.fixtures.plc import PLAUSIBLE

NODES = (
    *AGENT_NODES,
    WritableNode("limit", "Double", "a double"),
    WritableNode("ratio", "Float", "a float32"),
    WritableNode("message", "String", "a text"),
    WritableNode("enable", "Boolean", "a flag"),
)
ZERO: dict[str, float | str] = {"message": "", "enable": False}


def node(path: str) -> str:
    return f"nsu={NAMESPACE_URI};s={path}"


TAGS = [
    *(OpcUaTag(n.name, node(f"Agent.{n.name}"), writable=True) for n in NODES),
    OpcUaTag("alarm_word_as_int32", node("Agent.alarm_word"), writable=True, data_type="Int32"),
    OpcUaTag("flow", node("Loop.flow")),  # read-only in config
    OpcUaTag("flow_forced", node("Loop.flow"), writable=True),  # read-only on the PLC
    OpcUaTag("ghost", node("Agent.ghost"), writable=True),  # no such node
    OpcUaTag("alien", "nsu=urn:elsewhere;s=x", writable=True),  # no such namespace
]


@pytest_asyncio.fixture
async def plc() -> AsyncIterator[OpcUaPlc]:
    async with OpcUaPlc(tags_of("process"), writable=NODES) as p:
        await p.write_values(PLAUSIBLE, time.time())
        yield p


@pytest_asyncio.fixture
async def driver(plc: OpcUaPlc) -> AsyncIterator[OpcUaDriver]:
    d = OpcUaDriver("process", plc.endpoint, TAGS, timeout_s=2.0)
    await d.connect()
    try:
        yield d
    finally:
        await d.aclose()


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


# (tag, value written, value the PLC then holds)
CASES: list[tuple[str, float | str, float | str]] = [
    ("alarm_word", 0x8001, 0x8001),
    ("health", 2, 2),
    ("heartbeat", 4_000_000_000.0, 4_000_000_000),  # a whole float is fine for an integer
    ("limit", 42.25, 42.25),
    ("ratio", 0.1, f32(0.1)),  # sent as float32: the read-back equals the rounded value
    ("message", "pump A", "pump A"),
    ("enable", True, True),
]


async def test_write_lands_in_the_nodes_type_and_reports_old_and_new(
    plc: OpcUaPlc, driver: OpcUaDriver
) -> None:
    """A write is sent as the node's DataType, lands on the PLC, and its result carries the old
    value and the read-back one; a second write of the same value sees it as old and new."""
    for name, value, stored in CASES:
        result = await driver.write(name, value)
        assert result.outcome == "written" and result.ok and result.reason == "", result
        zero = ZERO.get(name, 0.0)
        assert result.old == (float(zero) if isinstance(zero, bool) else zero), result
        assert result.new == (stored if isinstance(stored, str) else float(stored)), result
        held = await plc.written(name)
        assert held == stored and type(held) is type(stored), (name, held)
        again = await driver.write(name, value)
        assert again.ok and again.old == again.new == result.new, again
    # Only the value was sent: what the server stored has no SourceTimestamp of ours (many
    # PLCs refuse a write that carries timestamps or a status code).
    dv = await driver.client.get_node(plc.node_id("alarm_word")).read_data_value()
    assert dv.SourceTimestamp is None and dv.Value is not None
    assert dv.Value.VariantType == ua.VariantType.UInt16


REFUSED: list[tuple[str, float | str, str]] = [
    ("alarm_word", 70000, r"UInt16.*not a whole number in \[0, 65535\]"),
    ("alarm_word", -1, "not a whole number"),
    ("health", 1.5, "not a whole number"),
    ("health", "2", "needs a number"),
    ("message", 3.0, "needs a str"),
    ("enable", 2, "needs 0/1"),
    ("limit", math.nan, "cannot be written"),
    ("ratio", 1e39, "float32 range"),
]


async def test_read_only_tags_and_values_the_type_cannot_hold_are_refused(
    plc: OpcUaPlc, driver: OpcUaDriver
) -> None:
    """A tag not declared writable and an unknown tag are refused before any I/O, naming the
    fix; a value outside the node's type is refused too (the PLC's value stays), not truncated."""
    with pytest.raises(WriteRefusedError, match="writable = true"):
        await driver.write("flow", 1.0)
    with pytest.raises(WriteRefusedError, match="no tag 'nope'"):
        await driver.write("nope", 1.0)
    assert (await driver.read())[len(NODES) + 1].value == PLAUSIBLE["flow"]
    for name, value, why in REFUSED:
        before = await plc.written(name)
        with pytest.raises(WriteRefusedError, match=why):
            await driver.write(name, value)
        assert await plc.written(name) == before, name


async def test_server_refusals_are_rejected_results_not_exceptions(
    plc: OpcUaPlc, driver: OpcUaDriver
) -> None:
    """A node the PLC does not let us write and a Variant of the wrong type come back as
    `rejected` results carrying the status code name, a missing node as `not_sent`; the PLC's
    values stay as they were."""
    forced = await driver.write("flow_forced", 12.0)
    assert forced.outcome == "rejected" and not forced.ok
    # asyncua answers BadUserAccessDenied for a non-writable node and an anonymous user; a
    # PLC may say BadNotWritable: both are the server refusing the write.
    assert forced.reason in ("BadUserAccessDenied", "BadNotWritable"), forced
    assert forced.old == PLAUSIBLE["flow"] and forced.new is None
    mistyped = await driver.write("alarm_word_as_int32", 5)
    assert (mistyped.outcome, mistyped.reason) == ("rejected", "BadTypeMismatch"), mistyped
    assert await plc.written("alarm_word") == 0
    assert (await driver.read())[len(NODES) + 1].value == PLAUSIBLE["flow"]
    # A node id the server does not know, or a namespace it does not have: nothing is sent.
    ghost = await driver.write("ghost", 1)
    assert (ghost.outcome, ghost.reason) == ("not_sent", "BadNodeIdUnknown"), ghost
    alien = await driver.write("alien", 1)
    assert (alien.outcome, alien.reason) == ("not_sent", "not_found"), alien


async def test_writes_without_a_link_fail_without_escaping(plc: OpcUaPlc) -> None:
    """Before connect a write raises ConnectError; once the PLC is gone a write is a failed
    result or a ConnectError, nothing else; after the PLC returns, writes work again."""
    d = OpcUaDriver("process", plc.endpoint, TAGS, timeout_s=1.0)
    with pytest.raises(ConnectError):
        await d.write("health", 1)
    await d.connect()
    try:
        assert (await d.write("health", 1)).ok
        await plc.stop()
        try:
            result = await d.write("health", 2)
        except ConnectError:
            pass
        else:
            assert result.outcome in ("not_sent", "unknown") and not result.ok, result
        await plc.start()
        await d.connect()
        after = await d.write("health", 0)
        assert after.ok and after.old == 1.0  # the PLC kept the value across its restart
    finally:
        await d.aclose()


def _cfg(tags: str) -> dict[str, object]:
    return tomllib.loads(f"""
[model]
kind = "loop"
[model.inputs]
[model.outputs]
[[drivers]]
kind = "opcua"
name = "plc"
endpoint = "opc.tcp://127.0.0.1:4840/"
{tags}
""")


def test_config_writable_and_data_type_reach_the_driver(tmp_path: Path) -> None:
    """`writable` and `data_type` in TOML build a writable tag; the default is read-only."""
    cfg = parse_config(
        _cfg("""
[[drivers.tags]]
name = "a"
node = "ns=2;s=a"
writable = true
data_type = "UInt16"
[[drivers.tags]]
name = "b"
node = "ns=2;s=b"
"""),
        tmp_path / "agent.toml",
    )
    d = cfg.drivers[0]
    assert d.kind == "opcua"
    a, b = d.build(tmp_path)._tags
    assert (a.writable, a.data_type) == (True, "UInt16")
    assert (b.writable, b.data_type) == (False, None)


def test_config_data_type_problems_name_key_and_fix(tmp_path: Path) -> None:
    """An unknown data_type and a data_type on a read-only tag are reported with their keys."""
    with pytest.raises(ConfigError) as err:
        parse_config(
            _cfg("""
[[drivers.tags]]
name = "a"
node = "ns=2;s=a"
writable = true
data_type = "DateTime"
[[drivers.tags]]
name = "b"
node = "ns=2;s=b"
data_type = "Double"
"""),
            tmp_path / "agent.toml",
        )
    text = "\n".join(err.value.problems)
    assert "drivers[0].tags[0].data_type: 'DateTime' is not a type that can be written" in text
    assert "drivers[0].tags[1].data_type: only for writable = true tags" in text
