"""Recovery of the OPC UA driver under the agent's acquisition loop: the rig's server restarted
several times, and gone for a while; data flows again each time and sessions do not pile up."""

from __future__ import annotations

import asyncio
import contextlib
import time

from drivers.base import ConnectError, Quality, Sample
from drivers.opcua import OpcUaDriver
from edge_agent.acquire import LinkStats, run_driver
from hil.plc_opcua import OpcUaPlc
from hil.tags import tags_of
from tests.fixtures.plc import PLAUSIBLE, opcua_tags

WAIT_S = 30.0  # bound for "eventually"; not a timing assertion


class Seen:
    """A sink that remembers every sample and wakes waiters."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.changed = asyncio.Event()

    def __call__(self, batch: list[Sample]) -> None:
        self.samples.extend(batch)
        self.changed.set()

    async def until(self, pred: object) -> Sample:
        async with asyncio.timeout(WAIT_S):
            start = 0
            while True:
                for s in self.samples[start:]:
                    if pred(s):  # type: ignore[operator]
                        return s
                start = len(self.samples)
                self.changed.clear()
                await self.changed.wait()


async def test_restarts_recover_data_and_leave_one_session() -> None:
    """Three server restarts (one of 3 s): each loss surfaces as BAD comm, each return brings
    new values through a fresh session and monitored items; one session on the server at the
    end. The time from the server's return to the first new value is printed."""
    plc = OpcUaPlc(tags_of("process"))
    await plc.start()
    await plc.write_values(PLAUSIBLE, time.time())
    driver = OpcUaDriver("process", plc.endpoint, opcua_tags(), publishing_interval_ms=50)
    seen = Seen()
    stats = LinkStats()
    task = asyncio.create_task(
        run_driver(driver, seen, stats, poll_interval_s=1.0, connect_timeout_s=2.0)
    )
    recovery_s: list[float] = []
    try:
        await seen.until(lambda s: s.tag == "flow" and s.value == PLAUSIBLE["flow"])
        for cycle, down_s in enumerate((0.2, 3.0, 0.5), 1):
            await plc.stop()
            await seen.until(lambda s: s.quality is Quality.BAD and s.reason == "comm")
            await asyncio.sleep(down_s)
            await plc.start()
            back = time.monotonic()
            value = 100.0 + cycle
            await plc.write_values({"flow": value}, time.time())
            await seen.until(lambda s, v=value: s.tag == "flow" and s.value == v)
            recovery_s.append(round(time.monotonic() - back, 2))
        assert stats.connects == 4
        assert stats.up
        assert plc.session_count() == 1
        # The new session's monitored items work: a later change arrives too.
        await plc.write_values({"level": 1.375}, time.time())
        await seen.until(lambda s: s.tag == "level" and s.value == 1.375)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await driver.aclose()
        await plc.stop()
    print(f"recovery after server return (s): {recovery_s}")


async def test_subscription_raises_quickly_when_server_vanishes() -> None:
    """A subscription surfaces the stopped server as ConnectError (no hang): the driver's
    keep-alive and socket monitoring end the iterator."""
    async with OpcUaPlc(tags_of("process")) as plc:
        d = OpcUaDriver("p", plc.endpoint, opcua_tags(), publishing_interval_ms=50)
        await d.connect()
        it = d.subscribe()
        await anext(it)
        await plc.stop()
        raised = False
        async with asyncio.timeout(WAIT_S):
            try:
                while True:
                    await anext(it)
            except ConnectError:
                raised = True
        await d.aclose()
    assert raised
