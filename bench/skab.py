"""Benchmark: the official SKAB protocol with the default sensor-window detector.

Reads a folder in SKAB's layout given by `--skab DIR` (the benchmark's data is not part of
the repository, and the default test command never needs it), runs `edge-agent evaluate`'s
code path (`models.anomaly.benchmark.run_benchmark`, the documented default `SensorConfig`),
prints the result overall and per group next to the published leaderboard, states each target
with a verdict, and writes `bench/results/skab.json`.

`--select` runs instead the procedure that chose that configuration
(`models.anomaly.selection`: normal data and the training parts with synthetic faults; test
parts are never read), prints the best candidates, says whether the choice equals the
default `SensorConfig`, and writes `bench/results/skab_select.json`.

    uv run python -m bench.skab --skab DIR [--select] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import RESULTS_DIR, git_commit, load_average, machine
from models.anomaly import selection
from models.anomaly.benchmark import run_benchmark
from models.anomaly.sensor_train import SensorConfig

NAME = "skab"
KEYS = ("f1", "far", "mar", "nab_standard", "nab_lowfp", "nab_lowfn")
# The published leaderboard (SKAB, all groups, test parts), as the data set's README lists it.
PUBLISHED: dict[str, tuple[float, float, float, float, float, float]] = {
    "Conv-AE": (0.78, 13.55, 28.02, 23.61, 21.54, 27.55),
    "MSET": (0.78, 39.73, 14.13, 13.84, 10.22, 17.37),
    "T-squared+Q (PCA)": (0.76, 26.62, 24.92, 25.35, 14.51, 31.33),
    "LSTM-AE": (0.74, 29.96, 25.92, 23.51, 20.11, 25.91),
    "MSCRED": (0.36, 49.94, 69.88, 32.42, 16.53, 40.28),
    "Isolation forest": (0.29, 2.56, 82.89, 26.16, 19.50, 30.82),
}
# (key, comparison, limit): the targets on the overall result.
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("f1", ">", 0.78),
    ("far", "<=", 10.0),
    ("mar", "<=", 28.0),
    ("nab_standard", ">", 32.42),
    ("nab_lowfp", ">", 21.54),
    ("nab_lowfn", ">", 40.28),
)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(result: dict[str, dict[str, object]]) -> str:
    head = ["detector", *KEYS, "missed_cp", "false_pos", "mean_delay_s"]
    lines = [" | ".join(head)]
    for group in ("overall", *[g for g in result if g not in ("overall", "files")]):
        m = result[group]
        cells = [
            m.get(k) for k in (*KEYS, "missed_changepoints", "false_positives", "mean_delay_s")
        ]
        lines.append(" | ".join([f"this ({group})", *map(_cell, cells)]))
    for name, figures in PUBLISHED.items():
        lines.append(" | ".join([name, *map(_cell, figures), "-", "-", "-"]))
    return "\n".join(lines)


def verdicts(overall: dict[str, object]) -> list[dict[str, object]]:
    out = []
    for key, op, limit in TARGETS:
        value = overall.get(key)
        ok = isinstance(value, float | int) and (value > limit if op == ">" else value <= limit)
        out.append({"key": key, "target": f"{op} {limit}", "measured": value, "met": bool(ok)})
    return out


def run_selection(root: Path, results_dir: Path, jobs: int) -> int:
    """The configuration choice on synthetic faults; exit 0 when it equals the default."""
    start_load, t0 = load_average(), time.perf_counter()
    sel = selection.select(root, jobs=jobs)
    elapsed = time.perf_counter() - t0
    print(f"== bench.{NAME} --select  commit {git_commit()}  data {root}")
    print(
        f"{sel.faulted_blocks} faulted blocks over two folds, {sel.normal_segments} normal "
        f"segments per fold; objective F1 + NAB standard / 100 with synthetic FAR <= "
        f"{selection.FAR_LIMIT} %"
    )
    ranked = sorted(sel.rows, key=lambda r: -selection.objective(r[1]))
    print(
        "spread | distance | window | calibration | target_far | raise_s | clear_s | "
        + " | ".join(KEYS)
        + " | obj"
    )
    for config, m in ranked[:10]:
        cells = [m.get(k) for k in KEYS]
        print(
            f"{'yes' if config.std_inputs else 'no'} | {config.distance} | {config.window} | "
            f"{config.calibration} | {config.target_far} | "
            f"{config.raise_after_s} | {config.clear_after_s} | "
            + " | ".join(map(_cell, cells))
            + f" | {selection.objective(m):.4f}"
        )
    same = sel.chosen == SensorConfig()
    print(f"chosen: {sel.chosen.to_json()}")
    print(f"equals the default SensorConfig: {'yes' if same else 'NO'}; {elapsed:.0f} s")
    out = {
        "benchmark": f"{NAME}_select",
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": {**machine(), "load_avg_1m_at_start": start_load},
        "equals_default": same,
        **sel.to_json(),
        "elapsed_s": elapsed,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{NAME}_select.json"
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"written: {path}")
    return 0 if same else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--skab", required=True, type=Path, help="folder in SKAB's layout")
    parser.add_argument(
        "--select", action="store_true", help="run the configuration choice (no test part)"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes for --select"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.select:
        return run_selection(args.skab, args.results_dir, max(1, args.jobs))
    start_load, t0 = load_average(), time.perf_counter()
    result = run_benchmark(args.skab)
    elapsed = time.perf_counter() - t0
    metrics = {k: v for k, v in result.metrics().items()}
    print(f"== bench.{NAME}  commit {git_commit()}  data {args.skab}")
    print(table(metrics))
    checks = verdicts(metrics["overall"])
    for c in checks:
        print(
            f"target: {c['key']} {c['target']}: {_cell(c['measured'])} -> "
            f"{'met' if c['met'] else 'NOT met'}"
        )
    print(
        f"config: {result.config.to_json()}; drift model from {result.drift.rows} normal "
        f"windows ({len(result.normal_files)} unlabelled files + training parts); "
        f"{len(result.files)} files in {elapsed:.1f} s"
    )
    out = {
        "benchmark": NAME,
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": {**machine(), "load_avg_1m_at_start": start_load},
        "config": json.loads(result.config.to_json()),
        "metrics": metrics,
        "published": {k: dict(zip(KEYS, v, strict=True)) for k, v in PUBLISHED.items()},
        "targets": checks,
        "elapsed_s": elapsed,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{NAME}.json"
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
