"""Sparkplug B edge node: the state machine, the tag adapter, and an independent decoder.

The unit tests drive `SparkplugNode` directly. The interoperability tests publish through a
real mosquitto and let pysparkplug (in its own environment, prepared by
scripts/ensure.d/sparkplug.sh; it pins paho-mqtt<2) subscribe, decode and print what it read,
and act as the primary host (STATE, NCMD rebirth) with its own encoder.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.sparkplug import (
    DataType,
    DeltaError,
    Message,
    MetricSpec,
    Point,
    Quality,
    SparkplugNode,
    SparkplugUsageError,
    ddata_from_deltas,
    delta_points,
    device_metric_specs,
)
from edge_agent.sparkplug import sparkplug_b_pb2 as pb
from tests.fixtures.mqtt import Mosquitto, poll_until
from tests.fixtures.sparkplug import Decoder

STATE_TOPIC = "spBv1.0/STATE/scada"
TIMEOUT_S = 20.0


def _clock() -> Callable[[], int]:
    t = iter(range(1_000_000, 10**12, 10))
    return lambda: next(t)


def make_node(primary: str | None = None, bd_seq: int = 0, **kw: Any) -> SparkplugNode:
    devices = {
        "pump": device_metric_specs([("flow", "m3/h"), ("pressure", "bar")]),
        "tank": [MetricSpec("level", DataType.DOUBLE, "m"), MetricSpec("ok", DataType.BOOLEAN)],
    }
    node_metrics = [MetricSpec("Properties/Version", DataType.STRING)]
    return SparkplugNode(
        "plant", "gw1", primary, devices=devices, node_metrics=node_metrics, bd_seq=bd_seq,
        clock_ms=_clock(), **kw,
    )  # fmt: skip


def decode(msg: Message) -> Any:
    return pb.Payload.FromString(msg.payload)


def born(node: SparkplugNode) -> tuple[Message, ...]:
    node.will()
    return node.on_connect()


def state(online: bool, ts: int) -> bytes:
    return json.dumps({"online": online, "timestamp": ts}).encode()


def ncmd(*metrics: dict[str, Any]) -> bytes:
    p = pb.Payload(timestamp=1)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def delta(value: float | None = 1.5, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "tag": "flow", "ts": 1_700_000_000.5, "source_ts": 1_700_000_000.25, "value": value,
        "quality": "good", "reason": "", "unit": "m3/h", "predicted": 1.25, "residual": 0.25,
        "score": 0.1, "cusum": None, "prediction": "good", "alarm": "none",
    }  # fmt: skip
    d.update(kw)
    return d


# -- bdSeq and the will ----------------------------------------------------------------------


def test_will_and_nbirth_carry_the_same_bdseq_and_the_next_one_is_exposed() -> None:
    """NDEATH (the will) and the NBIRTH after it share bdSeq; next_bd_seq is one more."""
    node = make_node(bd_seq=41)
    will = node.will()
    assert (will.kind, will.topic, will.qos, will.retain) == (
        "NDEATH", "spBv1.0/plant/NDEATH/gw1", 1, False,
    )  # fmt: skip
    death = decode(will)
    assert not death.HasField("seq")
    assert [(m.name, m.datatype, m.long_value) for m in death.metrics] == [("bdSeq", 4, 41)]
    assert node.next_bd_seq == 42
    nbirth = decode(node.on_connect()[0])
    bd = next(m for m in nbirth.metrics if m.name == "bdSeq")
    assert (bd.long_value, bd.datatype, nbirth.seq) == (41, DataType.INT64, 0)


def test_bdseq_advances_per_session_wraps_at_255_and_survives_failed_connects() -> None:
    """Each connected session ends with bdSeq + 1 (255 -> 0); a failed connect reuses it."""
    node = make_node(bd_seq=255)
    node.will()
    node.on_disconnect()  # CONNECT failed: no session, same bdSeq
    assert decode(node.will()).metrics[0].long_value == 255
    node.on_connect()
    node.on_disconnect()
    assert node.bd_seq == 0
    assert decode(node.will()).metrics[0].long_value == 0
    assert node.next_bd_seq == 1
    node.on_connect()
    assert decode(node.will()).metrics[0].long_value == 1  # reconnect without on_disconnect()


# -- seq, aliases, births ----------------------------------------------------------------------


def test_seq_is_zero_in_nbirth_then_counts_every_message_and_wraps_after_255() -> None:
    """NBIRTH has seq 0; DBIRTHs and data take 1, 2, ... and 255 is followed by 0."""
    node = make_node()
    births = born(node)
    assert [m.kind for m in births] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    seqs = [m.seq for m in births]
    for i in range(300):
        seqs.append(node.ddata("tank", [Point("level", float(i), 5)]).seq)
    expected = [i % 256 for i in range(len(seqs))]
    assert seqs == expected
    assert [decode(m).seq for m in births] == [0, 1, 2]


def test_births_name_and_alias_every_metric_and_data_uses_aliases_only() -> None:
    """Births carry name, alias and datatype; aliases are unique; data has alias only."""
    node = make_node()
    births = [decode(m) for m in born(node)]
    metrics = [m for b in births for m in b.metrics]
    assert all(m.HasField("name") and m.HasField("alias") and m.datatype for m in metrics)
    aliases = [m.alias for m in metrics]
    assert len(set(aliases)) == len(aliases)
    assert {m.name for m in births[0].metrics} >= {"bdSeq", "Node Control/Rebirth"}
    rebirth = next(m for m in births[0].metrics if m.name == "Node Control/Rebirth")
    assert rebirth.datatype == DataType.BOOLEAN and rebirth.boolean_value is False
    unit = next(m for m in births[1].metrics if m.name == "flow/value").properties
    assert list(unit.keys) == ["engUnit"] and unit.values[0].string_value == "m3/h"
    data = decode(node.ddata("tank", [Point("level", 2.0, 7), Point("ok", True, 7)]))
    assert [(m.HasField("name"), m.HasField("datatype")) for m in data.metrics] == [
        (False, False), (False, False),
    ]  # fmt: skip
    assert [m.alias for m in data.metrics] == [
        node.alias_of("level", "tank"), node.alias_of("ok", "tank"),
    ]  # fmt: skip
    assert [m.timestamp for m in data.metrics] == [7, 7]


def test_rebirth_carries_current_values_and_historical_data_does_not_change_them() -> None:
    """Replayed (historical) points are flagged and leave the value a rebirth sends alone."""
    node = make_node()
    born(node)
    node.ddata("tank", [Point("level", 3.0, 100, Quality.STALE)])
    late = decode(node.ddata("tank", [Point("level", 9.0, 50)], historical=True))
    assert [m.is_historical for m in late.metrics] == [True]
    dbirth = decode(node.birth()[2])
    level = next(m for m in dbirth.metrics if m.name == "level")
    assert (level.double_value, level.timestamp) == (3.0, 100)
    props = level.properties
    assert list(props.keys) == ["engUnit", "Quality"]
    assert (props.values[0].string_value, props.values[1].int_value) == ("m", 500)
    ok = next(m for m in dbirth.metrics if m.name == "ok")
    assert ok.is_null and ok.WhichOneof("value") is None


def test_signed_integers_use_twos_complement_of_their_width() -> None:
    """Int8/Int32 go in int_value and Int64 in long_value as two's complement."""
    specs = [
        MetricSpec("i8", DataType.INT8), MetricSpec("i32", DataType.INT32),
        MetricSpec("i64", DataType.INT64), MetricSpec("u16", DataType.UINT16),
    ]  # fmt: skip
    node = SparkplugNode("g", "e", node_metrics=specs, clock_ms=_clock())
    born(node)
    data = decode(node.ndata([Point("i8", -1, 1), Point("i32", -2, 1), Point("i64", -3, 1),
                              Point("u16", 65535, 1)]))  # fmt: skip
    assert [m.WhichOneof("value") for m in data.metrics] == [
        "int_value", "int_value", "long_value", "int_value",
    ]  # fmt: skip
    assert [getattr(m, m.WhichOneof("value")) for m in data.metrics] == [
        255, 2**32 - 2, 2**64 - 3, 65535,
    ]  # fmt: skip


