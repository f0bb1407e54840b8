"""Benchmark: the store-and-forward uplink against bare paho-mqtt, and draining a backlog.

Owns the uplink benchmark. One local mosquitto (started here on a free port, persistence off,
queues raised) receives everything; a subscriber counts what arrives (see each group).

- `throughput`: N messages of the demo's size (a deltas batch of 6 tags, ~1.4 kB) published at
  QoS 1, each run until the broker acknowledged all of them (and the uplink deleted them from
  its buffer). Contender: `Uplink` (SQLite buffer, append per batch of 10 as the tick does,
  delete on PUBACK, the envelope) on our `MqttPublisher`. Baseline: bare paho-mqtt 2.x
  (`loop_start` network thread, in-flight window 50 and MQTT 5 as ours), publishing the same
  payloads. A lean subscriber in its own process (`bench.mqtt_count`) counts what arrives;
  each run starts once it has received every message of the previous run, so no run pays for
  another's deliveries. Figures: wall time and CPU per message of this process
  (`time.process_time`: every thread, so bare paho's network thread counts; the consumer is
  never in the publisher's process, and a subscriber thread here would also tax either case
  with GIL hand-overs that depend on how the messages arrive), ratio to the baseline.
- `drain`: a one-hour backlog of the demo's traffic (10 messages/s, ~36,000) is in the buffer
  when the broker comes back; live messages keep coming at 10/s. Figures: time to drain, and
  the live messages' delay (created -> received by a paho subscriber in this process) while
  draining, p50/p99.

    uv run python -m bench.uplink [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import Options, Row, Target, parse_args, report
from bench.load_run import MqttCounter
from edge_agent.broker import local_broker
from edge_agent.buffer import Buffer, NewEntry, StreamPolicy
from edge_agent.publish import MqttPublisher, MqttSettings
from edge_agent.uplink import Uplink, UplinkSettings

NAME = "uplink"
TARGET_OVERHEAD = 1.3
TARGET_LIVE_P99_S = 5.0
DEMO_RATE = 10.0  # messages/s of the demo's deltas stream


def demo_payload(i: int) -> bytes:
    """A deltas batch of 6 tags as the agent writes it (~1.4 kB)."""
    delta = {
        "ts": 1.0, "source_ts": 1.0, "value": 31.2, "quality": "good", "reason": "",
        "unit": "m3/h", "predicted": 31.0, "residual": 0.2, "score": 0.03, "cusum": 0.2,
        "prediction": "good", "alarm": "none",
    }  # fmt: skip
    docs = [dict(delta, tag=f"tag_{k}", value=31.2 + i % 7) for k in range(6)]
    return json.dumps({"ts": time.time(), "deltas": docs}, separators=(",", ":")).encode()


class Counter:
    """A paho subscriber on its own thread recording the live messages' delays (drain)."""

    def __init__(self, host: str, port: int) -> None:
        self.delays: list[float] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.connect(host, port)
        self.client.subscribe("bench/live", qos=1)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the live subscriber did not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            self.delays.append(time.time() - doc["ts"])

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def settle(counter: MqttCounter, expected: int, timeout_s: float = 60.0) -> None:
    """Wait until the counting subscriber has received `expected` messages in all."""
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        got = int(counter.mark()["messages"]["other"])
        if got >= expected:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"subscriber got {got} of {expected} messages")


def bare_paho(host: str, port: int, payloads: Sequence[bytes]) -> tuple[float, float]:
    """(wall s, cpu s) to publish all and get every PUBACK with plain paho."""
    done = threading.Event()
    acked = 0

    def on_publish(*_a: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-bare",
        protocol=mqtt.MQTTv5,  # the agent's default protocol: same PUBACK decoding cost
    )
    c.max_inflight_messages_set(50)
    c.on_publish = on_publish
    c.connect(host, port)
    c.loop_start()
    t0, c0 = time.perf_counter(), time.process_time()
    for p in payloads:
        c.publish("bench/bare", p, qos=1)
    done.wait(120)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    c.loop_stop()
    c.disconnect()
    return wall, cpu


def _buffer(path: Path, live_s: float = 10.0) -> Buffer:
    return Buffer(path, max_bytes=512 * 1024 * 1024, max_age_s=7 * 86400.0, live_s=live_s,
                  streams={"deltas": StreamPolicy("telemetry")})  # fmt: skip


async def _uplink(
    host: str, port: int, path: Path, settings: UplinkSettings
) -> tuple[Uplink, MqttPublisher, asyncio.Task[None]]:
    pub = MqttPublisher(
        MqttSettings(host=host, port=port, client_id=f"bench-{path.stem}", max_queue=10_000),
        status_topic="bench-status/agent",
        birth_payload=lambda: b"{}",
        will_payload=b"{}",
    )
    up = Uplink(_buffer(path), pub, agent_id="bench", settings=settings)
    await pub.start()
    task = asyncio.create_task(up.run())
    await pub.wait_connected(10)
    return up, pub, task


async def uplink_run(
    host: str, port: int, payloads: Sequence[bytes], tmp: Path
) -> tuple[float, float]:
    """(wall s, cpu s) to store, send and have acknowledged all (and deleted from the buffer),
    through the uplink."""
    path = tmp / f"tp-{time.monotonic_ns()}.db"
    up, pub, task = await _uplink(host, port, path, UplinkSettings(window=50, replay_rate=0))
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(0, len(payloads), 10):
        up.submit([NewEntry("deltas", "bench/uplink", p) for p in payloads[k : k + 10]])
        await asyncio.sleep(0)
    while up.backlog():  # noqa: ASYNC110 (the backlog is in SQLite: no event to wait on)
        await asyncio.sleep(0.01)  # harness polling, not uplink work: kept rare
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.aclose(1.0)
    up.buffer.close()
    return wall, cpu


