"""The load rig as a whole: K worker processes, their endpoints, their counters and faults.

`LoadRig` is a context manager (plain, not async: benchmarks drive it between subprocesses)
that starts `hil.load.worker` K times, waits for every server to listen, and keeps reading
each worker's once-a-second counters on a thread. `offered()` gives the ticks and values the
rig actually served (a worker that cannot keep up skips ticks, so offered < tags * hz), and
`cpu_s()` the CPU the rig used. `inject()` starts a physics fault in every worker.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from hil.load.layout import part_slices
from hil.load.modbus_server import ModbusServerKind

Protocol = Literal["modbus", "opcua"]
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
ROOT = Path(__file__).resolve().parents[2]


class LoadRigError(RuntimeError):
    """A worker did not start or died."""


@dataclass
class WorkerState:
    """One worker process and its latest counters."""

    proc: subprocess.Popen[str]
    endpoint: str = ""
    port: int = 0
    tags: int = 0
    instances: tuple[int, int] = (0, 0)
    stats: dict[str, float] = field(default_factory=dict)
    messages: list[dict[str, object]] = field(default_factory=list)


class LoadRig:
    """`tags` tags of `protocol` served by `processes` worker processes at `hz` (Modbus by
    `modbus_server`: see `hil.load.servers.ModbusLoadServer`)."""

    def __init__(
        self,
        tags: int,
        protocol: Protocol,
        processes: int = 1,
        *,
        hz: float = 10.0,
        host: str = "127.0.0.1",
        seed: int = 0,
        modbus_server: ModbusServerKind = "lean",
    ) -> None:
        part_slices(tags, processes)  # raises ValueError for an impossible split
        self.tags = tags
        self.protocol = protocol
        self.processes = processes
        self.hz = hz
        self.host = host
        self.seed = seed
        self.modbus_server = modbus_server
        self.workers: list[WorkerState] = []
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> list[str]:
        """One endpoint per worker: `host:port` (Modbus) or `opc.tcp://...` (OPC UA)."""
        return [w.endpoint for w in self.workers]

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def __enter__(self) -> LoadRig:
        try:
            for part in range(self.processes):
                cmd = [
                    sys.executable, "-m", "hil.load.worker", "--protocol", self.protocol,
                    "--tags", str(self.tags), "--part", str(part), "--parts", str(self.processes),
                    "--host", self.host, "--hz", str(self.hz), "--seed", str(self.seed),
                    "--modbus-server", self.modbus_server,
                ]  # fmt: skip
                proc = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                )
                self.workers.append(WorkerState(proc))
            for w in self.workers:
                self._wait_ready(w)
                threading.Thread(target=self._follow, args=(w,), daemon=True).start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_ready(self, w: WorkerState) -> None:
        assert w.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = w.proc.stdout.readline()
            if not line:
                raise LoadRigError(f"load worker exited with code {w.proc.wait()} at start")
            doc = json.loads(line)
            if doc.get("ready"):
                w.endpoint, w.port, w.tags = (
                    str(doc["endpoint"]),
                    int(doc["port"]),
                    int(doc["tags"]),
                )
                w.instances = (int(doc["instances"][0]), int(doc["instances"][1]))
                return
        raise LoadRigError(f"load worker not ready within {READY_TIMEOUT_S} s")

    def _follow(self, w: WorkerState) -> None:
        stream: IO[str] | None = w.proc.stdout
        assert stream is not None
        for line in stream:
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                if "ticks" in doc:
                    w.stats = {k: float(v) for k, v in doc.items()}
                else:
                    w.messages.append(doc)

    def offered(self) -> dict[str, float]:
        """Cumulative counters summed over workers: ticks (mean), skipped, values, cpu_s, and
        `t`, the mean Unix time of the workers' latest reports (counters lag by up to 1 s)."""
        with self._lock:
            stats = [dict(w.stats) for w in self.workers]
        if not stats or any(not s for s in stats):
            return {"ticks": 0.0, "skipped": 0.0, "values": 0.0, "cpu_s": 0.0, "t": 0.0}
        return {
            "t": sum(s["t"] for s in stats) / len(stats),
            "ticks": sum(s["ticks"] for s in stats) / len(stats),
            "skipped": sum(s["skipped"] for s in stats),
            "values": sum(s["values"] for s in stats),
            "cpu_s": sum(s["cpu_s"] for s in stats),
        }

    def wait_stats(self, timeout_s: float = 5.0) -> None:
        """Wait until every worker has reported its counters at least once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(w.stats for w in self.workers):
                    return
            time.sleep(0.05)
        raise LoadRigError("load workers report no counters")

    def send(self, command: str) -> None:
        """Send one command line to every worker (see `hil.load.worker`)."""
        for w in self.workers:
            if w.proc.poll() is not None:
                raise LoadRigError(f"load worker {w.proc.pid} has exited")
            assert w.proc.stdin is not None
            w.proc.stdin.write(command.strip() + "\n")
            w.proc.stdin.flush()

    def inject(self, kind: str, *, every: int = 1, **params: float | str) -> None:
        """Start a physics fault in every `every`-th plant instance of every worker."""
        words = [f"fault {kind}", f"every={every}", *(f"{k}={v}" for k, v in params.items())]
        self.send(" ".join(words))

    def clear_faults(self) -> None:
        self.send("clear")

    def close(self) -> None:
        """Stop every worker (end of input, then SIGTERM, then SIGKILL)."""
        for w in self.workers:
            if w.proc.stdin is not None and not w.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    w.proc.stdin.close()
        for w in self.workers:
            try:
                w.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                w.proc.terminate()
                try:
                    w.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
        self.workers = []
