"""Acquisition: one loop per driver, the single owner of connecting and reconnecting.

The loop connects, then either consumes the driver's subscription (OPC UA) or polls `read()` at
the configured interval (Modbus), handing every batch to the process image. When the link is
lost (`ConnectError`), every tag of the driver becomes BAD with reason "comm", the driver is
closed, and the loop retries with jittered exponential backoff until the PLC answers again.
The state transition is logged once each way ("plc unavailable" ... "plc available again"), with
the downtime; repeats are only counted.

Given the process image (`image=`), a polled driver that can read into arrays
(`drivers.arrays.ArrayReadable`) hands them straight to `ProcessImage.update_arrays`, without a
`Sample` per value; other drivers and the "comm" samples of a lost link go through `sink`.

Poll timing: the tick takes one snapshot of the image at a fixed rate (the Digital Original
needs a regular step), so a value waits for the next poll and then for the next tick. Left to
themselves the two clocks keep an arbitrary phase: up to one poll interval plus one tick of
delay, and when two polls land between two ticks the first one's changes are never published.
So a poller whose interval is at least the tick period starts each read `lead` before a tick
(the image announces the next one): `lead` follows the recent read durations (a decaying
maximum, times 1.25, plus 3 ms), so the read lands just before the snapshot, every tick sees
exactly one fresh poll, and the tick itself never moves.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from drivers.arrays import ArrayReadable
from drivers.base import ConnectError, Driver, Sample, Subscribable, bad_samples
from edge_agent.image import ProcessImage

log = structlog.get_logger(__name__)

Sink = Callable[[list[Sample]], None]
LEAD_GUARD_S = 0.003
"""Margin between a paced read's expected end and the tick it feeds."""


@dataclass
class LinkStats:
    """Counters and state of one driver's link, for health and metrics."""

    up: bool = False
    connects: int = 0
    failures: int = 0
    batches: int = 0
    samples: int = 0
    down_since: float | None = field(default_factory=time.monotonic)


class Backoff:
    """Jittered exponential backoff: 0.5 s doubling up to `cap_s`, reset on success.

    The 5 s cap keeps the wait after a PLC comes back short (data flows again within ~5 s plus
    the connect), while a dead PLC costs one cheap connect attempt every 2.5-5 s.
    """

    def __init__(self, base_s: float = 0.5, cap_s: float = 5.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.base_s * math.pow(2.0, self.attempt))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that library code swallowed (asyncua's connect can): a stop
    request that arrives mid-connect must still stop this loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Pacer:
    """When to start the next read: `interval_s` after the last start, moved to `lead` before
    the nearest tick the image announces (see the module docstring)."""

    def __init__(self, interval_s: float, image: ProcessImage | None) -> None:
        self.interval_s = interval_s
        self.image = image
        self.slow_s = 0.0  # decaying maximum of the read durations

    def lead_s(self) -> float:
        return 1.25 * self.slow_s + LEAD_GUARD_S

    def observe(self, read_s: float) -> None:
        self.slow_s = max(read_s, 0.95 * self.slow_s)

    def next_start(self, last_start: float) -> float:
        nominal = last_start + self.interval_s
        img = self.image
        if img is None or img.next_tick is None:
            return nominal
        period = img.tick_period
        if period <= 0 or self.interval_s < 0.99 * period:
            return nominal  # polls faster than the tick: nothing to align to
        lead = min(self.lead_s(), 0.8 * period)
        k = round((nominal + lead - img.next_tick) / period)
        start = img.next_tick + k * period - lead
        while start <= last_start + self.interval_s / 2:  # always move on
            start += period
        return start


async def _poll(
    driver: Driver, sink: Sink, stats: LinkStats, interval_s: float, image: ProcessImage | None
) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(interval_s, image)
    arrays = image is not None and isinstance(driver, ArrayReadable)
    pos = image.positions(driver.tags) if image is not None and arrays else None
    next_t = loop.time()
    while True:
        started = loop.time()
        if pos is not None:
            assert image is not None and isinstance(driver, ArrayReadable)
            b = await driver.read_arrays()
            image.update_arrays(pos[b.tag], b.value, b.quality, b.source_ts, b.recv_ts,
                                reasons=b.reason, texts=b.text)  # fmt: skip
            count = len(b.tag)
        else:
            batch = await driver.read()
            sink(batch)
            count = len(batch)
        stats.batches += 1
        stats.samples += count
        pacer.observe(loop.time() - started)
        next_t = pacer.next_start(next_t)
        delay = next_t - loop.time()
        if delay < 0:  # fell behind: skip the missed polls rather than burst
            next_t = loop.time()
            delay = 0
        await asyncio.sleep(delay)


async def _consume(driver: Subscribable, sink: Sink, stats: LinkStats) -> None:
    async for batch in driver.subscribe():
        sink(batch)
        stats.batches += 1
        stats.samples += len(batch)


async def run_driver(
    driver: Driver,
    sink: Sink,
    stats: LinkStats,
    *,
    poll_interval_s: float,
    connect_timeout_s: float,
    backoff: Backoff | None = None,
    image: ProcessImage | None = None,
) -> None:
    """Run one driver forever (until cancelled), reconnecting on every lost link. With `image`
    (the one `sink` feeds), a polled driver's reads are timed to its ticks and an array-capable
    driver's batches go to it as arrays."""
    backoff = backoff or Backoff()
    bound = log.bind(driver=driver.name)
    warned = False
    while True:
        try:
            async with asyncio.timeout(connect_timeout_s * 2):
                await driver.connect()
            _raise_if_cancelled()
            stats.connects += 1
            stats.up = True
            backoff.reset()
            if stats.down_since is not None and stats.connects > 1:
                bound.info(
                    "plc available again",
                    downtime_s=round(time.monotonic() - stats.down_since, 2),
                )
            elif stats.connects == 1:
                bound.info("plc connected")
            stats.down_since = None
            warned = False
            if isinstance(driver, Subscribable):
                await _consume(driver, sink, stats)
                raise ConnectError("subscription ended")
            await _poll(driver, sink, stats, poll_interval_s, image)
        except (ConnectError, TimeoutError) as exc:
            stats.failures += 1
            if stats.up or not warned:
                bound.warning("plc unavailable", error=str(exc) or type(exc).__name__)
                warned = True
            if stats.up:
                stats.down_since = time.monotonic()
            stats.up = False
            sink(bad_samples(driver.tags, "comm"))
            await driver.aclose()
            await asyncio.sleep(backoff.next_delay())