def test_data_before_birth_and_bad_points_raise_without_consuming_seq() -> None:
    """Data needs a birth; an undeclared metric or a wrong type raises and changes nothing."""
    node = make_node()
    with pytest.raises(SparkplugUsageError, match="hold the data"):
        node.ddata("tank", [Point("level", 1.0, 1)])
    born(node)
    with pytest.raises(SparkplugUsageError, match="not declared"):
        node.ddata("tank", [Point("level", 1.0, 1), Point("nope", 1.0, 1)])
    with pytest.raises(SparkplugUsageError, match="not a bool"):
        node.ddata("tank", [Point("ok", 1, 1)])
    with pytest.raises(SparkplugUsageError, match="was not declared"):
        node.ddata("boiler", [])
    assert node.ddata("tank", [Point("level", 1.0, 1)]).seq == 3


def test_ddeath_stops_device_data_until_its_dbirth() -> None:
    """After a DDEATH the device's data raises until dbirth(); both take the next seq."""
    node = make_node()
    born(node)
    death = node.ddeath("tank")
    assert (death.kind, death.topic, death.seq) == ("DDEATH", "spBv1.0/plant/DDEATH/gw1/tank", 3)
    with pytest.raises(SparkplugUsageError, match="DDEATH"):
        node.ddata("tank", [Point("level", 1.0, 1)])
    assert node.dbirth("tank").seq == 4
    assert node.ddata("tank", [Point("level", 1.0, 1)]).seq == 5


