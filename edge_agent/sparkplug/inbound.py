"""Parsing what a Sparkplug host sends an edge node: NCMD payloads and STATE messages.

Owns the validation of untrusted input from the broker: size limits, the protobuf decode of
an NCMD and the search for `Node Control/Rebirth` (by name, or by its alias as the
specification asks of commands), and the Sparkplug 3.0 STATE JSON `{"online": bool,
"timestamp": ms}`. Nothing here raises on bad input: a problem comes back as a `Rejection`
with a short code (for counters) and a sentence (for the log). What the node does with a
valid command is `edge_agent.sparkplug.node`'s business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from edge_agent.sparkplug import sparkplug_b_pb2 as pb

REBIRTH = "Node Control/Rebirth"
MAX_COMMAND_BYTES = 65_536
MAX_STATE_BYTES = 1_024


@dataclass(frozen=True)
class Rejection:
    """Why an input was refused: `code` is short and stable, `detail` explains it."""

    code: str
    detail: str


@dataclass(frozen=True)
class NodeCommand:
    """A valid NCMD: whether it asks for a rebirth, and how many other metrics it carried."""

    rebirth: bool
    ignored_metrics: int


@dataclass(frozen=True)
class HostState:
    """A valid STATE message of a host application."""

    online: bool
    timestamp_ms: int


def parse_ncmd(payload: bytes, rebirth_alias: int) -> NodeCommand | Rejection:
    """Decode an NCMD; metrics other than the rebirth (writes) are counted, not applied."""
    if len(payload) > MAX_COMMAND_BYTES:
        return Rejection("too-large", f"{len(payload)} bytes > {MAX_COMMAND_BYTES}")
    try:
        cmd = pb.Payload.FromString(payload)
    except Exception as exc:  # the protobuf runtime raises several types on bad input
        return Rejection("not-sparkplug", f"not a Sparkplug B payload: {exc}")
    if not cmd.metrics:
        return Rejection("no-metrics", "NCMD without metrics")
    rebirth, ignored = False, 0
    for metric in cmd.metrics:
        named = metric.HasField("name")
        if (named and metric.name == REBIRTH) or (
            not named and metric.HasField("alias") and metric.alias == rebirth_alias
        ):
            if metric.WhichOneof("value") != "boolean_value":
                return Rejection("bad-rebirth", f"{REBIRTH} must be a Boolean")
            rebirth = rebirth or metric.boolean_value
        else:
            ignored += 1
    return NodeCommand(rebirth, ignored)


def parse_state(payload: bytes) -> HostState | Rejection:
    """Decode a Sparkplug 3.0 STATE payload (the 2.x plain "ONLINE"/"OFFLINE" is refused)."""
    if len(payload) > MAX_STATE_BYTES:
        return Rejection("too-large", f"{len(payload)} bytes > {MAX_STATE_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Rejection("not-json", f"STATE is not UTF-8 JSON: {exc}")
    if not isinstance(doc, dict):
        return Rejection("not-object", "STATE is not a JSON object")
    online, ts = doc.get("online"), doc.get("timestamp")
    if not isinstance(online, bool):
        return Rejection("bad-online", "STATE 'online' must be true or false")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        return Rejection("bad-timestamp", "STATE 'timestamp' must be an integer ms >= 0")
    return HostState(online, ts)
