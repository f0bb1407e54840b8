"""The OPC UA driver against the rig's process PLC: groups, batching, per-item errors, filters,
quality mapping and the config schema that builds it."""

from __future__ import annotations

import asyncio
import math
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asyncua.ua.status_codes import StatusCodes

from drivers.base import Quality, Sample
from drivers.opcua import OpcUaDriver, OpcUaTag
from drivers.opcua.fastdecode import Publish
from drivers.opcua.subscription import in_sequence, status_name, status_reason
from drivers.opcua.tags import OpcUaGroup, item_sample
from edge_agent.config import ConfigError, load_config, parse_config
from hil.plc_opcua import OpcUaPlc
from hil.tags import NAMESPACE_URI, TagDef
from tests.fixtures.plc import PLAUSIBLE, opcua_tags

WAIT_S = 20.0  # bound for "eventually"; not a timing assertion


def node(name: str) -> str:
    return f"nsu={NAMESPACE_URI};s=Loop.{name}"


async def collect_until(
    it: AsyncIterator[list[Sample]], done: object, limit: int = 10_000
) -> dict[str, list[Sample]]:
    """Samples per tag from `it` until `done(seen)` is true (bounded by WAIT_S)."""
    seen: dict[str, list[Sample]] = {}
    async with asyncio.timeout(WAIT_S):
        for _ in range(limit):
            for s in await anext(it):
                seen.setdefault(s.tag, []).append(s)
            if done(seen):  # type: ignore[operator]
                return seen
    raise AssertionError("condition not reached")


async def test_items_created_in_batches_and_bad_node_is_one_bad_tag() -> None:
    """450 items in batches of 200 (3 calls): every good tag delivers, the bad node id is BAD
    not_found and counted, the unknown namespace too; nothing raises."""
    defs = [TagDef(f"t{i:03d}", "process", "", "", 0, 1000) for i in range(450)]
    async with OpcUaPlc(defs) as plc:
        await plc.write_values({d.name: float(i) for i, d in enumerate(defs)}, time.time())
        tags = [OpcUaTag(d.name, node(d.name), 50.0) for d in defs]
        tags.insert(17, OpcUaTag("ghost", node("ghost"), 50.0))
        tags.append(OpcUaTag("alien", "nsu=urn:elsewhere;s=x", 50.0))
        d = OpcUaDriver("p", plc.endpoint, tags, publishing_interval_ms=50, items_per_call=200)
        await d.connect()
        it = d.subscribe()
        try:
            seen = await collect_until(it, lambda s: len(s) == len(tags))
        finally:
            await it.aclose()  # type: ignore[attr-defined]
            await d.aclose()
    assert d.item_calls == 3  # 450 resolvable items (449 + ghost) in calls of <= 200
    assert seen["ghost"][0].quality is Quality.BAD and seen["ghost"][0].reason == "not_found"
    assert seen["alien"][0].quality is Quality.BAD and seen["alien"][0].reason == "not_found"
    assert d.item_errors["not_found"] == 2
    for i, df in enumerate(defs):
        s = seen[df.name][-1]
        assert s.quality is Quality.GOOD and s.value == float(i)


async def test_poll_group_and_subscribe_group_both_deliver(opcua_plc: OpcUaPlc) -> None:
    """A poll group is read at its interval and a subscribe group pushes changes, side by side."""
    tags = [
        OpcUaTag("flow", node("flow"), 20.0, group="fast"),
        OpcUaTag("level", node("level"), group="slow"),
        OpcUaTag("pressure", node("pressure"), group="slow"),
    ]
    groups = [OpcUaGroup("fast", "subscribe", 20.0), OpcUaGroup("slow", "poll", 50.0)]
    d = OpcUaDriver("p", opcua_plc.endpoint, tags, groups=groups)
    await d.connect()
    it = d.subscribe()
    try:
        first = await collect_until(it, lambda s: {"flow", "level", "pressure"} <= set(s))
        assert first["level"][-1].value == PLAUSIBLE["level"]
        await opcua_plc.write_values({"flow": 11.0, "level": 1.125}, time.time())
        await collect_until(
            it,
            lambda s: (
                any(x.value == 11.0 for x in s.get("flow", []))
                and any(x.value == 1.125 for x in s.get("level", []))
            ),
        )
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await d.aclose()
    assert d.item_calls == 1  # only the subscribe group creates monitored items