# -- NCMD ----------------------------------------------------------------------------------------


def test_rebirth_ncmd_by_name_or_alias_gives_nbirth_and_dbirths_with_seq_reset() -> None:
    """Node Control/Rebirth = true (by name or by alias) yields NBIRTH seq 0 + DBIRTHs."""
    node = make_node(bd_seq=5)
    born(node)
    node.ddata("tank", [Point("level", 1.0, 1)])
    for metric in (
        {"name": "Node Control/Rebirth", "boolean_value": True},
        {"alias": node.alias_of("Node Control/Rebirth"), "boolean_value": True},
    ):
        r = node.on_ncmd(ncmd(metric))
        assert r.rejected is None and not r.disconnect
        assert [(m.kind, m.seq) for m in r.publish] == [("NBIRTH", 0), ("DBIRTH", 1), ("DBIRTH", 2)]
        bd = next(m for m in decode(r.publish[0]).metrics if m.name == "bdSeq")
        assert bd.long_value == 5  # same MQTT session, same bdSeq
    assert (
        node.on_ncmd(ncmd({"name": "Node Control/Rebirth", "boolean_value": False})).publish == ()
    )
    assert node.counters["rebirths"] == 2


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xff\xff", "not-sparkplug"),
        (b"", "no-metrics"),
        (b"x" * 70_000, "too-large"),
        (ncmd({"name": "Node Control/Rebirth", "string_value": "true"}), "bad-rebirth"),
    ],
)
def test_malformed_ncmd_is_rejected_with_a_reason_and_counted(payload: bytes, code: str) -> None:
    """A bad NCMD returns a rejection naming the problem, counts it, and changes nothing."""
    node = make_node()
    born(node)
    r = node.on_ncmd(payload)
    assert r.rejected is not None and code in r.rejected and r.publish == ()
    assert node.counters["ncmd_rejected"] == 1 and node.counters[f"ncmd_rejected.{code}"] == 1
    assert node.ddata("tank", [Point("level", 1.0, 1)]).seq == 3


@given(st.binary(max_size=300))
def test_no_ncmd_payload_raises(payload: bytes) -> None:
    """Whatever bytes arrive on NCMD, the node answers with a Reaction, never an exception."""
    node = make_node()
    born(node)
    r = node.on_ncmd(payload)
    assert r.rejected is not None or all(m.kind in ("NBIRTH", "DBIRTH") for m in r.publish)


# -- primary host STATE -----------------------------------------------------------------------


