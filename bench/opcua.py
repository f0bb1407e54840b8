"""OPC UA data-change notifications into the process image: our driver vs a bare asyncua client.

Two groups, both ending in `edge_agent.image.ProcessImage.update` (what the agent runs):

- `decode 1000/publish`: the client's work per notification for a PublishResponse body of
  1,000 Double data changes with both timestamps (encoded by asyncua's own encoder, the bytes an
  asyncua server sends): the driver's path (`fastdecode.decode_publish` + the driver's sample
  mapping) against asyncua's generic decode (`struct_from_binary`) with a lean per-item handler
  (no task per notification: a lower bound for the bare client). CPU-bound, one core.
- `live`: real sessions against `--servers`-many `bench.opcua_load` processes (asyncua servers,
  `--tags` variables each, rewritten as fast as they can): our `OpcUaDriver.subscribe()` against
  asyncua's `Client.create_subscription(handler)` with the usual `datachange_notification`
  handler. Runs alternate. The figure is the client process's CPU time per notification that
  reached the image (so it is per core even when the load source cannot saturate the client);
  the wall-clock rate delivered is recorded beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import (
    struct_from_binary,
    struct_to_binary,
)

from bench import harness
from drivers.base import Quality, Sample
from drivers.opcua import OpcUaDriver, OpcUaTag
from drivers.opcua.fastdecode import decode_publish
from edge_agent.image import ProcessImage

N_ITEMS = 1000
SAMPLING_MS = 0.0  # exception-based: every change is reported


def publish_body(n: int) -> bytes:
    """A PublishResponse message body with `n` Double changes, as asyncua encodes it."""
    now = ua.DateTime.now(UTC)
    items = [
        ua.MonitoredItemNotification(
            ClientHandle=i + 1,
            Value=ua.DataValue(
                ua.Variant(i * 1.5, ua.VariantType.Double),
                SourceTimestamp=now,
                ServerTimestamp=now,
            ),
        )
        for i in range(n)
    ]
    rsp = ua.PublishResponse()
    rsp.Parameters.SubscriptionId = ua.UInt32(1)
    rsp.Parameters.NotificationMessage = ua.NotificationMessage(
        SequenceNumber=ua.UInt32(7),
        PublishTime=now,
        NotificationData=[ua.DataChangeNotification(MonitoredItems=items)],
    )
    return struct_to_binary(rsp)  # starts with the response's TypeId, as on the wire


def decode_cases(n: int) -> dict[str, tuple[Any, float]]:
    """The two decode paths as harness cases (function, notifications per call)."""
    body = publish_body(n)
    names = [f"t{i}" for i in range(n)]
    tags = [OpcUaTag(name, f"ns=2;s={name}") for name in names]
    driver = OpcUaDriver("bench", "opc.tcp://127.0.0.1:1/", tags)
    image_fast = ProcessImage(names, [None] * n)
    image_generic = ProcessImage(names, [None] * n)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    driver._queue = queue
    driver._handle_names = ["", *names]
    by_handle = {i + 1: name for i, name in enumerate(names)}

    def fast() -> None:
        driver._on_publish(decode_publish(body))
        image_fast.update(queue.get_nowait())

    def generic() -> None:
        rsp = struct_from_binary(ua.PublishResponse, Buffer(body))
        now = time.time()
        for notif in rsp.Parameters.NotificationMessage.NotificationData:
            for item in notif.MonitoredItems:
                dv = item.Value
                src = dv.SourceTimestamp or dv.ServerTimestamp
                sample = Sample(
                    by_handle[item.ClientHandle], dv.Value.Value, Quality.GOOD, src.timestamp(), now
                )
                image_generic.update([sample])

    return {"asyncua generic + handler": (generic, float(n)), "driver fast path": (fast, float(n))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_servers(count: int, tags: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, endpoints = [], []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.opcua_load", "--port", str(port), "--tags", str(tags)],
            stdin=subprocess.PIPE,  # closed when this process ends: the server then exits
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # asyncua's server logs every refused late publish
            text=True,
            cwd=harness.ROOT,
        )
        procs.append(proc)
        endpoints.append(f"opc.tcp://127.0.0.1:{port}/")
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("load server did not start")
    return procs, endpoints


class _Handler:
    """The usual asyncua handler: one call per notification, writing the image."""

    def __init__(self, image: ProcessImage, names: dict[Any, str]) -> None:
        self.image = image
        self.names = names

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        dv = data.monitored_item.Value
        src = dv.SourceTimestamp or dv.ServerTimestamp
        now = time.time()
        ts = src.timestamp() if src is not None else now
        self.image.update([Sample(self.names[node], float(val), Quality.GOOD, ts, now)])


async def run_driver(
    endpoints: Sequence[str], tags: int, seconds: float
) -> tuple[int, float, float]:
    names = [f"s{k}_v{i}" for k in range(len(endpoints)) for i in range(tags)]
    image = ProcessImage(names, [None] * len(names))
    drivers = [
        OpcUaDriver(
            f"s{k}",
            ep,
            [
                OpcUaTag(name, f"nsu=urn:edge-agent:bench;s=v{i}", SAMPLING_MS, queue_size=100)
                for i, name in enumerate(names[k * tags : (k + 1) * tags])
            ],
            publishing_interval_ms=50,
            keepalive_s=5.0,
        )
        for k, ep in enumerate(endpoints)
    ]

    async def consume(d: OpcUaDriver) -> None:
        async for batch in d.subscribe():
            image.update(batch)

    for d in drivers:
        await d.connect()
    tasks = [asyncio.create_task(consume(d)) for d in drivers]
    await asyncio.sleep(1.0)  # initial values and steady state
    n0, c0, w0 = image.updates, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, c1, w1 = image.updates, time.process_time(), time.perf_counter()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in drivers:
        await d.aclose()
    return n1 - n0, c1 - c0, w1 - w0


async def run_bare(endpoints: Sequence[str], tags: int, seconds: float) -> tuple[int, float, float]:
    names = [f"s{k}_v{i}" for k in range(len(endpoints)) for i in range(tags)]
    image = ProcessImage(names, [None] * len(names))
    clients = []
    for k, ep in enumerate(endpoints):
        client = Client(ep, timeout=10, watchdog_intervall=5.0)
        await client.connect()
        idx = await client.get_namespace_index("urn:edge-agent:bench")
        nodes = [client.get_node(f"ns={idx};s=v{i}") for i in range(tags)]
        handler = _Handler(image, {n: f"s{k}_v{i}" for i, n in enumerate(nodes)})
        sub = await client.create_subscription(50, handler)
        await sub.subscribe_data_change(
            nodes, queuesize=100, sampling_interval=ua.Double(SAMPLING_MS)
        )
        clients.append(client)
    await asyncio.sleep(1.0)
    n0, c0, w0 = image.updates, time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, c1, w1 = image.updates, time.process_time(), time.perf_counter()
    for client in clients:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return n1 - n0, c1 - c0, w1 - w0


def live_rows(
    opts: harness.Options, servers: int, tags: int
) -> tuple[list[harness.Row], dict[str, float]]:
    seconds = 1.5 if opts.quick else 3.0
    runs = 1 if opts.quick else max(2, opts.repeats // 3)
    procs, endpoints = start_servers(servers, tags)
    samples: dict[str, list[float]] = {"bare asyncua client + handler": [], "driver": []}
    rates: dict[str, list[float]] = {k: [] for k in samples}
    try:
        for _ in range(runs):
            for name, fn in (("bare asyncua client + handler", run_bare), ("driver", run_driver)):
                n, cpu, wall = asyncio.run(fn(endpoints, tags, seconds))
                if n == 0:
                    raise RuntimeError(f"{name}: no notifications reached the image")
                samples[name].append(cpu / n * 1e6)
                rates[name].append(n / wall)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    group = f"live {servers}x{tags}"
    rows = [
        harness.Row(
            group,
            "bare asyncua client + handler",
            "us",
            samples["bare asyncua client + handler"],
            extra={"delivered_per_s": round(max(rates["bare asyncua client + handler"]))},
        ),
        harness.Row(
            group,
            "driver",
            "us",
            samples["driver"],
            baseline="bare asyncua client + handler",
            extra={"delivered_per_s": round(max(rates["driver"]))},
        ),
    ]
    return rows, {k: max(v) for k, v in rates.items()}


def main(argv: Sequence[str] | None = None) -> int:
    opts = harness.parse_args(__doc__ or "", argv, default_repeats=(3, 9))
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    n = 100 if opts.quick else N_ITEMS
    times = harness.interleaved(decode_cases(n), opts.repeats, opts.run_s * 4)
    group = f"decode {n}/publish"
    base = "asyncua generic + handler"
    rows = [
        harness.Row(group, base, "us", [t * 1e6 for t in times[base]]),
        harness.Row(
            group,
            "driver fast path",
            "us",
            [t * 1e6 for t in times["driver fast path"]],
            baseline=base,
        ),
    ]
    servers, tags = (1, 100) if opts.quick else (2, 1000)
    live, rates = live_rows(opts, servers, tags)
    rows += live
    fast_us = rows[1].median
    live_us = live[1].median
    targets = [
        harness.Target(
            "decode path: notifications/s on one core",
            1e6 / fast_us,
            100_000,
            "notif/s",
            1e6 / fast_us >= 100_000,
        ),
        harness.Target(
            "live: notifications/s per core of client CPU",
            1e6 / live_us,
            100_000,
            "notif/s",
            1e6 / live_us >= 100_000,
        ),
        harness.Target(
            "live: driver vs bare asyncua client (CPU per notification)",
            live[0].median / live_us,
            2.0,
            "x",
            live[0].median / live_us >= 2.0,
        ),
    ]
    notes = [
        "unit us = client CPU microseconds per notification that reached the process image",
        f"live load: {servers} bench.opcua_load processes (asyncua servers) x {tags} Double "
        f"variables, publishing 50 ms, queue 100; delivered (wall) per s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()),
    ]
    harness.report(
        "opcua",
        opts,
        rows,
        targets=targets,
        notes=notes,
        config={"servers": servers, "tags_per_server": tags, "items_per_publish": n},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