async def test_absolute_deadband_filters_small_changes(opcua_plc: OpcUaPlc) -> None:
    """With an absolute DataChangeFilter deadband of 1.0, a 0.25 step is not reported, 5.0 is."""
    tags = [OpcUaTag("flow", node("flow"), 10.0, deadband=1.0, deadband_type="absolute")]
    d = OpcUaDriver("p", opcua_plc.endpoint, tags, publishing_interval_ms=20)
    await d.connect()
    it = d.subscribe()
    try:
        await collect_until(it, lambda s: "flow" in s)
        base = PLAUSIBLE["flow"]
        await opcua_plc.write_values({"flow": base + 0.25}, time.time())
        await asyncio.sleep(0.2)  # several sampling intervals pass: the server filters it
        await opcua_plc.write_values({"flow": base + 5.0}, time.time())
        seen = await collect_until(it, lambda s: "flow" in s)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await d.aclose()
    assert [s.value for s in seen["flow"]] == [base + 5.0]
    assert d.item_errors.total() == 0


async def test_percent_deadband_item_delivers(opcua_plc: OpcUaPlc) -> None:
    """A percent deadband item is accepted by the rig's server and delivers its value, next to
    an unfiltered tag (servers that refuse it give a BAD "filter" tag: see the status map)."""
    tags = [
        OpcUaTag("flow", node("flow"), 20.0, deadband=2.0, deadband_type="percent"),
        OpcUaTag("level", node("level"), 20.0),
    ]
    d = OpcUaDriver("p", opcua_plc.endpoint, tags, publishing_interval_ms=20)
    await d.connect()
    it = d.subscribe()
    try:
        seen = await collect_until(it, lambda s: {"flow", "level"} <= set(s))
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await d.aclose()
    assert seen["flow"][0].value == PLAUSIBLE["flow"]
    assert seen["level"][-1].quality is Quality.GOOD
    assert d.item_errors.total() == 0


def test_item_status_codes_map_to_counted_reasons() -> None:
    """Monitored-item failures map to short reasons: unknown node, refused filter, access."""
    assert status_reason(StatusCodes.BadNodeIdUnknown) == "not_found"
    assert status_reason(StatusCodes.BadMonitoredItemFilterUnsupported) == "filter"
    assert status_reason(StatusCodes.BadDeadbandFilterInvalid) == "filter"
    assert status_reason(StatusCodes.BadNotReadable) == "access"
    assert status_reason(StatusCodes.BadInternalError) == "status"
    assert status_name(StatusCodes.BadNodeIdUnknown) == "BadNodeIdUnknown"


async def test_reconnect_cycles_leave_one_session(opcua_plc: OpcUaPlc) -> None:
    """connect/subscribe/aclose five times against a running server: one session at a time on
    the server, none left after the last close."""
    d = OpcUaDriver("p", opcua_plc.endpoint, opcua_tags(), publishing_interval_ms=50)
    for _ in range(5):
        await d.connect()
        it = d.subscribe()
        await anext(it)
        assert opcua_plc.session_count() == 1
        await it.aclose()  # type: ignore[attr-defined]
        await d.aclose()
    # CloseSession was answered: the server has forgotten the session by then.
    assert opcua_plc.session_count() == 0