def test_births_wait_for_the_primary_host_and_stale_state_is_ignored() -> None:
    """With a primary host, births come with its online STATE; older STATEs are ignored."""
    node = make_node("scada")
    assert node.subscriptions() == [("spBv1.0/plant/NCMD/gw1", 1), (STATE_TOPIC, 1)]
    assert born(node) == ()
    assert node.on_state(state(False, 100), STATE_TOPIC).publish == ()
    r = node.on_state(state(True, 200), STATE_TOPIC)
    assert r.host_online and [m.kind for m in r.publish] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    stale = node.on_state(state(False, 150), STATE_TOPIC)
    assert stale.host_online and not stale.disconnect and node.born
    assert node.counters["state_stale"] == 1
    assert node.on_state(state(True, 250), STATE_TOPIC).publish == ()  # already born


def test_host_offline_gives_ndeath_and_disconnect_then_data_is_held_until_it_returns() -> None:
    """Offline STATE: NDEATH + disconnect; next session has bdSeq + 1 and waits for online."""
    node = make_node("scada", bd_seq=9)
    born(node)
    node.on_state(state(True, 10), STATE_TOPIC)
    r = node.on_state(state(False, 10), STATE_TOPIC)  # the host's will repeats its birth ts
    assert r.disconnect and not r.host_online and [m.kind for m in r.publish] == ["NDEATH"]
    assert decode(r.publish[0]).metrics[0].long_value == 9
    assert not node.born
    with pytest.raises(SparkplugUsageError):
        node.ddata("tank", [Point("level", 1.0, 1)])
    node.on_disconnect()
    assert decode(node.will()).metrics[0].long_value == 10
    assert node.on_connect() == ()
    assert node.on_state(state(False, 10), STATE_TOPIC).publish == ()  # retained, re-read
    back = node.on_state(state(True, 20), STATE_TOPIC)
    assert back.publish[0].kind == "NBIRTH" and node.born
    bd = next(m for m in decode(back.publish[0]).metrics if m.name == "bdSeq")
    assert bd.long_value == 10
    assert node.ddata("tank", [Point("level", 1.0, 1)], historical=True).seq == 3


def test_rebirth_request_while_host_offline_is_deferred() -> None:
    """A rebirth NCMD while the primary host is offline publishes nothing (births follow)."""
    node = make_node("scada")
    born(node)
    r = node.on_ncmd(ncmd({"name": "Node Control/Rebirth", "boolean_value": True}))
    assert r.publish == () and r.rejected is None and not r.host_online
    assert node.counters["ncmd_rebirth_deferred"] == 1


@pytest.mark.parametrize(
    ("payload", "topic", "code"),
    [
        (b"ONLINE", STATE_TOPIC, "not-json"),
        (b"\xff", STATE_TOPIC, "not-json"),
        (b"[true, 1]", STATE_TOPIC, "not-object"),
        (b'{"online": "true", "timestamp": 1}', STATE_TOPIC, "bad-online"),
        (b'{"online": true}', STATE_TOPIC, "bad-timestamp"),
        (b'{"online": true, "timestamp": true}', STATE_TOPIC, "bad-timestamp"),
        (b'{"online": true, "timestamp": -5}', STATE_TOPIC, "bad-timestamp"),
        (b'{"online": true, "timestamp": 1}', "spBv1.0/STATE/other", "wrong-host"),
        (b" " * 2000, STATE_TOPIC, "too-large"),
    ],
)
def test_malformed_state_is_rejected_with_a_reason_and_counted(
    payload: bytes, topic: str, code: str
) -> None:
    """A bad STATE returns a rejection naming the problem, counts it, and changes nothing."""
    node = make_node("scada")
    born(node)
    r = node.on_state(payload, topic)
    assert r.rejected is not None and code in r.rejected
    assert (r.publish, r.host_online, node.born) == ((), False, False)
    assert node.counters[f"state_rejected.{code}"] == 1


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_state_payload_raises(payload: bytes) -> None:
    """Whatever bytes arrive on STATE, the node answers with a Reaction, never an exception."""
    node = make_node("scada")
    born(node)
    r = node.on_state(payload, STATE_TOPIC)
    assert r.rejected is not None or r.host_online in (True, False)


def test_state_without_primary_host_is_ignored() -> None:
    """A node without a primary host births on connect and ignores STATE messages."""
    node = make_node()
    assert node.subscriptions() == [("spBv1.0/plant/NCMD/gw1", 1)]
    assert len(born(node)) == 3
    assert node.on_state(state(False, 1)).publish == ()
    assert node.born and node.counters["state_ignored_no_primary_host"] == 1


