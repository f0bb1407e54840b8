"""Acquisition: one loop per driver, the single owner of connecting and reconnecting.

The loop connects, then either consumes the driver's subscription (OPC UA) or polls `read()` at
the configured interval (Modbus), handing every batch to the process image. When the link is
lost (`ConnectError`), every tag of the driver becomes BAD with reason "comm", the driver is
closed, and the loop retries with jittered exponential backoff until the PLC answers again.
The state transition is logged once each way ("plc unavailable" ... "plc available again"), with
the downtime; repeats are only counted.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from drivers.base import ConnectError, Driver, Sample, Subscribable, bad_samples

log = structlog.get_logger(__name__)

Sink = Callable[[list[Sample]], None]


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
    """Jittered exponential backoff: 0.5 s doubling up to `cap_s`, reset on success."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 10.0) -> None:
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


async def _poll(driver: Driver, sink: Sink, stats: LinkStats, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while True:
        batch = await driver.read()
        sink(batch)
        stats.batches += 1
        stats.samples += len(batch)
        next_t += interval_s
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
) -> None:
    """Run one driver forever (until cancelled), reconnecting on every lost link."""
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
            await _poll(driver, sink, stats, poll_interval_s)
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
