"""OPC UA data-change notifications into the process image: our driver vs a bare asyncua client.

Two groups, both ending in `edge_agent.image.ProcessImage.update` (what the agent runs):

- `decode 1000/publish`: the client's work per notification for a PublishResponse body of
  1,000 Double data changes with both timestamps (encoded by asyncua's own encoder, the bytes an
  asyncua server sends): the driver's path (`fastdecode.decode_publish` + the driver's sample
  mapping) against asyncua's generic decode (`struct_from_binary`) with a lean per-item handler
  (no task per notification: a lower bound for the bare client). CPU-bound, one core.
- `live`: real sessions against `bench.opcua_load` processes (asyncua servers, 1,000 variables
  each, rewritten as fast as they can): our `OpcUaDriver.subscribe()` against asyncua's
  `Client.create_subscription(handler)` with the usual `datachange_notification` handler. Runs
  alternate. The figure is the client process's CPU time per notification that reached the
  image (so it is per core even when the load source cannot saturate the client); the
  wall-clock rate delivered is recorded beside it.
- `live lean 1x10000`: the same two clients against one `hil.load.opcua_server` process (the
  lean load server: 10,000 variables, all changing every 50 ms cycle, so 200,000
  notifications/s offered at a few per cent of a core): here the wall-clock rate delivered into
  the image is the figure that counts (target 100,000/s), with the client CPU per notification
  and the server processes' CPU share (CPU seconds per wall second) beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


LEAN_PUBLISH_MS = 50
# The load servers: the module each runs and its extra arguments.
SERVER_KINDS = {
    "asyncua": ("bench.opcua_load", []),
    "lean": ("hil.load.opcua_server", ["--publish-ms", str(LEAN_PUBLISH_MS)]),
}


def process_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes `pids` have used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def start_servers(
    count: int, tags: int, kind: str = "asyncua"
) -> tuple[list[subprocess.Popen[str]], list[str]]:
    module, extra = SERVER_KINDS[kind]
    procs, endpoints = [], []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), "--tags", str(tags), *extra],
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


Probe = Callable[[], float]
Measured = tuple[int, float, float, float]  # notifications, client CPU s, wall s, server CPU s


async def run_driver(
    endpoints: Sequence[str], tags: int, seconds: float, server_cpu: Probe
) -> Measured:
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
    n0, c0, w0, s0 = image.updates, time.process_time(), time.perf_counter(), server_cpu()
    await asyncio.sleep(seconds)
    n1, c1, w1, s1 = image.updates, time.process_time(), time.perf_counter(), server_cpu()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in drivers:
        await d.aclose()
    return n1 - n0, c1 - c0, w1 - w0, s1 - s0


async def run_bare(
    endpoints: Sequence[str], tags: int, seconds: float, server_cpu: Probe
) -> Measured:
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
    n0, c0, w0, s0 = image.updates, time.process_time(), time.perf_counter(), server_cpu()
    await asyncio.sleep(seconds)
    n1, c1, w1, s1 = image.updates, time.process_time(), time.perf_counter(), server_cpu()
    for client in clients:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return n1 - n0, c1 - c0, w1 - w0, s1 - s0


BARE = "bare asyncua client + handler"


def live_rows(
    opts: harness.Options, servers: int, tags: int, kind: str = "asyncua"
) -> tuple[list[harness.Row], dict[str, dict[str, float]]]:
    """The live group against `servers` load processes of `kind`; the rows and, per case, the
    wall rate delivered (median, min, max over runs) and the median server CPU share."""
    seconds = 1.5 if opts.quick else 3.0
    runs = 1 if opts.quick else max(2, opts.repeats // 3)
    procs, endpoints = start_servers(servers, tags, kind)
    pids = [p.pid for p in procs]

    def probe() -> float:
        return process_cpu(pids)

    samples: dict[str, list[float]] = {BARE: [], "driver": []}
    rates: dict[str, list[float]] = {k: [] for k in samples}
    shares: dict[str, list[float]] = {k: [] for k in samples}
    try:
        for _ in range(runs):
            for name, fn in ((BARE, run_bare), ("driver", run_driver)):
                n, cpu, wall, srv = asyncio.run(fn(endpoints, tags, seconds, probe))
                if n == 0:
                    raise RuntimeError(f"{name}: no notifications reached the image")
                samples[name].append(cpu / n * 1e6)
                rates[name].append(n / wall)
                shares[name].append(srv / wall)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    group = f"live {servers}x{tags}" if kind == "asyncua" else f"live {kind} {servers}x{tags}"
    summary = {
        k: {
            "delivered_per_s": statistics.median(rates[k]),
            "delivered_min": min(rates[k]),
            "delivered_max": max(rates[k]),
            "server_cpu_share": statistics.median(shares[k]),
        }
        for k in samples
    }
    rows = [
        harness.Row(
            group,
            name,
            "us",
            samples[name],
            baseline=None if name == BARE else BARE,
            extra={
                "delivered_per_s": round(summary[name]["delivered_per_s"]),
                "server_cpu_share": round(summary[name]["server_cpu_share"], 3),
            },
        )
        for name in (BARE, "driver")
    ]
    return rows, summary


def _rates_note(what: str, summary: dict[str, dict[str, float]]) -> str:
    return f"{what}: delivered (wall, median and min..max) per s; server CPU share: " + "; ".join(
        f"{k} {v['delivered_per_s']:.0f} ({v['delivered_min']:.0f}..{v['delivered_max']:.0f}), "
        f"{v['server_cpu_share']:.2f}"
        for k, v in summary.items()
    )


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
    lean_servers, lean_tags = (1, 1000) if opts.quick else (1, 10_000)
    lean, lean_rates = live_rows(opts, lean_servers, lean_tags, "lean")
    rows += lean
    fast_us = rows[1].median
    live_us = live[1].median
    lean_wall = lean_rates["driver"]["delivered_per_s"]
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
        harness.Target(
            "live lean: notifications/s delivered into the image in wall time",
            lean_wall,
            100_000,
            "notif/s",
            lean_wall >= 100_000,
        ),
    ]
    offered = lean_servers * lean_tags * 1000 / LEAN_PUBLISH_MS
    notes = [
        "unit us = client CPU microseconds per notification that reached the process image",
        f"live load: {servers} bench.opcua_load processes (asyncua servers) x {tags} Double "
        "variables, publishing 50 ms, queue 100",
        _rates_note("live", rates),
        f"live lean load: {lean_servers} hil.load.opcua_server processes x {lean_tags} Double "
        f"variables changing every {LEAN_PUBLISH_MS} ms (offered {offered:.0f}/s), "
        "publishing 50 ms",
        _rates_note("live lean", lean_rates),
    ]
    harness.report(
        "opcua",
        opts,
        rows,
        targets=targets,
        notes=notes,
        config={
            "servers": servers,
            "tags_per_server": tags,
            "items_per_publish": n,
            "lean_servers": lean_servers,
            "lean_tags_per_server": lean_tags,
            "lean_publish_ms": LEAN_PUBLISH_MS,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
