"""Benchmark: values/s, CPU per 1,000 values and RSS, agent vs bare libraries vs Node-RED.

    uv run python -m bench.throughput [--quick] [--repeats N] [--protocols modbus,opcua]
                                      [--sizes 1000,5000,10000] [--modbus-server lean]

For each protocol and size a load rig (`hil.load`, every tag changing at 10 Hz) runs for the
whole group; the cases take turns on it, run after run (interleaved). Modbus is served by the
rig's lean server (`hil.load.modbus_server`), and the agent keeps 16 reads in flight per
connection; `--modbus-server pymodbus` serves it with pymodbus' server (one read at a time).

- `agent`: `edge-agent run` on the rig's generated config (deadband 0: every change is
  published; the water-loop model on plant instance 0, the detector on), values counted at
  an MQTT subscriber (`bench.mqtt_count`);
- `bare`: `bench.baselines.modbus_poll` (pymodbus polling loop) or `bench.baselines.opcua_sub`
  (asyncua subscription with the usual handler), values counted by the process itself;
- `node-red` (Modbus, when `bench/nodered/install.sh` was run): the flow of
  `bench.nodered.flows`, values counted at the same subscriber.

Each case is started, waits for its first value, settles, and is measured over one window:
values/s, CPU seconds of its process per 1,000 values (/proc, all threads), RSS at the end,
and for MQTT cases the change-to-subscriber delay of the stamps. The rig's offered values/s
over the window is recorded with each sample (a rig that cannot keep up offers less).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import Options, Row, Target, load_average, report
from bench.load_run import (
    Contender,
    Measured,
    MqttCounter,
    agent_contender,
    measure,
    mosquitto,
    percentile,
    self_counting,
)
from bench.nodered import flows as nodered
from hil.load.config import agent_config
from hil.load.modbus_server import MODBUS_SERVERS, ModbusServerKind
from hil.load.rig import LoadRig, Protocol

NAME = "throughput"
FULL_SIZES = (1000, 5000, 10000)
QUICK_SIZES = (100,)
TARGET_VALUES_PER_S = 100_000
TARGET_NODERED_RATIO = 5.0
MAX_OUTSTANDING = 16
"""Reads in flight per Modbus connection against the lean server (the config's maximum)."""


def processes_for(protocol: str, tags: int) -> int:
    """Rig processes: one asyncua server peaks near 17k changes/s, pymodbus serves more."""
    if protocol == "modbus":
        return 1 if tags <= 5000 else 2
    return 1 if tags <= 1000 else 2


def contenders(
    protocol: Protocol,
    tags: int,
    rig: LoadRig,
    broker: tuple[str, int],
    work: Path,
    *,
    max_outstanding: int = 1,
) -> list[Contender]:
    cfg = work / f"agent-{protocol}-{tags}.toml"
    cfg.write_text(
        agent_config(protocol, tags, rig.endpoints, mqtt_host=broker[0], mqtt_port=broker[1],
                     state_dir=str(work / "state"), max_outstanding=max_outstanding)
    )  # fmt: skip
    bare = "bench.baselines.modbus_poll" if protocol == "modbus" else "bench.baselines.opcua_sub"
    out = [
        self_counting("bare", [sys.executable, "-m", bare, "--tags", str(tags), *rig.endpoints]),
        agent_contender(cfg),
    ]
    if protocol == "modbus" and nodered.installed():
        userdir = work / f"nodered-{tags}"
        userdir.mkdir(exist_ok=True)
        out.append(
            Contender("node-red", lambda: nodered.start(tags, rig.endpoints, broker, userdir))
        )
    return out


def rows_of(group: str, runs: dict[str, list[Measured]]) -> list[Row]:
    """The table rows of one rig: offered, then values/s (with delay percentiles as extras),
    CPU and RSS per case."""
    rows = [
        Row(group, "rig offered", "values/s", [m.offered_per_s for m in runs["agent"]],
            note="what the rig served during the agent's windows"),
    ]  # fmt: skip
    metrics: list[tuple[str, str, Callable[[Measured], float]]] = [
        ("values/s", "values/s", lambda m: m.values_per_s),
        ("CPU", "s/1k values", lambda m: m.cpu_per_1k),
        ("RSS", "MB", lambda m: m.rss_mb),
    ]
    for metric, unit, get in metrics:
        for case, ms in runs.items():
            base = None if case == "bare" else f"bare {metric}"
            extra: dict[str, float | int | str] = {}
            if metric == "values/s":
                extra["delivered_fraction"] = statistics.median(m.delivered for m in ms)
                delays = [d for m in ms for d in m.delays]
                if delays:
                    extra["delay_p50_ms"] = percentile(delays, 50) * 1000
                    extra["delay_p99_ms"] = percentile(delays, 99) * 1000
            rows.append(Row(group, f"{case} {metric}", unit, [get(m) for m in ms], base,
                            extra=extra))  # fmt: skip
    return rows


def run(
    opts: Options,
    protocols: Sequence[Protocol],
    sizes: Sequence[int],
    modbus_server: ModbusServerKind = "lean",
) -> Path:
    repeats = opts.repeats
    # The lean server answers pipelined reads; pymodbus' answers one request at a time.
    outstanding = MAX_OUTSTANDING if modbus_server == "lean" else 1
    settle_s, window_s = (1.0, 3.0) if opts.quick else (3.0, 10.0)
    rows: list[Row] = []
    targets: list[Target] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp, mosquitto() as broker:
        work = Path(tmp)
        counter = MqttCounter(*broker)
        try:
            for protocol in protocols:
                for tags in sizes:
                    procs = processes_for(protocol, tags)
                    group = f"{protocol} {tags} tags"
                    with LoadRig(tags, protocol, procs, modbus_server=modbus_server) as rig:
                        rig.wait_stats(10.0)
                        cases = contenders(
                            protocol, tags, rig, broker, work, max_outstanding=outstanding
                        )
                        runs: dict[str, list[Measured]] = {c.name: [] for c in cases}
                        for _ in range(repeats):
                            for c in cases:
                                runs[c.name].append(
                                    measure(c, rig, counter, settle_s=settle_s, window_s=window_s)
                                )
                    rows += rows_of(group, runs)
                    notes.append(f"{group}: rig in {procs} process(es), load {load_average()}")
                    agent = statistics.median(m.values_per_s for m in runs["agent"])
                    if "node-red" in runs:
                        ratio = statistics.median(m.cpu_per_1k for m in runs["node-red"]) / max(
                            statistics.median(m.cpu_per_1k for m in runs["agent"]), 1e-9
                        )
                        targets.append(Target(f"{group}: Node-RED CPU per value / agent's",
                                              ratio, TARGET_NODERED_RATIO, "x",
                                              ratio >= TARGET_NODERED_RATIO))  # fmt: skip
                    if protocol == "modbus" and tags * 10 >= TARGET_VALUES_PER_S:
                        targets.append(Target(f"{group}: agent values/s through the whole agent",
                                              agent, TARGET_VALUES_PER_S, "values/s",
                                              agent >= 0.98 * TARGET_VALUES_PER_S))  # fmt: skip
        finally:
            counter.close()
    notes.append(
        "ratio column: bare / case (values/s: above 1 means the case delivers fewer values "
        "than the bare library; CPU: below 1 means it costs more CPU per value)"
    )
    if not nodered.installed():
        notes.append("Node-RED not installed (bash bench/nodered/install.sh): its rows are absent")
    return report(NAME, opts, rows, targets=targets, notes=notes,
                  config={"protocols": list(protocols), "sizes": list(sizes),
                          "settle_s": settle_s, "window_s": window_s,
                          "modbus_server": modbus_server,
                          "max_outstanding": outstanding})  # fmt: skip


def parse(argv: Sequence[str] | None, description: str) -> tuple[Options, list[str], list[int]]:
    """The harness flags plus `--protocols` and `--sizes`."""
    own, rest = _own_flags().parse_known_args(argv)
    from bench.harness import parse_args  # noqa: PLC0415

    opts = parse_args(description, rest, default_repeats=(1, 3))
    protocols = [x for x in own.protocols.split(",") if x]
    if own.sizes:
        sizes = [int(x) for x in own.sizes.split(",")]
    else:
        sizes = list(QUICK_SIZES if opts.quick else FULL_SIZES)
    return opts, protocols, sizes


def _own_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--protocols", default="modbus,opcua")
    p.add_argument("--sizes", default=None)
    p.add_argument("--modbus-server", choices=MODBUS_SERVERS, default="lean")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    opts, protocols, sizes = parse(argv, __doc__.splitlines()[0] if __doc__ else NAME)
    server = _own_flags().parse_known_args(argv)[0].modbus_server
    run(opts, [p for p in protocols if p in ("modbus", "opcua")], sizes, server)  # type: ignore[misc]


if __name__ == "__main__":
    main()
