"""One load-rig process: a slice of the plant instances behind one server, ticking at `hz`.

    python -m hil.load.worker --protocol modbus --tags 10000 --part 0 --parts 2
                              [--modbus-server lean|pymodbus]

Owns the tick loop of one process: each tick advances the plants by one tick of simulated
time (real time), samples them, takes the wall clock and writes the matrix to the server with
that time as the change time. A tick that starts late is not made up: the loop skips to the
next tick boundary and counts the skipped ones, so the offered rate is what `ticks` says.

Protocol on stdio, one JSON object per line: first `{"ready": true, "endpoint", "port",
"instances": [first, stop], "tags"}` once the server listens, then every second
`{"ticks", "skipped", "values", "busy_s", "cpu_s", "t"}` (cumulative; `t` is Unix time).
Commands on stdin, one per line: `fault KIND [every=N] [key=value ...]`, `clear`, `quit`;
end of input also stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence

from hil.load.bank import PlantBank
from hil.load.layout import part_slices, tags_of_instance
from hil.load.modbus_server import MODBUS_SERVERS
from hil.load.servers import LoadServer, ModbusLoadServer, OpcUaLoadServer

STATS_EVERY_S = 1.0


def _emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _parse_command(line: str) -> tuple[str, int, dict[str, float | str]]:
    """`fault leak every=4 rate_m_s=0.003` -> ("leak", 4, {"rate_m_s": 0.003})."""
    words = line.split()
    kind, every = words[1], 1
    params: dict[str, float | str] = {}
    for word in words[2:]:
        key, _, raw = word.partition("=")
        if key == "every":
            every = int(raw)
            continue
        try:
            params[key] = float(raw)
        except ValueError:
            params[key] = raw
    return kind, every, params


class Worker:
    """The plants of one part and their server."""

    def __init__(self, args: argparse.Namespace) -> None:
        instances = part_slices(args.tags, args.parts)[args.part]
        self.bank = PlantBank(instances, seed=args.seed)
        self.tags = [t for i in instances for t in tags_of_instance(args.tags, i)]
        self.period = 1.0 / args.hz
        self.server: LoadServer
        if args.protocol == "modbus":
            self.server = ModbusLoadServer(
                len(instances), args.host, args.port, server=args.modbus_server
            )
        else:
            self.server = OpcUaLoadServer(self.tags, instances.start, args.host, args.port)
        self.instances = instances
        self.ticks = 0
        self.skipped = 0
        self.busy_s = 0.0
        self.stop = asyncio.Event()

    def command(self, line: str) -> None:
        """Carry out one stdin command; a bad one is reported on stdout, never raised."""
        line = line.strip()
        try:
            if line == "quit":
                self.stop.set()
            elif line == "clear":
                self.bank.clear_faults()
            elif line.startswith("fault "):
                kind, every, params = _parse_command(line)
                hit = self.bank.inject(kind, every=every, **params)
                _emit({"fault": kind, "instances": hit})
            elif line:
                _emit({"error": f"unknown command {line!r}"})
        except (ValueError, IndexError, TypeError) as exc:
            _emit({"error": f"{line!r}: {exc}"})

    async def run(self) -> None:
        await self.server.start()
        try:
            _emit(
                {
                    "ready": True,
                    "endpoint": self.server.endpoint,
                    "port": getattr(self.server, "port", 0),
                    "instances": [self.instances.start, self.instances.stop],
                    "tags": len(self.tags),
                }
            )
            stats = asyncio.create_task(self._stats())
            try:
                await self._ticks()
            finally:
                stats.cancel()
        finally:
            await self.server.stop()

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.bank.advance(self.period)
            values = self.bank.sample(time.time())
            await self.server.write(values, time.time())
            self.ticks += 1
            self.busy_s += time.perf_counter() - t0
            next_t += self.period
            now = loop.time()
            if next_t < now:
                missed = int((now - next_t) / self.period) + 1
                self.skipped += missed
                next_t += missed * self.period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, next_t - loop.time()))

    async def _stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            _emit(
                {
                    "ticks": self.ticks,
                    "skipped": self.skipped,
                    "values": self.ticks * len(self.tags),
                    "busy_s": round(self.busy_s, 4),
                    "cpu_s": round(time.process_time(), 4),
                    "t": round(time.time(), 4),
                }
            )


def _read_stdin(loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(worker.command, line)
    loop.call_soon_threadsafe(worker.stop.set)


async def _main(args: argparse.Namespace) -> None:
    worker = Worker(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop.set)
    threading.Thread(target=_read_stdin, args=(loop, worker), daemon=True).start()
    await worker.run()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hil.load.worker", description=__doc__)
    p.add_argument("--protocol", choices=("modbus", "opcua"), required=True)
    p.add_argument("--tags", type=int, required=True, help="tags of the whole rig")
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--parts", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--hz", type=float, default=10.0, help="ticks per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modbus-server",
        choices=MODBUS_SERVERS,
        default="lean",
        help="lean: pipelined reads, a few us per request; pymodbus: the library's server",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        part_slices(args.tags, args.parts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