@pytest.mark.parametrize(
    ("code", "value", "quality", "reason"),
    [
        (0, 1.5, Quality.GOOD, ""),
        (0x40000000, 1.5, Quality.UNCERTAIN, "uncertain"),
        (0x80340000, 1.5, Quality.BAD, "not_found"),  # BadNodeIdUnknown
        (0x80000000, 1.5, Quality.BAD, "status"),
        (0, math.nan, Quality.BAD, "nan"),
        (0, "text", Quality.BAD, "type"),
        (0, [1.0, 2.0], Quality.BAD, "type"),
        (0, True, Quality.GOOD, ""),
        (0, 3, Quality.GOOD, ""),
        (0x40000000, 7, Quality.UNCERTAIN, "uncertain"),
        (0x40000000, math.inf, Quality.BAD, "nan"),
        (0x40000000, "text", Quality.BAD, "type"),
    ],
)
def test_status_code_and_value_map_to_quality(
    code: int, value: object, quality: Quality, reason: str
) -> None:
    """Severity bits give the quality; NaN, text and arrays are BAD with their reason."""
    s = item_sample("t", (1, value, code, 100.0, 200.0), 300.0)
    assert (s.quality, s.reason) == (quality, reason)
    assert s.source_ts == 100.0 and s.recv_ts == 300.0 and s.server_ts == 200.0
    if quality is not Quality.BAD:
        assert s.value == float(value)  # type: ignore[arg-type]  # the GOOD cases are numbers


def test_server_timestamp_used_when_source_missing() -> None:
    """No SourceTimestamp: the ServerTimestamp is the sample's time, then the arrival time."""
    assert item_sample("t", (1, 2.0, 0, None, 200.0), 300.0).source_ts == 200.0
    none = item_sample("t", (1, 2.0, 0, None, None), 300.0)
    assert none.source_ts == 300.0 and math.isnan(none.server_ts)


async def test_rig_timestamps_and_uncertain_status_kept_on_every_path(
    opcua_plc: OpcUaPlc,
) -> None:
    """Values the PLC stamped an hour ago keep that SourceTimestamp and their (recent)
    ServerTimestamp, and an Uncertain StatusCode is an UNCERTAIN sample with both timestamps,
    through a Read, a poll group and a subscription alike."""
    now = time.time()
    old = now - 3600.0
    await opcua_plc.write_values({"level": 1.125}, old)
    await opcua_plc.write_status("pressure", 2.75, 0x40900000, old, now - 5.0)  # LastUsableValue
    tags = [
        OpcUaTag("level", node("level"), 20.0),
        OpcUaTag("pressure", node("pressure"), 20.0),
        OpcUaTag("flow", node("flow"), group="slow"),
        OpcUaTag("level_polled", node("level"), group="slow"),
        OpcUaTag("pressure_polled", node("pressure"), group="slow"),
    ]
    d = OpcUaDriver(
        "p", opcua_plc.endpoint, tags, groups=[OpcUaGroup("slow", "poll", 50.0)], timeout_s=2
    )
    await d.connect()
    it = d.subscribe()
    try:
        read = {s.tag: s for s in await d.read()}
        seen = await collect_until(it, lambda s: {t.name for t in tags} <= set(s))
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await d.aclose()
    pushed = {name: got[0] for name, got in seen.items()}
    for path, got in (("read", read), ("subscription and poll", pushed)):
        for name in ("level", "level_polled"):
            s = got[name]
            assert (s.quality, s.value) == (Quality.GOOD, 1.125), (path, s)
            assert s.source_ts == pytest.approx(old, abs=1e-3), (path, s)
            assert now - 1.0 <= s.server_ts <= s.recv_ts, (path, s)  # stamped at the write
        for name in ("pressure", "pressure_polled"):
            s = got[name]
            assert (s.quality, s.reason, s.value) == (Quality.UNCERTAIN, "uncertain", 2.75)
            assert s.source_ts == pytest.approx(old, abs=1e-3), (path, s)
            assert s.server_ts == pytest.approx(now - 5.0, abs=1e-3), (path, s)
        assert got["flow"].quality is Quality.GOOD and not math.isnan(got["flow"].server_ts)


