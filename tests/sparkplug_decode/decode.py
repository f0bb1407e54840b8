"""Independent Sparkplug B peer for the tests: pysparkplug decodes what the edge node sends.

Runs in its own virtual environment (pysparkplug pins paho-mqtt<2; see
scripts/ensure.d/sparkplug.sh), never with the project's code: it imports nothing from this
repository. Usage: `python decode.py HOST PORT GROUP_ID`.

It connects with pysparkplug's own client, subscribes to `spBv1.0/<group>/#` and prints one
JSON object per line on stdout:

    {"event": "subscribed"}                     once the broker acknowledged the subscription
    {"event": "message", "topic", "type", "edge_node", "device", "seq", "timestamp",
     "bd_seq", "metrics": [{"name", "alias", "datatype", "value", "is_null",
     "is_historical", "timestamp", "properties": {key: value}}]}
    {"event": "decode-error", "topic", "error"}
    {"event": "published", "what"}              after a command below was handed to the client

Names of data metrics are resolved from the aliases of the last birth by pysparkplug itself.
pysparkplug's Metric has no properties, so those are read with pysparkplug's own generated
protobuf module. Commands on stdin, one JSON object per line:

    {"cmd": "rebirth", "edge_node": ID}                     an NCMD Node Control/Rebirth = true
    {"cmd": "state", "host": ID, "online": B, "timestamp": MS}   a retained STATE (3.0 JSON)
    {"cmd": "quit"}
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pysparkplug as spb
from pysparkplug import _protobuf as spb_protobuf

_out_lock = threading.Lock()


def emit(doc: dict[str, Any]) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()


def _plain(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return repr(value)


def _property_value(pv: Any) -> Any:
    field = pv.WhichOneof("value")
    return None if field is None else _plain(getattr(pv, field))


def _metric_doc(metric: spb.Metric, raw: Any) -> dict[str, Any]:
    props = {}
    if raw is not None and raw.HasField("properties"):
        props = {
            k: _property_value(v)
            for k, v in zip(raw.properties.keys, raw.properties.values, strict=True)
        }
    return {
        "name": metric.name,
        "alias": metric.alias,
        "datatype": metric.datatype.name,
        "value": _plain(metric.value),
        "is_null": metric.is_null,
        "is_historical": metric.is_historical,
        "timestamp": metric.timestamp,
        "properties": props,
    }


def _message_doc(message: spb.Message, raw_payload: bytes) -> dict[str, Any]:
    topic, payload = message.topic, message.payload
    raw = spb_protobuf.Payload.FromString(raw_payload)
    doc: dict[str, Any] = {
        "event": "message",
        "topic": str(topic),
        "type": str(topic.message_type),
        "edge_node": topic.edge_node_id,
        "device": topic.device_id,
        "seq": getattr(payload, "seq", None),
        "timestamp": getattr(payload, "timestamp", None),
        "metrics": [],
        "bd_seq": None,
    }
    if isinstance(payload, spb.NDeath):
        metric = payload.bd_seq_metric
        doc["metrics"] = [_metric_doc(metric, raw.metrics[0])]
        doc["bd_seq"] = metric.value if metric.name == "bdSeq" else None
    elif hasattr(payload, "metrics"):
        metrics = list(payload.metrics)
        doc["metrics"] = [_metric_doc(m, r) for m, r in zip(metrics, raw.metrics, strict=True)]
        for m in metrics:
            if m.name == "bdSeq":
                doc["bd_seq"] = m.value
    return doc


class ReportingClient(spb.Client):
    """pysparkplug's client; a payload it cannot decode is reported instead of lost."""

    def _handle_message(self, mqtt_message: Any) -> spb.Message:
        try:
            message = super()._handle_message(mqtt_message)
            emit(_message_doc(message, bytes(mqtt_message.payload)))
        except Exception as exc:
            emit({"event": "decode-error", "topic": mqtt_message.topic, "error": repr(exc)})
            raise
        return message


def main() -> int:
    host, port, group = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = ReportingClient(client_id=f"sparkplug-decoder-{port}")
    paho = client._client  # readiness: pysparkplug exposes no SUBACK hook
    paho.suppress_exceptions = True  # a decode error is reported, the loop goes on
    paho.on_subscribe = lambda *_: emit({"event": "subscribed"})
    client.subscribe(
        spb.Topic(group_id=group, message_type=spb.MULTI_LEVEL_WILDCARD),
        spb.QoS.AT_LEAST_ONCE,
        lambda _client, _message: None,  # emitted by ReportingClient
    )
    client.connect(host, port=port, blocking=False)
    for line in sys.stdin:
        cmd = json.loads(line)
        now = spb.get_current_timestamp()
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "rebirth":
            metric = spb.Metric(
                timestamp=now, name="Node Control/Rebirth", datatype=spb.DataType.BOOLEAN,
                value=True,
            )  # fmt: skip
            topic = spb.Topic(
                group_id=group, message_type=spb.MessageType.NCMD, edge_node_id=cmd["edge_node"]
            )
            payload: Any = spb.NCmd(timestamp=now, metrics=(metric,))
            retain = False
        elif cmd["cmd"] == "state":
            topic = spb.Topic(message_type=spb.MessageType.STATE, sparkplug_host_id=cmd["host"])
            payload = spb.State(timestamp=cmd["timestamp"], online=cmd["online"])
            retain = True
        else:
            emit({"event": "decode-error", "topic": "", "error": f"unknown command {cmd!r}"})
            continue
        message = spb.Message(
            topic=topic, payload=payload, qos=spb.QoS.AT_LEAST_ONCE, retain=retain
        )
        client.publish(message, include_dtypes=True)
        emit({"event": "published", "what": cmd["cmd"]})
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