async def drain_run(
    host: str, port: int, hours: float, tmp: Path, counter: Counter
) -> dict[str, float]:
    """Fill the buffer with `hours` of demo traffic (as if the broker had been away), then
    drain it with live traffic on top; the drain time and the live delays."""
    path = tmp / f"drain-{time.monotonic_ns()}.db"
    n = int(hours * 3600 * DEMO_RATE)
    now = time.time()
    buf = _buffer(path)
    step = 1000
    for k in range(0, n, step):
        t_start = now - hours * 3600
        buf.append_many([
            NewEntry("deltas", "bench/backlog", demo_payload(i), ts=t_start + i / DEMO_RATE)
            for i in range(k, min(n, k + step))
        ])  # fmt: skip
    buf.close()
    with counter.lock:
        counter.delays.clear()
    up, pub, task = await _uplink(host, port, path, UplinkSettings())
    t0 = time.perf_counter()
    i = 0
    while up.backlog() > 0 or i == 0:
        up.submit([NewEntry("deltas", "bench/live", demo_payload(i))])
        i += 1
        await asyncio.sleep(1.0 / DEMO_RATE)
    drain_s = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.aclose(1.0)
    up.buffer.close()
    with counter.lock:
        d = sorted(counter.delays)
    p99 = d[min(len(d) - 1, int(0.99 * len(d)))] if d else float("nan")
    nan = float("nan")
    return {
        "messages": n,
        "drain_s": drain_s,
        "live_p50_s": statistics.median(d) if d else nan,
        "live_p99_s": p99,
        "live_max_s": max(d) if d else nan,
        "live": len(d),
    }


async def run(opts: Options) -> None:
    n = 2000 if opts.quick else 20_000
    hours = 0.02 if opts.quick else 1.0
    payloads = [demo_payload(i) for i in range(n)]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp_s:
        tmp = Path(tmp_s)
        async with local_broker(prefer="mosquitto") as (host, port):
            counter = MqttCounter(host, port, ["bench/bare", "bench/uplink"])
            bare_rate: list[float] = []
            bare_cpu: list[float] = []
            up_rate: list[float] = []
            up_cpu: list[float] = []
            delivered = 0
            try:
                for _ in range(opts.repeats):
                    for rates, cpus, case in (
                        (bare_rate, bare_cpu, "bare"),
                        (up_rate, up_cpu, "uplink"),
                    ):
                        if case == "bare":
                            w, c = await asyncio.to_thread(bare_paho, host, port, payloads)
                        else:
                            w, c = await uplink_run(host, port, payloads, tmp)
                        delivered += n
                        await settle(counter, delivered)
                        rates.append(n / w)
                        cpus.append(c / n)
            finally:
                counter.close()
            live = Counter(host, port)
            try:
                drain = await drain_run(host, port, hours, tmp, live)
            finally:
                live.stop()
    us = [[1e6 / r for r in bare_rate], [1e6 / r for r in up_rate]]
    cpu = [[c * 1e6 for c in bare_cpu], [c * 1e6 for c in up_cpu]]
    up_case, bare_case = "uplink (buffer + publisher)", "bare paho-mqtt"
    rows += [
        Row("wall per message, QoS 1 ~1.4 kB", bare_case, "us", us[0]),
        Row("wall per message, QoS 1 ~1.4 kB", up_case, "us", us[1], baseline=bare_case),
        Row("CPU per message", bare_case, "us", cpu[0]),
        Row("CPU per message", up_case, "us", cpu[1], baseline=bare_case),
        Row("drain", f"{drain['messages']:.0f} messages backlog", "s", [drain["drain_s"]]),
        Row("drain", "live delay p50", "s", [drain["live_p50_s"]]),
        Row("drain", "live delay p99", "s", [drain["live_p99_s"]]),
    ]  # fmt: skip
    overhead = statistics.median(up_cpu) / statistics.median(bare_cpu)
    # Stated as bare / uplink so that higher is better, like every "x" target here.
    targets = [
        Target(f"CPU per message, bare paho / uplink (overhead {overhead:.2f}x, limit "
               f"{TARGET_OVERHEAD}x)", 1 / overhead, 1 / TARGET_OVERHEAD, "x",
               overhead <= TARGET_OVERHEAD),
        Target("live delay p99 while draining", drain["live_p99_s"], TARGET_LIVE_P99_S, "s",
               drain["live_p99_s"] <= TARGET_LIVE_P99_S),
    ]  # fmt: skip
    report(NAME, opts, rows, targets=targets, notes=[
        f"drain: {drain['messages']:.0f} stored messages ({hours:g} h of the demo's 10 msg/s) "
        f"replayed at the default replay_rate while {drain['live']:.0f} live messages went out; "
        f"live delay max {drain['live_max_s']:.3f} s",
        "CPU is the publishing process only (publisher, buffer, paho and its threads); the "
        "broker and the counting subscriber run beside it in their own processes",
    ], config={"messages": n, "hours": hours})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(__doc__ or NAME, argv, default_repeats=(2, 5))
    asyncio.run(run(opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
