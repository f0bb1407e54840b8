"""Benchmark: fault detection on the rig's plant, faster than real time, through the agent's tick.

    uv run python -m bench.rig_detection [--quick] [--repeats N] [--hours H] [--kinds a,b]

The rig's plant (`hil.plant.Plant`: physics, PLC control loops, the seeded operator scenario
with its setpoint and valve moves, sensor lag, noise and drive quantisation exactly as the rig
serves them) is stepped 0.1 s per tick, the agent's 10 Hz, without the PLC servers and without
waiting. Each tick its measurements go into a `ProcessImage` stamped with the plant's clock, and
the agent's own stages run on them, built from the config (default `configs/demo.toml`) as
`edge_agent.agent.Agent` builds them (`bench.rig_path`): `Comparator` (the Digital Original and
the detector file of the config, the shipped `loop_detector.onnx` by default) and
`AlarmTracker` (its hysteresis and durations). A test checks that path against a real `Agent`.

- Faults: every kind the rig can inject (`hil.faults.FAULT_KINDS`), `--repeats` runs each
  (seed and injection time vary), watched for `horizon` seconds after injection. A run detects
  the fault when any alarm is raised after the injection; the delay is from the injection to
  that alarm. `plc-restart` is not physics: it is played as the agent sees it, one batch of BAD
  "comm" samples for the stopped PLC's tags, then nothing from it until the first reconnect
  attempt after `down_s` (the acquisition loop's backoff at the middle of its jitter).
- Normal operation: `--hours` of plant time per seed (36,000 ticks an hour), `--repeats` seeds
  not used to train the detector; any raised alarm is a false alarm. The margin is the highest
  score relative to the alarm threshold (1.0), per tick and held for `raise_after_s` (what it
  takes to raise an alarm).

Prints the tables and the speed-up against real time (plant seconds per wall second), writes
`bench/results/rig_detection.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS_DIR, Target, align, git_commit, load_average, machine
from bench.rig_path import DEMO_CONFIG, TICK_T0, RigPath
from hil.faults import FAULT_KINDS, ParamValue, check_params, expected_tags
from hil.plant import Plant

NAME = "rig_detection"
TRAINING_SEED = 0  # `edge-agent train --seed 0` made the shipped detector: not used here
FAULT_SEEDS = (11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
INJECT_S = (15.0, 75.0, 160.0, 290.0, 450.0, 40.0, 120.0, 220.0, 360.0, 520.0)
NORMAL_SEEDS = (101, 102, 103, 104, 105, 106, 107, 108, 109, 110)
HORIZON_S = {"pump-ageing": 1200.0}  # slow by design: 0.05 % efficiency per second
DEFAULT_HORIZON_S = 300.0


@dataclass(frozen=True)
class Case:
    """One row of the fault table: a fault kind with its parameters."""

    label: str
    kind: str
    params: dict[str, ParamValue] = field(default_factory=dict)


def cases(kinds: Sequence[str]) -> list[Case]:
    """Every requested kind with its default parameters; plc-restart for both PLCs."""
    out = []
    for kind in kinds:
        out.append(Case(kind, kind, check_params(kind, {})))
        if kind == "plc-restart":
            out.append(Case("plc-restart:plc=drive", kind, check_params(kind, {"plc": "drive"})))
    return out


@dataclass
class FaultRun:
    """One injection: when, whether and how fast it was seen, and by which tag."""

    seed: int
    inject_s: float
    detected: bool
    delay_s: float | None
    first_tag: str | None
    first_kind: str | None
    expected_alarmed: bool
    alarmed_tags: list[str]
    alarms_before_injection: int


@dataclass
class NormalRun:
    """One stretch of normal operation: false alarms and the score margin."""

    seed: int
    ticks: int
    false_alarms: int
    alarm_tags: list[str]
    peak_score: dict[str, float]
    held_score: dict[str, float]
    peak_cusum: dict[str, float]
    resyncs: int


def fault_run(
    path: RigPath, case: Case, *, seed: int, inject_s: float, horizon_s: float, after_s: float
) -> FaultRun:
    """Run the plant with `case` injected at `inject_s`; stop `after_s` after the first alarm
    on an expected tag, or at `horizon_s` after injection."""
    plant = Plant(seed)
    expected = set(expected_tags(case.kind, case.params))
    end_s = inject_s + horizon_s
    injected_at: float | None = None
    first: tuple[float, str, str] | None = None
    alarmed: list[str] = []
    before = 0
    stop_at = end_s
    while plant.sim_time < stop_at - 1e-9:
        path.step_plant(plant)
        if injected_at is None and plant.sim_time >= inject_s - 1e-9:
            injected_at = plant.sim_time
            path.inject(plant, case.kind, case.params)
        for ev in path.tick(plant):
            if ev.event != "raised":
                continue
            if injected_at is None:
                before += 1
                continue
            if first is None:
                first = (ev.ts - TICK_T0 - injected_at, ev.tag, ev.kind)
            if ev.tag not in alarmed:
                alarmed.append(ev.tag)
            if ev.tag in expected and stop_at == end_s:
                stop_at = min(end_s, plant.sim_time + after_s)
    return FaultRun(
        seed=seed,
        inject_s=inject_s,
        detected=first is not None,
        delay_s=None if first is None else round(first[0], 3),
        first_tag=None if first is None else first[1],
        first_kind=None if first is None else first[2],
        expected_alarmed=bool(expected & set(alarmed)),
        alarmed_tags=alarmed,
        alarms_before_injection=before,
    )


def normal_run(path: RigPath, seed: int, ticks: int) -> NormalRun:
    """`ticks` ticks of normal operation; every raised alarm is a false one."""
    plant = Plant(seed)
    n_out = len(path.output_tags)
    scores = np.full((ticks, n_out), np.nan, dtype=np.float32)
    cusum = np.full(n_out, np.nan)
    alarms: list[str] = []
    for k in range(ticks):
        if k:
            path.step_plant(plant)
        alarms += [f"{ev.kind}:{ev.tag}" for ev in path.tick(plant) if ev.event == "raised"]
        res = path.result
        scores[k] = res.score
        cusum = np.fmax(cusum, res.cusum)
    # An alarm needs the score at or above 1.0 on every tick for raise_after_s: the highest
    # level held that long is the margin that matters.
    hold = path.raise_ticks
    held = np.lib.stride_tricks.sliding_window_view(np.nan_to_num(scores, nan=0.0), hold, axis=0)
    held_max = held.min(axis=2).max(axis=0) if len(scores) >= hold else np.zeros(n_out)
    return NormalRun(
        seed=seed,
        ticks=ticks,
        false_alarms=len(alarms),
        alarm_tags=sorted(set(alarms)),
        peak_score=_per_tag(path.output_tags, np.nanmax(scores, axis=0)),
        held_score=_per_tag(path.output_tags, held_max),
        peak_cusum=_per_tag(path.output_tags, cusum),
        resyncs=path.comparator.resyncs,
    )


def _per_tag(tags: Sequence[str], values: Any) -> dict[str, float]:
    return {t: round(float(v), 4) for t, v in zip(tags, values, strict=True)}


def _delay_stats(runs: Sequence[FaultRun]) -> dict[str, Any]:
    delays = [r.delay_s for r in runs if r.delay_s is not None]
    firsts: dict[str, int] = {}
    for r in runs:
        if r.first_tag is not None:
            key = f"{r.first_tag} ({r.first_kind})"
            firsts[key] = firsts.get(key, 0) + 1
    return {
        "runs": len(runs),
        "detected": sum(r.detected for r in runs),
        "expected_alarmed": sum(r.expected_alarmed for r in runs),
        "delay_median_s": statistics.median(delays) if delays else None,
        "delay_min_s": min(delays) if delays else None,
        "delay_max_s": max(delays) if delays else None,
        "first_alarm": firsts,
        "alarms_before_injection": sum(r.alarms_before_injection for r in runs),
    }


def _tags(tags: Sequence[str]) -> str:
    return ",".join(tags) if len(tags) <= 3 else f"{','.join(tags[:2])},+{len(tags) - 2}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fault_table(faults: Sequence[dict[str, Any]]) -> str:
    """One line per fault case."""
    head = ("fault", "detected", "delay median s", "min s", "max s", "first alarm", "expected tags")
    lines = [head]
    for f in faults:
        s = f["summary"]
        first = ", ".join(f"{k} x{v}" for k, v in s["first_alarm"].items()) or "-"
        lines.append((
            f["label"], f"{s['detected']}/{s['runs']}", _s(s["delay_median_s"]),
            _s(s["delay_min_s"]), _s(s["delay_max_s"]), first,
            f"{_tags(f['expected_tags'])} {s['expected_alarmed']}/{s['runs']}",
        ))  # fmt: skip
    return align(lines)


def normal_table(runs: Sequence[dict[str, Any]]) -> str:
    """One line per normal-operation seed."""
    head = ("seed", "ticks", "hours", "false alarms", "peak score (tag)", "held 1 s (tag)")
    lines = [head]
    for r in runs:
        peak = max(r["peak_score"].items(), key=lambda kv: kv[1])
        held = max(r["held_score"].items(), key=lambda kv: kv[1])
        lines.append((
            str(r["seed"]), str(r["ticks"]), f"{r['ticks'] / 36000:.2f}", str(r["false_alarms"]),
            f"{peak[1]:.3f} ({peak[0]})", f"{held[1]:.3f} ({held[0]})",
        ))  # fmt: skip
    return align(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or NAME
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run each (a smoke run)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--repeats", type=int, default=None, help="runs per fault and seeds")
    parser.add_argument("--hours", type=float, default=None, help="normal operation per seed")
    parser.add_argument(
        "--kinds",
        default=",".join(FAULT_KINDS),
        help="fault kinds to inject, comma-separated; empty: normal operation only",
    )
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="agent config")
    parser.add_argument(
        "--detector",
        type=Path,
        default=None,
        help="ONNX file instead of the config's detector (a candidate, before it ships)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.hours is None:
        args.hours = 1 / 60 if args.quick else 1.0
    if not 1 <= args.repeats <= len(FAULT_SEEDS):
        parser.error(f"--repeats must be 1..{len(FAULT_SEEDS)}")
    if args.hours * 3600.0 < 60.0 - 1e-6:
        parser.error("--hours must be at least 1/60 (a minute: the detector needs full windows)")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in FAULT_KINDS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    return args


def run(args: argparse.Namespace) -> Path:
    start_load = load_average()
    path = RigPath.build(args.config, args.detector)
    after_s, quick = (3.0, True) if args.quick else (30.0, False)
    faults = []
    for case in cases(args.kinds):
        horizon = 60.0 if quick else HORIZON_S.get(case.kind, DEFAULT_HORIZON_S)
        runs = []
        for seed, inject_s in list(zip(FAULT_SEEDS, INJECT_S, strict=True))[: args.repeats]:
            path.reset()
            runs.append(
                fault_run(path, case, seed=seed, inject_s=inject_s, horizon_s=horizon,
                          after_s=after_s)
            )  # fmt: skip
        faults.append({
            "label": case.label, "kind": case.kind, "params": _jsonable(case.params),
            "expected_tags": list(expected_tags(case.kind, case.params)), "horizon_s": horizon,
            "summary": _delay_stats(runs), "runs": [asdict(r) for r in runs],
        })  # fmt: skip
    ticks = round(args.hours * 3600.0 * path.tick_hz)
    normal = []
    for seed in NORMAL_SEEDS[: args.repeats]:
        path.reset()
        normal.append(asdict(normal_run(path, seed, ticks)))
    return _report(args, path, faults=faults, normal=normal, start_load=start_load)


def _report(
    args: argparse.Namespace,
    path: RigPath,
    *,
    faults: list[dict[str, Any]],
    normal: list[dict[str, Any]],
    start_load: float | None,
) -> Path:
    info = machine()
    info["load_avg_1m_at_start"] = start_load
    commit, date = git_commit(), datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    speed = path.timer.summary()
    undetected = [f["label"] for f in faults if f["summary"]["detected"] < f["summary"]["runs"]]
    false_alarms = sum(r["false_alarms"] for r in normal)
    held = max((max(r["held_score"].values()) for r in normal), default=float("nan"))
    targets = [
        Target("fault cases not detected in every run", len(undetected), 1, "cases",
               not undetected),
        Target("false alarms in normal operation", false_alarms, 1, "alarms", false_alarms == 0),
        Target("speed-up against real time", speed["speedup"], 1, "x", speed["speedup"] > 1),
    ]  # fmt: skip
    notes = [
        f"agent path: {path.describe()}",
        f"highest score held for raise_after_s in normal operation: {held:.3f} "
        f"(alarm at 1.0; margin {1.0 - held:.3f})",
        "delay = first raised alarm (any tag) minus the injection's plant time; the live rig adds "
        "up to one publish and one tick period of transport (about 0.1-0.2 s)",
        f"fault seeds {list(FAULT_SEEDS[: args.repeats])}, normal seeds "
        f"{list(NORMAL_SEEDS[: args.repeats])}; the shipped detector was trained on seed "
        f"{TRAINING_SEED}",
    ]
    if undetected:
        notes.append(f"NOT detected in every run: {', '.join(undetected)}")
    print(f"== bench.{NAME}  {date}  commit {commit}{'  (quick)' if args.quick else ''}")
    print(f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}")
    print(f"load average (1 min) at start {start_load}, at end {info['load_avg_1m']}")
    print(fault_table(faults))
    print()
    print(normal_table(normal))
    print()
    print(
        f"speed: {speed['sim_s']:.0f} s of plant time in {speed['wall_s']:.1f} s wall: "
        f"{speed['speedup']:.0f}x real time; per tick plant {speed['plant_us']:.0f} us, "
        f"agent path {speed['agent_us']:.0f} us (real time allows {1e6 / path.tick_hz:.0f} us)"
    )
    for t in targets:
        verdict = "met" if t.met else "NOT met"
        print(f"target: {t.what}: {t.measured:.3g} {t.unit} (limit {t.limit:g}) -> {verdict}")
    for note in notes:
        print(f"note: {note}")
    result = {
        "benchmark": NAME, "date": date, "commit": commit, "quick": args.quick,
        "repeats": args.repeats, "machine": info,
        "config": {"config": _shown(args.config), "hours": args.hours, "kinds": args.kinds,
                   "tick_hz": path.tick_hz, "detector": _shown(path.detector_path)},
        "faults": faults, "normal": normal, "speed": speed,
        "targets": [asdict(t) for t in targets], "notes": notes,
    }  # fmt: skip
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out: Path = args.results_dir / f"{NAME}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {_shown(out)}")
    sys.stdout.flush()
    return out


def _jsonable(params: dict[str, ParamValue]) -> dict[str, Any]:
    return {k: (v if isinstance(v, str) or np.isfinite(v) else None) for k, v in params.items()}


def _shown(p: Path) -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        return str(p.resolve().relative_to(root))
    except ValueError:
        return str(p)


def main(argv: Sequence[str] | None = None) -> None:
    t0 = time.perf_counter()
    run(parse(argv))
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
