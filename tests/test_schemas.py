"""The JSON Schemas in `schemas/` are valid and actually constrain: a message that breaks the
contract is refused. (The integration tests validate everything the agent publishes.)"""

from __future__ import annotations

import json

import pytest

from edge_agent.buffer import Entry
from edge_agent.report import Reporter
from edge_agent.uplink import frame
from tests.fixtures.mqtt import Received
from tests.fixtures.schemas import SCHEMAS, check_messages, registry


def test_every_schema_file_is_valid_and_registered() -> None:
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert len(files) >= 8
    ids = {json.loads(f.read_text()).get("$id") for f in files} - {None}
    assert ids <= set(registry())


def _framed(topic: str, body: bytes, stream: str = "deltas") -> Received:
    """A message exactly as the uplink frames it."""
    entry = Entry(1, stream, 7, topic, body, False, 0.0, False, "0a1b2c3d")
    return Received(topic, frame(json.dumps("gw-1"), entry), False)


def _delta_body(**changes: object) -> bytes:
    r = Reporter(["flow"], ["m3/h"], [0.0], heartbeat_s=10, topic_prefix="p/gw-1")
    doc = r.tag_doc(0, 5.0, value=1.5, source_ts=4.9, quality=0, reason="", predicted=1.4,
                    residual=0.1, score=0.2, alarm="none")  # fmt: skip
    doc.update(changes)
    return r.batches(5.0, [doc], 100)[0]


def test_a_framed_batch_validates_and_a_broken_one_does_not() -> None:
    assert check_messages([_framed("p/gw-1/deltas", _delta_body())]) == 1
    with pytest.raises(AssertionError, match="quality"):
        check_messages([_framed("p/gw-1/deltas", _delta_body(quality="fine"))])
    with pytest.raises(AssertionError, match="unexpected"):
        check_messages([_framed("p/gw-1/deltas", _delta_body(extra=1))])
    unframed = Received("p/gw-1/deltas", _delta_body(), False)
    with pytest.raises(AssertionError, match="required property"):
        check_messages([unframed])