# -- the adapter -----------------------------------------------------------------------------------


def test_tag_delta_maps_to_named_metrics_with_quality_and_timestamps() -> None:
    """A tag delta becomes `<tag>/<field>` points: ms timestamps, Quality codes, nulls."""
    points = {p.name: p for p in delta_points("flow", delta(None, cusum=math.nan))}
    assert sorted(points) == sorted(
        f"flow/{f}"
        for f in ("value", "predicted", "residual", "score", "cusum", "quality", "reason", "alarm")
    )
    assert points["flow/value"] == Point("flow/value", None, 1_700_000_000_250, Quality.GOOD)
    assert points["flow/predicted"] == Point(
        "flow/predicted", 1.25, 1_700_000_000_500, Quality.GOOD
    )
    assert points["flow/cusum"].value is None
    assert points["flow/alarm"] == Point("flow/alarm", "none", 1_700_000_000_500)
    uncertain = {p.name: p for p in delta_points("flow", delta(quality="bad", prediction="none"))}
    assert uncertain["flow/value"].quality == Quality.BAD
    assert uncertain["flow/residual"].quality == Quality.BAD
    mid = {p.name: p for p in delta_points("flow", delta(quality="uncertain"))}
    assert mid["flow/value"].quality == Quality.STALE


@pytest.mark.parametrize(
    "bad",
    [{"quality": "great"}, {"value": "1.0"}, {"ts": None}, {"prediction": None}, {"alarm": 3}],
)
def test_malformed_delta_raises_delta_error_naming_the_field(bad: dict[str, Any]) -> None:
    """A delta with a wrong field raises DeltaError naming tag and field; seq is untouched."""
    node = make_node()
    born(node)
    with pytest.raises(DeltaError, match=f"tag 'flow': '{next(iter(bad))}'"):
        ddata_from_deltas(node, "pump", [delta(**bad)])
    with pytest.raises(DeltaError, match="'tag' string"):
        ddata_from_deltas(node, "pump", [delta(tag=None)])
    assert ddata_from_deltas(node, "pump", [delta()]).seq == 3


# -- interoperability: a real broker and an independent decoder ----------------------------------


class NodeLink:
    """The node's MQTT side: paho 2.x on its own thread; NCMD/STATE messages go to `inbox`."""

    def __init__(self, broker: Mosquitto, node: SparkplugNode) -> None:
        self.broker, self.node = broker, node
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client: mqtt.Client | None = None

    def connect(self) -> None:
        """Connect with a fresh will, subscribe, and publish what on_connect() gives."""
        will = self.node.will()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw1", protocol=mqtt.MQTTv311)
        c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, bytes(msg.payload)))
        c.connect(self.broker.host, self.broker.port, keepalive=10)
        c.loop_start()
        for topic, qos in self.node.subscriptions():
            c.subscribe(topic, qos)
        self.client = c
        self.publish(self.node.on_connect())

    def publish(self, messages: tuple[Message, ...] | list[Message]) -> None:
        assert self.client is not None
        for m in messages:
            self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain).wait_for_publish(5)

    async def handle_next(self) -> None:
        """Feed the next NCMD/STATE to the node and carry out its reaction."""
        topic, payload = "", b""

        def arrived() -> bool:
            nonlocal topic, payload
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return False
            return True

        assert await poll_until(arrived, TIMEOUT_S), "no NCMD/STATE reached the node"
        if topic.startswith("spBv1.0/STATE/"):
            r = self.node.on_state(payload, topic)
        else:
            r = self.node.on_ncmd(payload)
        assert r.rejected is None
        self.publish(r.publish)
        if r.disconnect:
            self.disconnect()

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
            self.node.on_disconnect()


@pytest.fixture
def link_factory(mosquitto: Mosquitto) -> Iterator[Callable[[SparkplugNode], NodeLink]]:
    links: list[NodeLink] = []

    def make(node: SparkplugNode) -> NodeLink:
        links.append(NodeLink(mosquitto, node))
        return links[-1]

    yield make
    for link in links:
        link.disconnect()