def _cfg(driver: str) -> dict[str, object]:
    text = f"""
[model]
kind = "loop"
[model.inputs]
[model.outputs]
{driver}
"""
    return tomllib.loads(text)


def test_config_groups_security_and_tag_settings_build_the_driver(tmp_path: Path) -> None:
    """The TOML keys reach the driver: groups, per-tag item settings, PKI under the state dir."""
    cfg = parse_config(
        _cfg(
            """
[[drivers]]
kind = "opcua"
name = "plc"
endpoint = "opc.tcp://127.0.0.1:4840/"
items_per_call = 50
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
[[drivers.groups]]
name = "slow"
mode = "poll"
poll_interval_ms = 1000
[[drivers.tags]]
name = "a"
node = "ns=2;s=a"
queue_size = 5
discard = "newest"
server_deadband = 2.5
server_deadband_type = "percent"
[[drivers.tags]]
name = "b"
node = "ns=2;s=b"
group = "slow"
"""
        ),
        tmp_path / "agent.toml",
    )
    dcfg = cfg.drivers[0]
    assert dcfg.kind == "opcua"
    drv = dcfg.build(tmp_path / "state")
    assert isinstance(drv, OpcUaDriver)
    assert drv.items_per_call == 50
    assert drv.security is not None and drv.security.pki_dir == tmp_path / "state" / "pki"
    assert (drv.security.policy, drv.security.mode) == ("Basic256Sha256", "SignAndEncrypt")
    a, b = drv._tags
    assert (a.queue_size, a.discard_oldest, a.deadband, a.deadband_type) == (
        5,
        False,
        2.5,
        "percent",
    )
    assert b.group == "slow" and drv._groups["slow"] == OpcUaGroup("slow", "poll", 1000.0)


def test_config_problems_name_key_and_fix(tmp_path: Path) -> None:
    """An unknown group, a poll group without interval and a bad thumbprint are all reported."""
    with pytest.raises(ConfigError) as err:
        parse_config(
            _cfg(
                """
[[drivers]]
kind = "opcua"
name = "plc"
endpoint = "opc.tcp://127.0.0.1:4840/"
server_thumbprint = "xyz"
[[drivers.groups]]
name = "slow"
mode = "poll"
[[drivers.tags]]
name = "a"
node = "ns=2;s=a"
group = "fast"
"""
            ),
            tmp_path / "agent.toml",
        )
    text = "\n".join(err.value.problems)
    assert "drivers[0].tags[0].group: no group 'fast'" in text
    assert "drivers[0].groups[0].poll_interval_ms: required" in text
    assert "drivers[0].server_thumbprint" in text


def test_demo_config_still_valid_with_auto_security() -> None:
    """configs/demo.toml parses unchanged; its OPC UA driver defaults to automatic security."""
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "demo.toml")
    opc = next(d for d in cfg.drivers if d.kind == "opcua")
    drv = opc.build(root / "state")
    assert isinstance(drv, OpcUaDriver) and drv.security is not None
    assert (drv.security.policy, drv.security.mode) == ("auto", "auto")


def test_publish_responses_are_ordered_by_sequence_across_the_wrap() -> None:
    """Responses done together go on in sequence order per subscription, also where the
    32-bit sequence number wraps; a keep-alive carries the next number."""
    top = 2**32 - 1
    pubs = [Publish(0, 1, n) for n in (2, top, 1, top - 1)] + [Publish(0, 7, 5), Publish(0, 7, 4)]
    ordered = [(p.subscription_id, p.sequence_number) for p in in_sequence(pubs)]
    assert ordered == [(1, top - 1), (1, top), (1, 1), (1, 2), (7, 4), (7, 5)]
    assert [p.sequence_number for p in in_sequence([Publish(0, 1, 9), Publish(0, 1, 8)])] == [8, 9]
