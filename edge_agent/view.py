"""A live terminal view of what the agent publishes, read back from the MQTT broker.

It subscribes like any dashboard would (`<prefix>/<agent id>/#`), so what it shows is what
left the agent and went through the broker: measured vs predicted, residual, anomaly score,
alarm state and quality per tag, and the latest alarm events. On a terminal it is a rich live
table; elsewhere (a pipe, CI) it prints one summary line every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


@dataclass
class ViewState:
    """What the subscriber has seen so far (written from paho's thread, read by the renderer)."""

    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    status: dict[str, Any] = field(default_factory=dict)
    messages: int = 0
    delays_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        self.messages += 1
        if topic.endswith("/deltas"):
            for delta in doc.get("deltas", []):
                self._on_delta(str(delta.get("tag")), delta)
        elif "/tags/" in topic:
            self._on_delta(topic.rsplit("/tags/", 1)[1], doc)
        elif topic.endswith("/alarms"):
            self.events.appendleft(doc)
        elif topic.endswith("/status"):
            self.status = doc

    def _on_delta(self, name: str, doc: dict[str, Any]) -> None:
        prev = self.tags.get(name)
        self.tags[name] = doc
        src = doc.get("source_ts")
        # Delay only for deltas that carry a new value: a heartbeat repeats an old one.
        changed = prev is not None and prev.get("value") != doc.get("value")
        if changed and doc.get("quality") == "good" and isinstance(src, int | float):
            self.delays_ms.append((time.time() - src) * 1000.0)


def _fmt(x: object, digits: int = 3) -> str:
    return "-" if not isinstance(x, int | float) else f"{x:.{digits}g}"


def render(state: ViewState) -> Group:
    """The table of tags and the list of recent alarm events."""
    table = Table(
        title=f"edge-agent: {state.status.get('agent_id', '?')} "
        f"({state.status.get('state', 'unknown')})",
        expand=False,
    )
    for col in ("tag", "unit", "measured", "predicted", "residual", "score", "alarm", "quality"):
        table.add_column(col, justify="left" if col in ("tag", "unit", "alarm") else "right")
    for name in sorted(state.tags):
        d = state.tags[name]
        alarm = d.get("alarm", "none")
        style = {"anomaly": "bold red", "quality": "bold yellow"}.get(alarm, "")
        score = d.get("score")
        score_txt = Text(
            _fmt(score, 2), style="red" if isinstance(score, float) and score >= 1 else ""
        )
        table.add_row(
            name,
            d.get("unit", ""),
            _fmt(d.get("value"), 5),
            _fmt(d.get("predicted"), 5),
            _fmt(d.get("residual"), 3),
            score_txt,
            Text(alarm, style=style),
            d.get("quality", "?"),
        )
    lines = [
        Text(
            f"{time.strftime('%H:%M:%S', time.localtime(e.get('ts', 0)))} "
            f"{e.get('event')} {e.get('kind')} on {e.get('tag')} score={_fmt(e.get('score'), 3)}",
            style="red" if e.get("event") == "raised" else "green",
        )
        for e in state.events
    ]
    return Group(table, Text("alarm events:", style="bold"), *lines)


def summary_line(state: ViewState) -> str:
    """One line for non-terminal output."""
    alarms = sorted(
        f"{n}:{d.get('alarm')}"
        for n, d in state.tags.items()
        if d.get("alarm") not in (None, "none")
    )
    return (
        f"view: {len(state.tags)} tags, {state.messages} messages, "
        f"alarms: {', '.join(alarms) or 'none'}"
    )


async def run_view(
    host: str, port: int, topic_root: str, stop: asyncio.Event, *, live: bool = True
) -> ViewState:
    """Subscribe to `topic_root/#` and render until `stop` is set (live table or lines)."""
    state = ViewState()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", clean_session=True)

    def on_connect(c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        c.subscribe(f"{topic_root}/#", qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        state.on_message(msg.topic, bytes(msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect_async(host, port, keepalive=15)
    client.loop_start()
    try:
        if live:
            with Live(render(state), refresh_per_second=4, console=Console()) as screen:
                while not stop.is_set():
                    screen.update(render(state))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
        else:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
                print(summary_line(state), flush=True)
    finally:
        client.disconnect()
        client.loop_stop()
    return state
