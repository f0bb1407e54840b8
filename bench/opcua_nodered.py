"""Benchmark: OPC UA to MQTT, the agent vs Node-RED vs the bare asyncua subscription.

    uv run python -m bench.opcua_nodered [--quick] [--repeats N] [--tags 1000] [--processes K]

One load rig (`hil.load`, OPC UA, every tag changing at 10 Hz, each value stamped with its
write time; at 1,000 tags in 4 server processes by default) serves all cases; they take
turns on it, run after run (interleaved):

- `bare`: `bench.baselines.opcua_sub` (one asyncua subscription per rig process, 100 ms,
  the usual handler), counting its own values and publishing each stamp it receives with
  paho (QoS 0) so its delay is measured too (the floor; one value in 18 is published);
- `agent`: `edge-agent run` on the config the throughput benchmark writes (deadband 0,
  `publishing_interval_ms = 100`, the water-loop model and the detector on);
- `node-red`: the flow of `bench.nodered.flows_opcua` (OpcUa-Client SUBSCRIBE with a
  `multiple` item group at 100 ms -> function -> mqtt out at QoS 1); it must be installed
  (`bash bench/nodered/install.sh`): without it the benchmark stops with that command.

Per case and run: values/s delivered (agent and Node-RED counted at the MQTT subscriber
`bench.mqtt_count`), CPU seconds of its process per 1,000 values, RSS at the end of the
window, and the change-to-subscriber delay of the stamps (p50, p99, max). The rig's offered
values/s is recorded with each sample (a rig that cannot keep up offers less).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import Options, Row, Target, load_average, parse_args, report
from bench.load_run import (
    BenchError,
    Contender,
    Measured,
    MqttCounter,
    measure,
    mosquitto,
    percentile,
    self_counting,
)
from bench.nodered import flows, flows_opcua
from bench.throughput import TARGET_NODERED_RATIO, contenders, processes_for
from bench.throughput import rows_of as throughput_rows
from hil.load.rig import LoadRig

NAME = "opcua_nodered"
FULL_TAGS = 1000
QUICK_TAGS = 100
RIG_PROCESSES = 4
"""Rig processes at 1,000 tags: one asyncua server offers only ~3,000 of the 10,000 changes/s
while a client subscribes (bench.throughput's OPC UA figures), so the tags are split."""
INSTALL = "bash bench/nodered/install.sh"


def cases(tags: int, rig: LoadRig, broker: tuple[str, int], work: Path) -> list[Contender]:
    """bare (publishing its stamps), the agent as the throughput benchmark runs it, Node-RED
    (its OPC UA client certificate made once, before its first measured run)."""
    bare = self_counting(
        "bare",
        [sys.executable, "-m", "bench.baselines.opcua_sub", "--tags", str(tags),
         "--publish", f"{broker[0]}:{broker[1]}", *rig.endpoints],
    )  # fmt: skip
    agent = [c for c in contenders("opcua", tags, rig, broker, work) if c.name == "agent"]
    userdir, home = work / f"nodered-opcua-{tags}", work / "nodered-home"
    userdir.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    red = Contender(
        "node-red",
        lambda: flows_opcua.start(tags, rig.endpoints, broker, userdir, home),
        log=userdir / "node-red.log",
    )
    return [bare, *agent, red]


def _delay_rows(group: str, runs: dict[str, list[Measured]]) -> list[Row]:
    rows: list[Row] = []
    stats: list[tuple[str, float]] = [("p50", 50.0), ("p99", 99.0), ("max", 100.0)]
    for stat, q in stats:
        for case, ms in runs.items():
            per_run = [m.delays for m in ms if m.delays]
            if not per_run:
                continue
            samples = [(max(d) if stat == "max" else percentile(d, q)) * 1000.0 for d in per_run]
            base = None if case == "bare" else f"bare delay {stat}"
            rows.append(Row(group, f"{case} delay {stat}", "ms", samples, base,
                            extra={"stamps": sum(len(d) for d in per_run)}))  # fmt: skip
    return rows


def rows_of(group: str, runs: dict[str, list[Measured]]) -> list[Row]:
    """The throughput benchmark's rows of one rig, then a delay row per statistic and case."""
    return throughput_rows(group, runs) + _delay_rows(group, runs)


def _cpu_ratio(runs: dict[str, list[Measured]], case: str) -> float:
    mine = statistics.median(m.cpu_per_1k for m in runs[case])
    return mine / max(statistics.median(m.cpu_per_1k for m in runs["agent"]), 1e-9)


def _versus_agent(group: str, runs: dict[str, list[Measured]]) -> list[str]:
    """Node-RED against the agent, medians over runs: values/s, CPU per value, p99 delay."""

    def med(case: str, get: Callable[[Measured], float]) -> float:
        return statistics.median(get(m) for m in runs[case])

    def p99(m: Measured) -> float:
        return percentile(m.delays, 99) * 1000.0 if m.delays else float("nan")

    vals = med("node-red", lambda m: m.values_per_s) / max(
        med("agent", lambda m: m.values_per_s), 1e-9
    )
    return [
        f"{group}: Node-RED / agent: values/s {vals:.2f}x, CPU per value "
        f"{_cpu_ratio(runs, 'node-red'):.2f}x, delay p99 {med('node-red', p99):.0f} ms vs "
        f"{med('agent', p99):.0f} ms"
    ]


def run(opts: Options, tags: int, processes: int) -> Path:
    if not flows.installed():
        raise BenchError(f"Node-RED is not installed: run `{INSTALL}` (needs npm)")
    settle_s, window_s = (1.0, 3.0) if opts.quick else (3.0, 10.0)
    group = f"opcua {tags} tags"
    with tempfile.TemporaryDirectory(prefix="bench-opcua-nodered-") as tmp, mosquitto() as broker:
        counter = MqttCounter(*broker)
        try:
            with LoadRig(tags, "opcua", processes) as rig:
                rig.wait_stats(10.0)
                contestants = cases(tags, rig, broker, Path(tmp))
                runs: dict[str, list[Measured]] = {c.name: [] for c in contestants}
                for _ in range(opts.repeats):
                    for c in contestants:
                        runs[c.name].append(
                            measure(c, rig, counter, settle_s=settle_s, window_s=window_s)
                        )
        finally:
            counter.close()
    ratio = _cpu_ratio(runs, "node-red")
    targets = [
        Target(f"{group}: Node-RED CPU per value / agent's", ratio, TARGET_NODERED_RATIO, "x",
               ratio >= TARGET_NODERED_RATIO),
    ]  # fmt: skip
    notes = [
        f"{group}: rig in {processes} process(es), load {load_average()}",
        "ratio column: bare median / case median (values/s: above 1 means the case delivers "
        "fewer values than the bare library; CPU, RSS, delay: below 1 means the case costs "
        "more or is slower)",
        *_versus_agent(group, runs),
        "delay = subscriber receive time - stamp (the rig's write time), ms resolution; "
        "bare publishes only its stamps (QoS 0), agent and Node-RED every value (QoS 1)",
    ]
    return report(NAME, opts, rows_of(group, runs), targets=targets, notes=notes,
                  config={"tags": tags, "processes": processes, "settle_s": settle_s,
                          "window_s": window_s,
                          "nodered_interval_ms": flows_opcua.INTERVAL_MS})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--tags", type=int, default=None, help="rig size (default 1000)")
    own.add_argument("--processes", type=int, default=None, help="rig server processes")
    mine, rest = own.parse_known_args(argv)
    opts = parse_args(__doc__.splitlines()[0] if __doc__ else NAME, rest, default_repeats=(1, 3))
    tags = mine.tags or (QUICK_TAGS if opts.quick else FULL_TAGS)
    split = min(RIG_PROCESSES, tags // 250)
    processes = mine.processes or max(processes_for("opcua", tags), split)
    try:
        run(opts, tags, processes)
    except RuntimeError as exc:  # BenchError, or Node-RED making no client certificate
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
