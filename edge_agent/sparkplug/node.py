"""The Sparkplug B edge-node session as a pure state machine: events in, messages out.

Owns the Sparkplug rules of one edge node: topics in the `spBv1.0` namespace, the bdSeq of
each MQTT session (NDEATH as the will, the same value in the NBIRTH that follows), `seq`
0..255 on every message after the NBIRTH (which has 0), metric aliases (unique across the
node, bound to names in the births, alone in data), the current value of every metric (births
carry them), rebirth on an NCMD `Node Control/Rebirth` = true, and primary-host STATE
awareness. It does no I/O and reads no clock except the injectable `clock_ms`: the caller owns
the MQTT client, the durable buffer and the persisted bdSeq.

Session lifecycle, as the caller drives it:

    will = node.will()            # NDEATH: register as the MQTT will of the next CONNECT,
    persist(node.next_bd_seq)     #   and persist the next bdSeq before connecting
    ... CONNACK ...
    subscribe(node.subscriptions())
    publish(node.on_connect())    # births now, or none while the primary host is not online
    on NCMD:  r = node.on_ncmd(payload);             publish(r.publish)
    on STATE: r = node.on_state(payload, topic);     publish(r.publish); r.disconnect -> close
    data:     if node.born: publish(node.ddata(device, points, historical=...))
    ... link lost / closed ... node.on_disconnect()   # the next will() carries bdSeq + 1

Malformed NCMD or STATE payloads never raise: they come back as a `Reaction` with `rejected`
set and are counted in `node.counters`. Calling a method out of order (data before a birth,
an undeclared metric) is the caller's bug and raises `SparkplugUsageError`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.sparkplug import sparkplug_b_pb2 as pb
from edge_agent.sparkplug.inbound import REBIRTH, Rejection, parse_ncmd, parse_state
from edge_agent.sparkplug.metrics import (
    ENG_UNIT,
    QUALITY,
    DataType,
    MetricSpec,
    MetricValueError,
    Point,
    Quality,
    Value,
    check_value,
    put_properties,
    put_value,
)

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"
_ID_FORBIDDEN = set("/+#")


class SparkplugUsageError(RuntimeError):
    """The caller used the node out of order or with an undeclared device or metric."""


@dataclass(frozen=True)
class Message:
    """One MQTT publication: `seq` is None for NDEATH."""

    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    seq: int | None = None


@dataclass(frozen=True)
class Reaction:
    """What to do after an NCMD or STATE: publish these (in order), then maybe disconnect.

    `disconnect` means: after publishing (the NDEATH), close the MQTT connection and call
    `on_disconnect()`; reconnect with a fresh `will()`. `rejected` names why the input was
    refused (it is also counted); None when it was accepted or ignored.
    """

    publish: tuple[Message, ...] = ()
    disconnect: bool = False
    host_online: bool = True
    rejected: str | None = None


@dataclass
class _Metric:
    spec: MetricSpec
    alias: int
    value: Value | None = None
    timestamp_ms: int | None = None
    quality: int | None = None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_id(what: str, value: str) -> None:
    if not value or _ID_FORBIDDEN & set(value):
        raise ValueError(f"sparkplug {what} {value!r}: must be non-empty, without '/', '+', '#'")


class SparkplugNode:
    """One Sparkplug B edge node with its devices; see the module docstring for the protocol.

    `bd_seq` is the bdSeq of the first session (0..255), as persisted by the caller.
    `data_qos` is the MQTT QoS of births and data: 0 is what the specification prescribes; 1
    suits a store-and-forward sender that releases data on PUBACK.
    """

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        primary_host_id: str | None = None,
        *,
        devices: Mapping[str, Sequence[MetricSpec]] | None = None,
        node_metrics: Sequence[MetricSpec] = (),
        bd_seq: int = 0,
        data_qos: int = 0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        _check_id("group_id", group_id)
        _check_id("edge_node_id", edge_node_id)
        if primary_host_id is not None:
            _check_id("primary_host_id", primary_host_id)
        if not 0 <= bd_seq <= 255:
            raise ValueError(f"sparkplug bd_seq {bd_seq}: must be in 0..255")
        if data_qos not in (0, 1):
            raise ValueError(f"sparkplug data_qos {data_qos}: must be 0 or 1")
        self.group_id, self.edge_node_id = group_id, edge_node_id
        self.primary_host_id = primary_host_id
        self.data_qos = data_qos
        self._clock = clock_ms
        self._bd_seq = bd_seq
        self._seq = 0
        self._connected = False  # an MQTT session with this bdSeq exists
        self._born = False
        self._host_online = primary_host_id is None
        self._state_ts: int | None = None
        self._dead_devices: set[str] = set()
        self.counters: Counter[str] = Counter()
        self._next_alias = 1
        control = [MetricSpec(BD_SEQ, DataType.INT64), MetricSpec(REBIRTH, DataType.BOOLEAN)]
        self._node = self._declare([*control, *node_metrics])
        self._devices = {}
        for device_id, specs in (devices or {}).items():
            _check_id("device_id", device_id)
            self._devices[device_id] = self._declare(specs)
        self._rebirth_alias = self._node[REBIRTH].alias

    def _declare(self, specs: Iterable[MetricSpec]) -> dict[str, _Metric]:
        table: dict[str, _Metric] = {}
        for spec in specs:
            if spec.name in table:
                raise ValueError(f"sparkplug metric {spec.name!r} declared twice")
            table[spec.name] = _Metric(spec, self._next_alias)
            self._next_alias += 1
        return table

    # -- state the caller reads ---------------------------------------------------------------

    @property
    def bd_seq(self) -> int:
        """The bdSeq of the current (or next) MQTT session."""
        return self._bd_seq

    @property
    def next_bd_seq(self) -> int:
        """The bdSeq to persist now, for the session after this one (or after a crash)."""
        return (self._bd_seq + 1) % 256

    @property
    def born(self) -> bool:
        """True while births were published in this session: data may be published."""
        return self._born

    @property
    def host_online(self) -> bool:
        """The primary host's last accepted STATE (always True without a primary host)."""
        return self._host_online

    @property
    def devices(self) -> tuple[str, ...]:
        """The declared device ids."""
        return tuple(self._devices)

    def topic(self, kind: str, device_id: str | None = None) -> str:
        """`spBv1.0/<group>/<kind>/<edge node>[/<device>]`."""
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"
        return base if device_id is None else f"{base}/{device_id}"

    @property
    def state_topic(self) -> str | None:
        """`spBv1.0/STATE/<primary host id>`, or None without a primary host."""
        if self.primary_host_id is None:
            return None
        return f"{NAMESPACE}/STATE/{self.primary_host_id}"

    def subscriptions(self) -> list[tuple[str, int]]:
        """(topic, qos) to subscribe to right after CONNACK, before `on_connect()`."""
        subs = [(self.topic("NCMD"), 1)]
        if self.state_topic is not None:
            subs.append((self.state_topic, 1))
        return subs

    def alias_of(self, name: str, device_id: str | None = None) -> int:
        """The alias bound to a metric name (node metric when `device_id` is None)."""
        return self._table(device_id)[name].alias

    # -- session events -----------------------------------------------------------------------

    def will(self) -> Message:
        """The NDEATH to register as the MQTT will of the next CONNECT (QoS 1, not retained).

        Its timestamp is the time of this call (the specification makes it optional; some
        decoders insist on one). Called while a session is still marked up, it ends that
        session first, so a reconnect never reuses the previous bdSeq.
        """
        if self._connected:
            self.on_disconnect()
        return self._ndeath()

    def ndeath(self) -> Message:
        """The NDEATH to publish before an intentional disconnect (then `on_disconnect()`)."""
        return self._ndeath()

    def on_connect(self) -> tuple[Message, ...]:
        """The MQTT session is up: the births, or () while the primary host is not online."""
        self._connected = True
        self._born = False
        if not self._host_online:
            self.counters["births_held_for_host"] += 1
            return ()
        return self.birth()

    def on_disconnect(self) -> None:
        """The MQTT session ended: data stops; the next session uses the next bdSeq."""
        if self._connected:
            self._bd_seq = self.next_bd_seq
        self._connected = False
        self._born = False
        if self.primary_host_id is not None:
            self._host_online = False  # the retained STATE is read again after resubscribing

    def birth(self) -> tuple[Message, ...]:
        """NBIRTH (seq 0) then every DBIRTH, with the current values: a (re)birth."""
        if not self._connected:
            raise SparkplugUsageError("birth() needs an MQTT session: call on_connect() first")
        if not self._host_online:
            raise SparkplugUsageError("birth() while the primary host is not online")
        now = self._clock()
        self._seq = 0
        payload = pb.Payload(timestamp=now, seq=0)
        self._node[BD_SEQ].value = self._bd_seq
        self._node[REBIRTH].value = False
        self._add_births(payload, self._node.values(), now)
        messages = [self._message("NBIRTH", None, payload)]
        self._dead_devices.clear()
        self._born = True
        messages.extend(self.dbirth(device_id) for device_id in self._devices)
        self.counters["births"] += 1
        return tuple(messages)

    def dbirth(self, device_id: str) -> Message:
        """The DBIRTH of one device (after an NBIRTH in this session), e.g. after its DDEATH."""
        table = self._table_for_data(device_id, "dbirth")
        now = self._clock()
        payload = pb.Payload(timestamp=now, seq=self._take_seq())
        self._add_births(payload, table.values(), now)
        self._dead_devices.discard(device_id)
        return self._message("DBIRTH", device_id, payload)

    def ddeath(self, device_id: str) -> Message:
        """The DDEATH of a device that can no longer deliver data (its DDATA stops)."""
        self._table_for_data(device_id, "ddeath")
        payload = pb.Payload(timestamp=self._clock(), seq=self._take_seq())
        self._dead_devices.add(device_id)
        return self._message("DDEATH", device_id, payload)

    def ddata(
        self, device_id: str, points: Iterable[Point], *, historical: bool = False
    ) -> Message:
        """A DDATA of `points` by alias; `historical` marks replayed (late) data."""
        table = self._table_for_data(device_id, "ddata")
        if device_id in self._dead_devices:
            raise SparkplugUsageError(f"ddata for {device_id!r} after its DDEATH: dbirth() first")
        return self._data("DDATA", device_id, table, points, historical)

    def ndata(self, points: Iterable[Point], *, historical: bool = False) -> Message:
        """An NDATA of node metrics (declared with `node_metrics`)."""
        return self._data("NDATA", None, self._table_for_data(None, "ndata"), points, historical)

    # -- inputs from the host -----------------------------------------------------------------

    def on_ncmd(self, payload: bytes) -> Reaction:
        """Handle an NCMD: `Node Control/Rebirth` = true gives the births to publish."""
        cmd = parse_ncmd(payload, self._rebirth_alias)
        if isinstance(cmd, Rejection):
            return self._reject("ncmd", cmd)
        self.counters["ncmd_ignored_metrics"] += cmd.ignored_metrics  # writes: not supported
        if not cmd.rebirth:
            return Reaction(host_online=self._host_online)
        if not (self._connected and self._host_online):
            self.counters["ncmd_rebirth_deferred"] += 1
            return Reaction(host_online=self._host_online)  # births follow the host's STATE
        self.counters["rebirths"] += 1
        return Reaction(publish=self.birth(), host_online=self._host_online)

    def on_state(self, payload: bytes, topic: str | None = None) -> Reaction:
        """Handle a primary-host STATE ({"online": bool, "timestamp": ms}, Sparkplug 3.0).

        Online: births if the session is up and not born yet. Offline (not older than the
        last accepted STATE; the host's will repeats its birth's timestamp) while born:
        NDEATH, then disconnect; data is held until the host is back online and a new
        session has published its births. Offline before the births changes nothing but
        the wait (a retained offline STATE must not make the node reconnect in a loop).
        """
        if self.state_topic is None:
            self.counters["state_ignored_no_primary_host"] += 1
            return Reaction(host_online=True)
        if topic is not None and topic != self.state_topic:
            detail = f"{topic!r} is not {self.state_topic!r}"
            return self._reject("state", Rejection("wrong-host", detail))
        host = parse_state(payload)
        if isinstance(host, Rejection):
            return self._reject("state", host)
        if self._state_ts is not None and host.timestamp_ms < self._state_ts:
            self.counters["state_stale"] += 1  # older than a STATE already applied
            return Reaction(host_online=self._host_online)
        self._state_ts = host.timestamp_ms
        self._host_online = host.online
        if host.online:
            births = self.birth() if self._connected and not self._born else ()
            return Reaction(publish=births, host_online=True)
        if not self._born:
            return Reaction(host_online=False)
        self.counters["host_offline_disconnects"] += 1
        death = self.ndeath()
        self._born = False
        return Reaction(publish=(death,), disconnect=True, host_online=False)

    # -- internals ----------------------------------------------------------------------------

    def _reject(self, what: str, why: Rejection) -> Reaction:
        self.counters[f"{what}_rejected"] += 1
        self.counters[f"{what}_rejected.{why.code}"] += 1
        text = f"{what} {why.code}: {why.detail}"
        return Reaction(host_online=self._host_online, rejected=text)

    def _table(self, device_id: str | None) -> dict[str, _Metric]:
        if device_id is None:
            return self._node
        try:
            return self._devices[device_id]
        except KeyError:
            raise SparkplugUsageError(f"device {device_id!r} was not declared") from None

    def _table_for_data(self, device_id: str | None, what: str) -> dict[str, _Metric]:
        table = self._table(device_id)
        if not self._born:
            raise SparkplugUsageError(f"{what}() before the NBIRTH of this session: hold the data")
        return table

    def _take_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _message(self, kind: str, device_id: str | None, payload: pb.Payload) -> Message:
        self.counters[f"sent.{kind}"] += 1
        topic = self.topic(kind, device_id)
        return Message(kind, topic, payload.SerializeToString(), self.data_qos, seq=payload.seq)

    def _ndeath(self) -> Message:
        payload = pb.Payload(timestamp=self._clock())
        metric = payload.metrics.add(name=BD_SEQ, datatype=DataType.INT64)
        put_value(metric, DataType.INT64, self._bd_seq)
        return Message("NDEATH", self.topic("NDEATH"), payload.SerializeToString(), qos=1)

    def _add_births(self, payload: pb.Payload, metrics: Iterable[_Metric], now: int) -> None:
        for m in metrics:
            spec = m.spec
            out = payload.metrics.add(name=spec.name, alias=m.alias, datatype=spec.datatype)
            out.timestamp = now if m.timestamp_ms is None else m.timestamp_ms
            put_value(out, spec.datatype, m.value)
            props: dict[str, bool | int | float | str] = {}
            if spec.unit is not None:
                props[ENG_UNIT] = spec.unit
            props.update(spec.properties)
            if m.quality is not None and m.quality != Quality.GOOD:
                props[QUALITY] = m.quality
            if props:
                put_properties(out, props)

    def _data(
        self,
        kind: str,
        device_id: str | None,
        table: Mapping[str, _Metric],
        points: Iterable[Point],
        historical: bool,
    ) -> Message:
        resolved: list[tuple[Point, _Metric]] = []
        for point in points:  # check everything first: a bad point changes no state
            m = table.get(point.name)
            if m is None:
                where = "node" if device_id is None else f"device {device_id!r}"
                raise SparkplugUsageError(f"metric {point.name!r} is not declared on {where}")
            try:
                check_value(point.name, m.spec.datatype, point.value)
            except MetricValueError as exc:
                raise SparkplugUsageError(str(exc)) from exc
            resolved.append((point, m))
        payload = pb.Payload(timestamp=self._clock())
        for point, m in resolved:
            out = payload.metrics.add(alias=m.alias, timestamp=point.timestamp_ms)
            put_value(out, m.spec.datatype, point.value)
            if historical:
                out.is_historical = True
            else:  # late data must not replace the current value a rebirth carries
                m.value, m.timestamp_ms, m.quality = point.value, point.timestamp_ms, point.quality
            if point.quality is not None and point.quality != Quality.GOOD:
                put_properties(out, {QUALITY: int(point.quality)})
        payload.seq = self._take_seq()
        return self._message(kind, device_id, payload)
