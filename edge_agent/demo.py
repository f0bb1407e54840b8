"""`edge-agent demo`: the whole loop in one command.

Starts the hil rig (OPC UA and Modbus PLCs on free loopback ports), a broker (mosquitto when
installed, else an embedded one; or the one given with `--broker`), the agent configured from
`configs/demo.toml` with the rig's and broker's ports, and a live view read back from the broker.
Faults given as `KIND@SECONDS` are injected at those times. At the end it prints what the view
measured: messages, alarms, and the delay from a value's source timestamp in the rig to its
arrival at the MQTT subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edge_agent.agent import Agent
from edge_agent.broker import find_mosquitto, local_broker
from edge_agent.config import Config, ConfigError, parse_config
from edge_agent.view import ViewState, run_view
from hil.faults import parse_fault
from hil.rig import Rig

log = structlog.get_logger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


@dataclass
class DemoOptions:
    duration_s: float | None = None
    broker: str | None = None
    faults: list[str] = field(default_factory=list)
    seed: int = 1
    view: bool = True


def demo_config(
    opcua_endpoint: str,
    modbus_host: str,
    modbus_port: int,
    mqtt_host: str,
    mqtt_port: int,
    *,
    path: Path = DEMO_CONFIG,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """The demo config with the endpoints of a running rig and broker filled in."""
    data: dict[str, Any] = tomllib.loads(path.read_text())
    for d in data["drivers"]:
        if d["kind"] == "opcua":
            d["endpoint"] = opcua_endpoint
        else:
            d["host"], d["port"] = modbus_host, modbus_port
    data["mqtt"]["host"], data["mqtt"]["port"] = mqtt_host, mqtt_port
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, path)


def _parse_broker(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--broker {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
    return host, int(port)


async def _inject_later(rig: Rig, kind: str, at_s: float, params: dict[str, Any]) -> None:
    await asyncio.sleep(at_s)
    log.info("injecting fault", kind=kind, at_s=at_s, **params)
    rig.inject(kind, **params)


def _report(state: ViewState, started: float) -> None:
    d = sorted(state.delays_ms)
    print(f"demo: {time.monotonic() - started:.1f} s, {state.messages} messages at the subscriber")
    if d:
        p99 = d[min(len(d) - 1, int(0.99 * len(d)))]
        print(
            f"demo: delay rig source timestamp -> MQTT subscriber: median "
            f"{statistics.median(d):.1f} ms, p99 {p99:.1f} ms ({len(d)} deltas)"
        )
    raised = [e for e in state.events if e.get("event") == "raised"]
    for e in reversed(raised):
        print(f"demo: alarm raised: {e.get('kind')} on {e.get('tag')} score={e.get('score')}")


async def _demo(opts: DemoOptions) -> int:
    faults = [parse_fault(f) for f in opts.faults]
    broker = _parse_broker(opts.broker) if opts.broker else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        rig = await stack.enter_async_context(Rig(seed=opts.seed))
        print(f"rig: OPC UA {rig.opcua_endpoint}  Modbus {rig.modbus_host}:{rig.modbus_port}")
        overrides: dict[str, Any] = {}
        if broker is None:
            broker = await stack.enter_async_context(local_broker())
            if find_mosquitto() is None:  # the embedded broker speaks MQTT 3.1.1 only
                overrides["mqtt"] = {"protocol": "3.1.1"}
        print(f"broker: {broker[0]}:{broker[1]}")
        cfg = demo_config(
            rig.opcua_endpoint, rig.modbus_host, rig.modbus_port, *broker, overrides=overrides
        )
        agent = Agent(cfg, DEMO_CONFIG)
        root = agent.reporter.prefix
        print(f"topics: {root}/#")
        async with asyncio.TaskGroup() as tg:
            agent_task = tg.create_task(agent.run(stop), name="agent")
            view_task = tg.create_task(
                run_view(*broker, root, stop, live=opts.view and sys.stdout.isatty()), name="view"
            )
            timers = [
                tg.create_task(_inject_later(rig, kind, at_s, params), name=f"fault:{kind}")
                for kind, at_s, params in faults
            ]
            if opts.duration_s is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), opts.duration_s)
                stop.set()
            await agent_task
            state = await view_task
            for t in timers:  # faults not yet due when the demo stops early
                t.cancel()
    _report(state, started)
    return 0


def run_demo(opts: DemoOptions) -> int:
    """Entry point for `edge-agent demo`; returns the exit code."""
    try:
        return asyncio.run(_demo(opts))
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
