"""The rig: the simulated plant running in (scaled) real time behind its two PLC servers.

This module owns the timing and the wiring: an asyncio task steps `hil.plant.Plant` at 0.05 s
of sim time, `speed` times faster than the wall clock, and every `1 / publish_hz` wall seconds
writes the measurements, stamped with the wall-clock time, to the process PLC (OPC UA) and
the drive PLC (Modbus TCP). It also carries out the `plc-restart` fault (stop a server, start
it again on the same port `down_s` wall seconds later); while a PLC is stopped it is skipped.
The physics, the PLC servers and the fault catalogue live elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from types import TracebackType

import structlog

from hil.faults import PHYSICS_KINDS, FaultSchedule, ParamValue, check_params, parse_fault
from hil.plant import DT, FaultArg, Plant
from hil.plc_modbus import ModbusPlc
from hil.plc_opcua import OpcUaPlc
from hil.tags import AGENT_NODES, tags_of

log = structlog.get_logger(__name__)

SERVER_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 5.0
# The most sim time one loop iteration catches up; beyond it the rig drops time and says so.
MAX_CATCHUP_S = 60.0


class Rig:
    """Plant + PLC servers, as an async context manager; endpoints are valid inside it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        opcua_port: int = 0,
        modbus_port: int = 0,
        seed: int = 0,
        speed: float = 1.0,
        publish_hz: float = 10.0,
        faults: Iterable[FaultArg] = (),
    ) -> None:
        if speed <= 0.0 or publish_hz <= 0.0:
            raise ValueError("speed and publish_hz must be > 0")
        self.plant = Plant(seed)
        self.speed = speed
        self.publish_hz = publish_hz
        self.opcua = OpcUaPlc(
            tags_of("process"), host=host, port=opcua_port, writable=AGENT_NODES
        )  # the agent area a PLC program sets aside for the agent's findings
        self.modbus = ModbusPlc(tags_of("drive"), host=host, port=modbus_port)
        self._schedule = FaultSchedule()
        for item in faults:
            kind, at_s, params = parse_fault(item) if isinstance(item, str) else item
            self._schedule.add(kind, at_s, params)
        self._task: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()
        self._published = asyncio.Event()
        self.publish_count = 0

    # -- life cycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Rig:
        try:
            async with asyncio.timeout(SERVER_TIMEOUT_S):
                await self.opcua.start()
                await self.modbus.start()
            await self._publish()
        except BaseException:
            await self._stop_servers()
            raise
        self._task = asyncio.create_task(self._run(), name="hil-plant")
        log.info(
            "rig started",
            opcua=self.opcua_endpoint,
            modbus=self.modbus.endpoint,
            speed=self.speed,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = [t for t in (self._task, *self._restarts) if t is not None]
        for task in tasks:
            task.cancel()
        # asyncio.wait neither raises the tasks' CancelledError nor swallows our own.
        if tasks:
            await asyncio.wait(tasks, timeout=SERVER_TIMEOUT_S)
        self._task = None
        await self._stop_servers()
        log.info("rig stopped", sim_time_s=round(self.plant.sim_time, 2))

    async def _stop_servers(self) -> None:
        for plc in (self.opcua, self.modbus):
            async with asyncio.timeout(SERVER_TIMEOUT_S):
                await plc.stop()

    # -- what callers see ----------------------------------------------------------------

    @property
    def opcua_endpoint(self) -> str:
        return self.opcua.endpoint

    @property
    def modbus_host(self) -> str:
        return self.modbus.host

    @property
    def modbus_port(self) -> int:
        return self.modbus.port

    @property
    def sim_time(self) -> float:
        return self.plant.sim_time

    def truth(self) -> dict[str, float]:
        """True, un-faulted physical values (no sensor noise, lag or sensor fault)."""
        return self.plant.truth()

    def measurements(self) -> dict[str, float]:
        """What the PLCs serve (as of the latest plant step)."""
        return self.plant.measurements()

    async def wait_published(self, count: int = 1) -> None:
        """Wait until `count` more publishes have reached the running PLCs (no timeout here)."""
        target = self.publish_count + count
        while self.publish_count < target:
            self._published.clear()
            await self._published.wait()

    # -- faults --------------------------------------------------------------------------

    def inject(self, kind: str, **params: ParamValue) -> None:
        """Start a fault now (see `hil.faults.FAULT_KINDS`)."""
        checked = check_params(kind, params)
        log.info("fault injected", kind=kind, sim_time_s=round(self.plant.sim_time, 2), **checked)
        if kind in PHYSICS_KINDS:
            self.plant.inject(kind, **checked)
            return
        plc = self.modbus if checked["plc"] == "drive" else self.opcua
        task = asyncio.create_task(
            self._restart(plc, float(checked["down_s"])), name=f"hil-restart-{checked['plc']}"
        )
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    def schedule(self, kind: str, at_s: float, **params: ParamValue) -> None:
        """Inject a fault when the sim time reaches `at_s`."""
        self._schedule.add(kind, at_s, params)

    def clear_faults(self) -> None:
        """End every physics fault (a PLC restart already under way completes)."""
        self.plant.clear_faults()
        log.info("faults cleared", sim_time_s=round(self.plant.sim_time, 2))

    async def _restart(self, plc: OpcUaPlc | ModbusPlc, down_s: float) -> None:
        async with asyncio.timeout(SERVER_TIMEOUT_S):
            await plc.stop()
        await asyncio.sleep(down_s)
        async with asyncio.timeout(SERVER_TIMEOUT_S):
            await plc.start()
        await self._write(plc, self.plant.measurements(), time.time())
        log.info("plc restarted", endpoint=plc.endpoint, down_s=down_s)

    # -- the plant loop ------------------------------------------------------------------

    async def _write(
        self, plc: OpcUaPlc | ModbusPlc, values: Mapping[str, float], ts: float
    ) -> None:
        if not plc.running:
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await plc.write_values(values, ts)
        except Exception:
            # A restart may stop the server under our feet; only then is a failure expected.
            if plc.running:
                raise

    async def _publish(self) -> None:
        values, ts = self.plant.measurements(), time.time()
        await self._write(self.opcua, values, ts)
        await self._write(self.modbus, values, ts)
        self.publish_count += 1
        self._published.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        plant, period = self.plant, 1.0 / self.publish_hz
        wall0, sim0 = loop.time(), plant.sim_time
        next_publish = wall0 + period
        while True:
            target = sim0 + (loop.time() - wall0) * self.speed
            if target - plant.sim_time > MAX_CATCHUP_S:
                log.warning("rig falling behind", dropped_s=round(target - plant.sim_time, 1))
                wall0, sim0 = loop.time(), plant.sim_time
                target = sim0
            while plant.sim_time + DT <= target + 1e-9:
                plant.step(DT)
                for kind, params in self._schedule.due(plant.sim_time):
                    self.inject(kind, **params)
            await self._publish()
            next_publish += period
            now = loop.time()
            if next_publish < now:
                next_publish = now + period
            await asyncio.sleep(next_publish - now)