def _expected_birth(node: SparkplugNode, device: str | None, specs: list[MetricSpec]) -> list[Any]:
    return [(s.name, node.alias_of(s.name, device), s.datatype.name) for s in specs]


def _decoded_birth(doc: dict[str, Any]) -> list[Any]:
    return [(m["name"], m["alias"], m["datatype"]) for m in doc["metrics"]]


async def test_independent_decoder_reads_births_data_rebirth_and_seq_wrap(
    decoder: Decoder, link_factory: Callable[[SparkplugNode], NodeLink]
) -> None:
    """pysparkplug decodes our births, live and historical data, a rebirth it asked for."""
    node = make_node("scada", bd_seq=3, data_qos=1)
    link = link_factory(node)
    link.connect()  # births are held: the primary host has not said it is online
    decoder.send({"cmd": "state", "host": "scada", "online": True, "timestamp": 1000})
    await link.handle_next()
    assert node.born
    await decoder.wait_for(lambda _: len(decoder.messages()) >= 3)
    nbirth, pump, tank = decoder.messages()[:3]
    assert (nbirth["type"], nbirth["seq"], nbirth["bd_seq"]) == ("NBIRTH", 0, 3)
    assert (pump["type"], pump["device"], pump["seq"]) == ("DBIRTH", "pump", 1)
    assert (tank["type"], tank["device"], tank["seq"]) == ("DBIRTH", "tank", 2)
    pump_specs = device_metric_specs([("flow", "m3/h"), ("pressure", "bar")])
    assert _decoded_birth(pump) == _expected_birth(node, "pump", pump_specs)
    assert pump["metrics"][0]["properties"] == {"engUnit": "m3/h"}
    assert [m["name"] for m in nbirth["metrics"]] == [
        "bdSeq", "Node Control/Rebirth", "Properties/Version",
    ]  # fmt: skip

    live = [delta(2.5), delta(None, tag="pressure", quality="bad", prediction="none")]
    link.publish([ddata_from_deltas(node, "pump", live)])
    late = [delta(1.0, ts=1_699_999_000.0, source_ts=1_699_999_000.0)]
    link.publish([ddata_from_deltas(node, "pump", late, historical=True)])
    await decoder.wait_for(lambda _: len(decoder.messages("DDATA")) >= 2)
    d_live, d_late = decoder.messages("DDATA")
    assert (d_live["seq"], d_late["seq"]) == (3, 4)
    sent = [p for d in live for p in delta_points(d["tag"], d)]
    assert [(m["name"], m["value"], m["is_null"], m["timestamp"]) for m in d_live["metrics"]] == [
        (p.name, p.value, p.value is None, p.timestamp_ms) for p in sent
    ]
    assert [m["properties"].get("Quality") for m in d_live["metrics"]] == [
        None if p.quality in (None, Quality.GOOD) else int(p.quality) for p in sent
    ]
    assert d_live["metrics"][8]["properties"] == {"Quality": 0}  # pressure/value, bad
    declared = {s.name: s.datatype.name for s in pump_specs}
    assert [(m["alias"], m["datatype"]) for m in d_live["metrics"]] == [
        (node.alias_of(p.name, "pump"), declared[p.name]) for p in sent
    ]
    assert not any(m["is_historical"] for m in d_live["metrics"])
    assert all(m["is_historical"] for m in d_late["metrics"])
    assert d_late["metrics"][0]["timestamp"] == 1_699_999_000_000

    decoder.send({"cmd": "rebirth", "edge_node": "gw1"})
    await link.handle_next()
    await decoder.wait_for(lambda _: len(decoder.messages("NBIRTH")) >= 2)
    await decoder.wait_for(lambda _: len(decoder.messages("DBIRTH")) >= 4)
    rebirth = decoder.messages()[5:8]
    assert [(d["type"], d["seq"]) for d in rebirth] == [("NBIRTH", 0), ("DBIRTH", 1), ("DBIRTH", 2)]
    assert rebirth[0]["bd_seq"] == 3
    flow = next(m for m in rebirth[1]["metrics"] if m["name"] == "flow/value")
    assert flow["value"] == 2.5  # the current value, not the historical 1.0

    link.publish([node.ddata("tank", [Point("level", float(i), 1000 + i)]) for i in range(260)])
    await decoder.wait_for(lambda _: len(decoder.messages("DDATA")) >= 262)
    tank_data = decoder.messages("DDATA")[2:]
    assert [d["seq"] for d in tank_data] == [(3 + i) % 256 for i in range(260)]
    assert [d["metrics"][0]["value"] for d in tank_data] == [float(i) for i in range(260)]
    assert {d["metrics"][0]["name"] for d in tank_data} == {"level"}

    link.publish([node.ndeath()])
    link.disconnect()
    await decoder.wait_for(lambda _: len(decoder.messages("NDEATH")) >= 1)
    assert decoder.messages("NDEATH")[0]["bd_seq"] == 3


