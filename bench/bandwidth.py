"""Benchmark: bytes/s to the broker, report by exception vs publishing every sample.

    uv run python -m bench.bandwidth [--quick] [--repeats N] [--sizes 1000]

The agent runs twice per repeat on a fresh Modbus load rig (`hil.load`, stamps left out of
the agent's tags so only plant tags count): `every sample` (deadband 0 on every tag: each
10 Hz change is published, the baseline), `report by exception` (each tag's realistic
deadband, `hil.load.layout.REALISTIC_DEADBAND`, heartbeat 10 s) and the same with
`uplink.compression = "zlib"`. Each run has two windows:
`normal` operation, then `fault`: a tank leak injected into every plant instance (its level
falls; the Digital Original on instance 0 raises an anomaly alarm). Bytes are counted at a
subscriber as whole MQTT PUBLISH packets on the agent's delta, tag and alarm topics: what the
broker forwards of what the agent sent, minus the agent's QoS 1 packet ids. Alarm messages are
counted in each window: report by exception must not lose one.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import Options, Row, Target, load_average, report
from bench.load_run import MqttCounter, Window, agent_contender, mosquitto, run_windows
from bench.throughput import parse
from hil.load.config import agent_config
from hil.load.rig import LoadRig

NAME = "bandwidth"
FULL_SIZES = (1000,)
TARGET_REDUCTION = 10.0
MODES = {
    "every sample": "every",
    "report by exception": "exception",
    "report by exception + zlib": "exception",
}
LEAK_M_S = 0.01


def _leak(rig: LoadRig) -> Callable[[], None]:
    def inject() -> None:
        rig.inject("leak", rate_m_s=LEAK_M_S)

    return inject


def run(opts: Options, sizes: Sequence[int]) -> Path:
    settle_s, window_s, fault_settle_s = (2.0, 3.0, 1.0) if opts.quick else (5.0, 10.0, 2.0)
    rows: list[Row] = []
    targets: list[Target] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-bandwidth-") as tmp, mosquitto() as broker:
        work = Path(tmp)
        counter = MqttCounter(*broker)
        try:
            for tags in sizes:
                bps: dict[tuple[str, str], list[float]] = {}
                vps: dict[tuple[str, str], list[float]] = {}
                alarms: dict[tuple[str, str], int] = {}
                for _ in range(opts.repeats):
                    for mode, deadbands in MODES.items():
                        with LoadRig(tags, "modbus", 1) as rig:
                            rig.wait_stats(10.0)
                            cfg = work / f"agent-{deadbands}-{tags}.toml"
                            text = agent_config(
                                "modbus", tags, rig.endpoints, mqtt_host=broker[0],
                                mqtt_port=broker[1], deadbands=deadbands,  # type: ignore[arg-type]
                                stamps=False, state_dir=str(work / "state"),
                            )  # fmt: skip
                            if mode.endswith("zlib"):
                                text += '\n[uplink]\ncompression = "zlib"\n'
                            cfg.write_text(text)
                            leak = Window("fault", window_s, fault_settle_s, _leak(rig))
                            got = run_windows(
                                agent_contender(cfg, mode), rig, counter, settle_s,
                                [Window("normal", window_s), leak],
                            )  # fmt: skip
                        for phase, m in got.items():
                            bps.setdefault((phase, mode), []).append(m.bytes_per_s)
                            vps.setdefault((phase, mode), []).append(m.values_per_s)
                            alarms[(phase, mode)] = alarms.get((phase, mode), 0) + m.alarms
                for (phase, mode), samples in bps.items():
                    group = f"{tags} tags, {phase}"
                    base = None if mode == "every sample" else "every sample"
                    rows.append(Row(group, mode, "bytes/s", samples, base,
                                    extra={"values_per_s": statistics.median(vps[(phase, mode)]),
                                           "alarm_messages": alarms[(phase, mode)]}))  # fmt: skip
                every = statistics.median(bps[("normal", "every sample")])
                for mode in list(MODES)[1:]:
                    rbe = statistics.median(bps[("normal", mode)])
                    ratio = every / max(rbe, 1e-9)
                    targets.append(Target(f"{tags} tags, normal: bytes every sample / {mode}",
                                          ratio, TARGET_REDUCTION, "x",
                                          ratio >= TARGET_REDUCTION))  # fmt: skip
                notes.append(f"{tags} tags: alarm messages per (window, mode) {alarms}")
                notes.append(f"{tags} tags: load {load_average()}")
        finally:
            counter.close()
    notes.append(
        "both modes publish in the agent's current wire format (batched deltas when it batches)"
    )
    return report(NAME, opts, rows, targets=targets, notes=notes,
                  config={"sizes": list(sizes), "settle_s": settle_s, "window_s": window_s,
                          "leak_rate_m_s": LEAK_M_S})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    opts, _protocols, sizes = parse(argv, __doc__.splitlines()[0] if __doc__ else NAME)
    if not opts.quick and "--sizes" not in " ".join(argv or []):
        sizes = list(FULL_SIZES)
    run(opts, sizes)


if __name__ == "__main__":
    main()
