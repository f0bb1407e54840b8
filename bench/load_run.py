"""What the load benchmarks share: broker, counting subscriber, contender processes, /proc.

Owns running one measured case against a running `hil.load.rig.LoadRig`: start the
contender (the agent through `edge-agent run`, a bare-library baseline, Node-RED) as a child
process, wait until its values flow, let it settle, then measure a window: values/s counted
where the contender delivers them (the MQTT subscriber, or the baseline's own counter), CPU
seconds from /proc of the contender's process (all its threads), RSS, the rig's offered
values/s over the same window, and the stamp delays the subscriber recorded.
It knows nothing of tables (`bench.harness`) or of which cases a benchmark compares.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.harness import ROOT
from edge_agent.broker import accepts_connections, find_mosquitto, free_port, mosquitto_config
from hil.load.rig import LoadRig

TAG_FILTERS = (
    "edge-agent/v1/+/tags/#",
    "edge-agent/v1/+/deltas",
    "edge-agent/v1/+/alarms",
    "nodered/#",
    "bare/#",
)
FIRST_VALUE_TIMEOUT_S = 90.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A contender or peer failed; the message says which and why."""


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_mb(pid: int) -> float:
    """Resident set size in MB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


@contextmanager
def mosquitto() -> Iterator[tuple[str, int]]:
    """A mosquitto on a free loopback port with raised queue limits; yields (host, port)."""
    exe = find_mosquitto()
    if exe is None:
        raise BenchError("mosquitto is not installed (apt-get install mosquitto)")
    host, port = "127.0.0.1", free_port()
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(mosquitto_config(host, port))
        proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not accepts_connections(host, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("mosquitto did not start")
                time.sleep(0.02)
            yield host, port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


class Child:
    """A child process that answers one-line commands with one JSON line."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip

    def line(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        text = out.readline()
        if not text:
            raise BenchError(f"{self.proc.args!r} exited with code {self.proc.wait()}")
        doc: dict[str, Any] = json.loads(text)
        return doc

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class MqttCounter(Child):
    """`bench.mqtt_count` subscribed to the agent's and Node-RED's topics."""

    def __init__(self, host: str, port: int, filters: Sequence[str] = TAG_FILTERS) -> None:
        super().__init__([sys.executable, "-m", "bench.mqtt_count", host, str(port), *filters])
        if not self.line().get("subscribed"):
            raise BenchError("the counting subscriber did not subscribe")

    def mark(self) -> dict[str, Any]:
        return self.ask("mark")

    def delays(self) -> list[float]:
        out: list[float] = self.ask("delays")["delays"]
        return out


@dataclass
class Contender:
    """How to start one case and where its values are counted.

    `counted` is "mqtt" (the subscriber counts `tags` messages) or "self" (the process answers
    `mark` with `{"values": n}` on stdin/stdout, like the baselines).
    """

    name: str
    start: Callable[[], subprocess.Popen[str]]
    counted: str = "mqtt"
    pid_of: Callable[[subprocess.Popen[str]], int] = field(default=lambda p: p.pid)
    log: Path | None = None

    def exited(self, code: int | None) -> BenchError:
        """The error for a contender that exited, with the end of its log when it has one."""
        tail = ""
        if self.log is not None and self.log.exists():
            tail = ": " + self.log.read_text(errors="replace")[-1500:]
        return BenchError(f"{self.name} exited with code {code}{tail}")


@dataclass
class Measured:
    """One window of one case."""

    values_per_s: float
    offered_per_s: float
    cpu_s: float
    values: float
    rss_mb: float
    bytes_per_s: float
    alarms: int
    delays: list[float]

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / max(self.values, 1.0) * 1000.0

    @property
    def delivered(self) -> float:
        return self.values_per_s / self.offered_per_s if self.offered_per_s > 0 else 0.0


def _count(
    c: Contender, proc: subprocess.Popen[str], counter: MqttCounter
) -> tuple[float, dict[str, Any]]:
    mark = counter.mark()
    if c.counted == "mqtt":
        return float(mark["counts"]["tags"]), mark
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("mark\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise BenchError(f"{c.name} exited with code {proc.wait()}")
    return float(json.loads(line)["values"]), mark


@dataclass(frozen=True)
class Window:
    """One measured window: `before` runs first (e.g. inject a fault), then `settle_s` pass."""

    name: str
    window_s: float
    settle_s: float = 0.0
    before: Callable[[], None] | None = None


def measure(
    c: Contender,
    rig: LoadRig,
    counter: MqttCounter,
    *,
    settle_s: float,
    window_s: float,
) -> Measured:
    """Start `c`, wait for its first value, settle, measure one window, stop it."""
    return run_windows(c, rig, counter, settle_s, [Window("main", window_s)])["main"]


def run_windows(
    c: Contender, rig: LoadRig, counter: MqttCounter, settle_s: float, windows: list[Window]
) -> dict[str, Measured]:
    """Start `c`, wait for its first value, settle, measure each window in turn, stop it."""
    proc = c.start()
    out: dict[str, Measured] = {}
    try:
        deadline = time.monotonic() + FIRST_VALUE_TIMEOUT_S
        first, _ = _count(c, proc, counter)
        while True:
            if proc.poll() is not None:
                raise c.exited(proc.returncode)
            if time.monotonic() > deadline:
                raise BenchError(f"{c.name}: no value within {FIRST_VALUE_TIMEOUT_S} s")
            n, _ = _count(c, proc, counter)
            if n > first:
                break
            time.sleep(0.2)
        time.sleep(settle_s)
        pid = c.pid_of(proc)
        for w in windows:
            if w.before is not None:
                w.before()
            time.sleep(w.settle_s)
            out[w.name] = _window(c, proc, pid=pid, rig=rig, counter=counter, window_s=w.window_s)
    finally:
        stop_process(proc)
    return out


def _window(
    c: Contender,
    proc: subprocess.Popen[str],
    *,
    pid: int,
    rig: LoadRig,
    counter: MqttCounter,
    window_s: float,
) -> Measured:
    off0, cpu0 = rig.offered(), proc_cpu_s(pid)
    n0, m0 = _count(c, proc, counter)
    counter.delays()
    time.sleep(window_s)
    n1, m1 = _count(c, proc, counter)
    cpu1, off1, rss = proc_cpu_s(pid), rig.offered(), proc_rss_mb(pid)
    delays = counter.delays()
    if proc.poll() is not None:
        raise c.exited(proc.returncode)
    dt = float(m1["t"]) - float(m0["t"])
    off_dt = off1["t"] - off0["t"]
    b0 = sum(m0["bytes"].values())
    b1 = sum(m1["bytes"].values())
    return Measured(
        values_per_s=(n1 - n0) / dt,
        offered_per_s=(off1["values"] - off0["values"]) / off_dt if off_dt > 0 else 0.0,
        cpu_s=cpu1 - cpu0,
        values=n1 - n0,
        rss_mb=rss,
        bytes_per_s=(b1 - b0) / dt,
        alarms=int(m1["counts"]["alarms"] - m0["counts"]["alarms"]),
        delays=delays,
    )


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, up to 20 s to exit, then SIGKILL; nothing if it has already exited."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, round(q * 10) - 1)]


PROD_ENV = ROOT / "state" / "bench-prod-env"


def production_python() -> str:
    """The interpreter of an environment with the agent's runtime dependencies only (`uv sync
    --no-dev` into `state/bench-prod-env`, made once): what a gateway installs. The development
    environment also holds scikit-learn and scipy, and numba imports scipy when it is there
    (17 MB of memory a gateway does not have). Falls back to this interpreter, with a note."""
    python = PROD_ENV / "bin" / "python"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(PROD_ENV)}
    env.pop("VIRTUAL_ENV", None)
    try:
        subprocess.run(
            ["uv", "sync", "--frozen", "--no-dev", "--quiet"],
            cwd=ROOT, env=env, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"note: no runtime-only environment ({exc}); the agent runs in this one")
        return sys.executable
    return str(python)


def agent_contender(config: Path, name: str = "agent", python: str | None = None) -> Contender:
    """The agent as users run it: `edge-agent run --config FILE` (a shared numba cache), with
    `python` (default: `production_python()`); its log (warnings and errors) goes to
    `<config>.log`."""
    log = config.with_suffix(".log")
    cache = ROOT / "state"
    exe = production_python() if python is None else python
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(cache / "numba-cache"))
    env.setdefault("EDGE_AGENT_MODEL_CACHE", str(cache / "models"))

    def start() -> subprocess.Popen[str]:
        with log.open("w") as err:
            return subprocess.Popen(
                [exe, "-m", "edge_agent.cli", "--log-level", "warning", "run",
                 "--config", str(config)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err, text=True,
            )  # fmt: skip

    return Contender(name, start, log=log)


def self_counting(name: str, cmd: list[str]) -> Contender:
    """A process that counts its own values and answers `mark` (the bare baselines)."""

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip

    return Contender(name, start, counted="self")
