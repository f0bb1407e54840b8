"""Benchmark: end-to-end delay from a value change in the rig to its message at a subscriber.

    uv run python -m bench.e2e_delay [--quick] [--repeats N] [--protocols modbus,opcua]
                                     [--sizes 1000,10000]

The load rig (`hil.load`) writes every plant instance's values together with a `stamp`, the
write time in milliseconds; the subscriber (`bench.mqtt_count`) receives the stamp's message
and records receive time minus stamp (one delay per instance per tick). Cases, interleaved
on one rig per protocol and size:

- `bare`: the bare library baseline (`bench.baselines.modbus_poll` or `opcua_sub`) publishing
  each stamp it reads straight to the broker with paho (QoS 0): the floor;
- `agent`: `edge-agent run` (deadband 0), which publishes at its own 10 Hz tick;
- `node-red` (Modbus, when installed): its modbus-read -> function -> mqtt out flow.

A poller adds up to one poll period (100 ms) and the agent's tick up to one more; the target
for the agent is p99 under one tick plus 20 ms at 1,000 tags.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness import Options, Row, Target, load_average, report
from bench.load_run import Contender, MqttCounter, measure, mosquitto, percentile, self_counting
from bench.throughput import contenders, parse, processes_for
from hil.load.rig import LoadRig, Protocol

NAME = "e2e_delay"
FULL_SIZES = (1000, 10000)
TARGET_P99_MS = 120.0


def _with_publishing_bare(
    cases: list[Contender], protocol: str, tags: int, rig: LoadRig, broker: tuple[str, int]
) -> list[Contender]:
    module = "bench.baselines.modbus_poll" if protocol == "modbus" else "bench.baselines.opcua_sub"
    bare = self_counting(
        "bare",
        [sys.executable, "-m", module, "--tags", str(tags), "--publish", f"{broker[0]}:{broker[1]}",
         *rig.endpoints],
    )  # fmt: skip
    return [bare, *(c for c in cases if c.name != "bare")]


def run(opts: Options, protocols: Sequence[Protocol], sizes: Sequence[int]) -> Path:
    settle_s, window_s = (1.0, 3.0) if opts.quick else (3.0, 10.0)
    rows: list[Row] = []
    targets: list[Target] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, mosquitto() as broker:
        counter = MqttCounter(*broker)
        try:
            for protocol in protocols:
                for tags in sizes:
                    group = f"{protocol} {tags} tags"
                    with LoadRig(tags, protocol, processes_for(protocol, tags)) as rig:
                        rig.wait_stats(10.0)
                        cases = contenders(protocol, tags, rig, broker, Path(tmp))
                        cases = _with_publishing_bare(cases, protocol, tags, rig, broker)
                        stats: dict[str, dict[str, list[float]]] = {
                            c.name: {"p50": [], "p99": [], "max": []} for c in cases
                        }
                        counts: dict[str, int] = {c.name: 0 for c in cases}
                        for _ in range(opts.repeats):
                            for c in cases:
                                m = measure(c, rig, counter, settle_s=settle_s, window_s=window_s)
                                if not m.delays:
                                    continue
                                counts[c.name] += len(m.delays)
                                stats[c.name]["p50"].append(percentile(m.delays, 50) * 1000)
                                stats[c.name]["p99"].append(percentile(m.delays, 99) * 1000)
                                stats[c.name]["max"].append(max(m.delays) * 1000)
                    for stat in ("p50", "p99", "max"):
                        for name, st in stats.items():
                            if st[stat]:
                                base = None if name == "bare" else f"bare {stat}"
                                rows.append(Row(group, f"{name} {stat}", "ms", st[stat], base,
                                                extra={"stamps": counts[name]}))  # fmt: skip
                    notes.append(f"{group}: load {load_average()}; stamps per case {counts}")
                    agent_p99 = stats["agent"]["p99"]
                    if tags <= 1000 and agent_p99:
                        p99 = statistics.median(agent_p99)
                        targets.append(Target(f"{group}: agent p99 delay", p99, TARGET_P99_MS,
                                              "ms", p99 < TARGET_P99_MS))  # fmt: skip
        finally:
            counter.close()
    notes.append("delay = subscriber receive time - stamp (the rig's write time), ms resolution")
    return report(NAME, opts, rows, targets=targets, notes=notes,
                  config={"protocols": list(protocols), "sizes": list(sizes),
                          "settle_s": settle_s, "window_s": window_s})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    opts, protocols, sizes = parse(argv, __doc__.splitlines()[0] if __doc__ else NAME)
    if not opts.quick and "--sizes" not in " ".join(argv or sys.argv):
        sizes = list(FULL_SIZES)
    run(opts, [p for p in protocols if p in ("modbus", "opcua")], sizes)  # type: ignore[misc]


if __name__ == "__main__":
    main()
