"""Sparkplug B on the agent's uplink: the edge node bound to the publisher and the buffer.

With `[sparkplug] enabled = true` the tag deltas leave as Sparkplug B DDATA (one device per
driver, metrics per `edge_agent.sparkplug.adapter`) instead of JSON batches; alarms, model
estimates and command responses stay JSON on the agent's own topics.

- Before every CONNECT the NDEATH with the next bdSeq becomes the MQTT will, and the bdSeq is
  persisted first (`<state_dir>/sparkplug.json`), so a crash never reuses one.
- After every CONNACK: NBIRTH and the DBIRTHs (or nothing while the primary host is offline),
  then the NCMD and STATE subscriptions.
- Deltas are stored in the durable buffer as JSON (per device, on the device's DDATA topic) and
  encoded to DDATA only when sent, with the session's current `seq` and `is_historical` for
  replayed data. A link that drops takes its unacknowledged DDATA with it
  (`resend_after_reconnect = False`): they are released to the buffer and re-encoded after the
  next births, so no message of an old session follows a new NBIRTH.
- While the node is not born (no session, or the primary host offline) the uplink holds
  everything in the buffer.
- NCMD `Node Control/Rebirth` gives a rebirth; a STATE offline of the primary host an NDEATH and
  a disconnect; malformed ones are counted and ignored.

Data is QoS 1 (the specification prescribes 0) so that the buffer releases a delta only on
PUBACK: the price of losing nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from edge_agent.buffer import Entry
from edge_agent.publish import MqttPublisher, PublishError, RawMessage, SessionHooks
from edge_agent.sparkplug.adapter import DeltaError, ddata_from_deltas, device_metric_specs
from edge_agent.sparkplug.node import Message, SparkplugNode, SparkplugUsageError
from edge_agent.uplink import FrameError, frame

log = structlog.get_logger(__name__)


def _raw(messages: Sequence[Message]) -> list[RawMessage]:
    return [(m.topic, m.payload, m.qos, m.retain) for m in messages]


class SparkplugSession:
    """One edge node for one agent; see the module docstring."""

    def __init__(
        self,
        *,
        group_id: str,
        edge_node_id: str,
        primary_host_id: str | None,
        devices: Mapping[str, Sequence[tuple[str, str]]],
        state_file: Path,
        agent_id: str,
    ) -> None:
        self.state_file = state_file
        self.node = SparkplugNode(
            group_id,
            edge_node_id,
            primary_host_id,
            devices={d: device_metric_specs(tags) for d, tags in devices.items()},
            bd_seq=self._load_bd_seq(),
            data_qos=1,
        )
        self.device_topics = {d: self.node.topic("DDATA", d) for d in devices}
        self._device_of_topic = {t: d for d, t in self.device_topics.items()}
        self._agent_json = json.dumps(agent_id)
        self.publisher: MqttPublisher | None = None

    # ---------------------------------------------------------------- bdSeq

    def _load_bd_seq(self) -> int:
        try:
            value = json.loads(self.state_file.read_text())["next_bd_seq"]
            if isinstance(value, int) and 0 <= value <= 255:
                return value
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return 0

    def _save_bd_seq(self, value: int) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"next_bd_seq": value}))
        tmp.replace(self.state_file)

    # ---------------------------------------------------------------- publisher hooks

    def hooks(self) -> SessionHooks:
        return SessionHooks(will=self._will, births=self._births, lost=self.node.on_disconnect)

    def _will(self) -> RawMessage:
        will = self.node.will()
        self._save_bd_seq(self.node.next_bd_seq)
        return (will.topic, will.payload, will.qos, will.retain)

    def _births(self) -> list[RawMessage]:
        return _raw(self.node.on_connect())

    def attach(self, publisher: MqttPublisher) -> None:
        """Subscribe to NCMD and STATE through `publisher` (again on every connection)."""
        self.publisher = publisher
        for topic, _qos in self.node.subscriptions():
            publisher.subscribe(topic, self._on_inbound)

    def _on_inbound(self, topic: str, payload: bytes) -> None:
        if "/NCMD/" in topic:
            reaction = self.node.on_ncmd(payload)
        else:
            reaction = self.node.on_state(payload, topic)
        if reaction.rejected is not None:
            log.warning("sparkplug message ignored", topic=topic, reason=reaction.rejected)
            return
        assert self.publisher is not None
        self.publisher.publish_raw(_raw(reaction.publish))
        if reaction.disconnect:
            log.info("sparkplug primary host offline: ending the session")
            self.publisher.drop_connection()

    # ---------------------------------------------------------------- uplink hooks

    def ready(self) -> bool:
        """Whether data may go out now (the node is born)."""
        return self.node.born

    def frame(self, entry: Entry) -> bytes:
        """DDATA for a stored deltas entry; other streams keep the JSON envelope."""
        device = self._device_of_topic.get(entry.topic)
        if device is None:
            return frame(self._agent_json, entry)
        try:
            docs = json.loads(entry.payload)["deltas"]
            return ddata_from_deltas(self.node, device, docs, historical=entry.historical).payload
        except SparkplugUsageError as exc:  # not born (yet): stays in the buffer
            raise PublishError(f"sparkplug node not ready: {exc}") from exc
        except (ValueError, KeyError, TypeError, DeltaError) as exc:
            raise FrameError(f"sparkplug DDATA for {device}: {exc}") from exc