async def test_host_offline_and_back_gives_new_session_with_next_bdseq(
    decoder: Decoder, link_factory: Callable[[SparkplugNode], NodeLink]
) -> None:
    """STATE offline: the node dies and reconnects; births (bdSeq + 1) follow STATE online."""
    node = make_node("scada", bd_seq=200, data_qos=1)
    link = link_factory(node)
    link.connect()
    decoder.send({"cmd": "state", "host": "scada", "online": True, "timestamp": 5000})
    await link.handle_next()
    decoder.send({"cmd": "state", "host": "scada", "online": False, "timestamp": 5000})
    await link.handle_next()
    assert link.client is None and not node.born  # NDEATH published, then disconnected
    await decoder.wait_for(lambda _: len(decoder.messages("NDEATH")) >= 1)
    assert decoder.messages("NDEATH")[0]["bd_seq"] == 200
    link.connect()
    await link.handle_next()  # the retained offline STATE, read again: still held
    assert not node.born
    decoder.send({"cmd": "state", "host": "scada", "online": True, "timestamp": 6000})
    await link.handle_next()
    link.publish([ddata_from_deltas(node, "pump", [delta(4.0)], historical=True)])
    await decoder.wait_for(lambda _: len(decoder.messages("DDATA")) >= 1)
    births = decoder.messages("NBIRTH")
    assert [b["bd_seq"] for b in births] == [200, 201]
    ddata = decoder.messages("DDATA")[0]
    assert ddata["seq"] == 3 and all(m["is_historical"] for m in ddata["metrics"])
    assert ddata["metrics"][0]["name"] == "flow/value" and ddata["metrics"][0]["value"] == 4.0


_CHILD = textwrap.dedent(
    """
    import sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from edge_agent.sparkplug import DataType, MetricSpec, SparkplugNode

    node = SparkplugNode("plant", "gw9", bd_seq=int(sys.argv[3]),
                         devices={"d": [MetricSpec("x", DataType.DOUBLE)]})
    will = node.will()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw9", protocol=mqtt.MQTTv311)
    c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    c.connect(sys.argv[1], int(sys.argv[2]), keepalive=10)
    c.loop_start()
    for m in node.on_connect():
        c.publish(m.topic, m.payload, qos=1).wait_for_publish(5)
    print("born", flush=True)
    time.sleep(3600)
    """
)


async def test_will_delivered_after_kill_9_carries_the_bdseq_of_the_nbirth(
    mosquitto: Mosquitto, decoder: Decoder
) -> None:
    """A node process killed with SIGKILL leaves its NDEATH will, bdSeq equal to its NBIRTH."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, mosquitto.host, str(mosquitto.port), "77",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        async with asyncio.timeout(TIMEOUT_S):
            while (line := await child.stdout.readline()).strip() != b"born":
                assert line, "the node process exited before its births"
        await decoder.wait_for(lambda _: len(decoder.messages("DBIRTH")) >= 1)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    await decoder.wait_for(lambda _: len(decoder.messages("NDEATH")) >= 1)
    nbirth, death = decoder.messages("NBIRTH")[0], decoder.messages("NDEATH")[0]
    assert (nbirth["edge_node"], death["edge_node"]) == ("gw9", "gw9")
    assert nbirth["bd_seq"] == death["bd_seq"] == 77
    assert death["seq"] is None
