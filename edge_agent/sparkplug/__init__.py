"""Sparkplug B edge-node mode: the payload schema, the session state machine, the tag adapter.

Modules:
    sparkplug_b.proto   the payload schema of the Eclipse Sparkplug 3.0 specification
    sparkplug_b_pb2     generated from it (with a .pyi stub); never edited by hand
    metrics             MetricSpec / Point / DataType / Quality and their protobuf encoding
    node                SparkplugNode: bdSeq, seq, aliases, births, rebirth, STATE; no I/O
    inbound             parsing (never raising) of NCMD and STATE payloads from the host
    adapter             the agent's per-tag deltas -> metric declarations and DDATA

Regenerating `sparkplug_b_pb2.py` and `.pyi` (development time only; grpcio-tools 1.85.1
bundles protoc 35.1, whose gencode needs a protobuf 7.35+ runtime), from the repository root:

    uv run --isolated --no-project --with grpcio-tools==1.85.1 python -m grpc_tools.protoc \\
        -I edge_agent/sparkplug --python_out=edge_agent/sparkplug \\
        --pyi_out=edge_agent/sparkplug edge_agent/sparkplug/sparkplug_b.proto
    sed -i '1i # ruff: noqa\\n# mypy: ignore-errors' edge_agent/sparkplug/sparkplug_b_pb2.py*
    uv run ruff format edge_agent/sparkplug/sparkplug_b_pb2.py*

The two header lines keep ruff and mypy off generated code (mypy reads the .pyi, which types
the message fields); formatting it once keeps a whole-tree `ruff format` a no-op.

Mapping of the agent's MQTT output (field by field in `edge_agent.sparkplug.adapter`):
    a tag delta        -> (a `tags/<tag>` message, or one doc of a `deltas` batch)
                          DDATA of the tag's device, metrics `<tag>/value`, `/predicted`,
                          `/residual`, `/score`, `/cusum` (Double, engUnit property, Quality
                          property from quality / prediction), `/quality`, `/reason`, `/alarm`
                          (String); `value` is stamped with source_ts, the others with ts
    status (retained)  -> NBIRTH / NDEATH (Sparkplug's own online state: no retained status)
    replayed deltas    -> DDATA with `is_historical` on every metric
    devices            -> one per driver, or a single device (e.g. "agent") holding all tags

Usage (the caller owns the MQTT client and persists `next_bd_seq`):

    node = SparkplugNode("plant", "gw1", "scada", bd_seq=load_bd_seq(), data_qos=1,
                         devices={"agent": device_metric_specs([("flow", "m3/h")])})
    will = node.will(); save_bd_seq(node.next_bd_seq)          # MQTT will of this CONNECT
    client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    # on CONNACK: subscribe node.subscriptions(); publish each of node.on_connect()
    # on a STATE / NCMD message: r = node.on_state(payload, topic) / node.on_ncmd(payload)
    #     publish r.publish in order; if r.disconnect: disconnect, then node.on_disconnect()
    if node.born:
        publish(ddata_from_deltas(node, "agent", [reporter.tag_doc(i, now, ...)]))
    # on connection loss: node.on_disconnect(); the next CONNECT needs a fresh node.will()

Integration rules that follow from the specification:
- `seq` and the births belong to one MQTT session. Encode DDATA just before it is sent, never
  before it is buffered: after a reconnect the node births again (seq restarts at 0), so
  unacknowledged Sparkplug messages of the old session must not be re-sent; re-encode their
  deltas instead (with `historical=True` once they are late).
- Call `will()` before every CONNECT (a reconnect needs the new bdSeq in its will) and persist
  `next_bd_seq` before connecting, so a crash never reuses a bdSeq.
- While `node.born` is False (not connected, or the primary host is offline) keep the deltas
  in the durable buffer; they go out as historical data after the next births.
- The specification prescribes QoS 0 for births and data; `data_qos=1` trades that for
  PUBACK-driven store-and-forward. The will is QoS 1 and not retained, as prescribed.
- The node subscribes to NCMD only: DCMD (writes to devices) is not supported.
"""

from __future__ import annotations

from edge_agent.sparkplug.adapter import (
    DeltaError,
    ddata_from_deltas,
    delta_points,
    device_metric_specs,
    tag_metric_specs,
)
from edge_agent.sparkplug.metrics import DataType, MetricSpec, MetricValueError, Point, Quality
from edge_agent.sparkplug.node import (
    Message,
    Reaction,
    SparkplugNode,
    SparkplugUsageError,
)

__all__ = [
    "DataType",
    "DeltaError",
    "Message",
    "MetricSpec",
    "MetricValueError",
    "Point",
    "Quality",
    "Reaction",
    "SparkplugNode",
    "SparkplugUsageError",
    "ddata_from_deltas",
    "delta_points",
    "device_metric_specs",
    "tag_metric_specs",
]
