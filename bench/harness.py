"""The shared benchmark harness: timing loops, the machine description, the table and the JSON.

Owns how a benchmark measures (interleaved runs of every case, so the baseline and the
contender share the machine's state within one run), how it summarises (median, quartiles,
min and max over runs), what it prints (one table plus the machine) and what it writes
(`bench/results/<name>.json`). It knows nothing of what is measured.

Each case is timed as `repeats` runs; a run calls the case `inner` times back to back and
records the mean time per call divided by the case's work units (variants, windows), so one
sample is "seconds per unit". `inner` is chosen once per case so a run lasts about
`run_s` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LIBRARIES = ("numpy", "numba", "llvmlite", "onnxruntime", "onnx", "scikit-learn")


@dataclass(frozen=True)
class Options:
    """Command-line options every benchmark takes."""

    quick: bool
    results_dir: Path
    repeats: int
    run_s: float
    # Other work on the machine skews every figure: the load is recorded with each result.
    start_load: float | None = None


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    default_repeats: tuple[int, int] = (3, 15),
) -> Options:
    """Parse the common flags: `--quick` (about a second, for smoke tests), `--results-dir`,
    `--repeats` (default: `default_repeats`, quick and full)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and few runs (a smoke run, not a result)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where <name>.json is written (default: bench/results)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="runs per case")
    args = parser.parse_args(argv)
    repeats = args.repeats
    if repeats is None:
        repeats = default_repeats[0] if args.quick else default_repeats[1]
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    return Options(
        quick=args.quick,
        results_dir=args.results_dir,
        repeats=repeats,
        run_s=0.004 if args.quick else 0.05,
        start_load=load_average(),
    )


@dataclass
class Row:
    """One measured case: samples in `unit` (one per run) and the case it is compared with."""

    group: str
    case: str
    unit: str
    samples: list[float]
    baseline: str | None = None
    note: str = ""
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        """(p25, p75); a single sample is its own spread."""
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]


def calibrate_inner(fn: Callable[[], object], run_s: float) -> int:
    """Calls per run so that one run lasts about `run_s` seconds (at least one call)."""
    fn()  # warm: first call may compile or allocate
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= run_s / 4 or n >= 1 << 22:
            return max(1, round(n * run_s / max(elapsed, 1e-9)))
        n *= 4


def interleaved(
    cases: Mapping[str, tuple[Callable[[], object], float]], repeats: int, run_s: float
) -> dict[str, list[float]]:
    """Time each case `(fn, units per call)`; returns seconds per unit, one sample per run.

    Runs alternate between the cases (case A run 1, case B run 1, case A run 2, ...), so a
    change in clock speed or load during the benchmark hits all cases alike.
    """
    inner = {name: calibrate_inner(fn, run_s) for name, (fn, _units) in cases.items()}
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, units) in cases.items():
            n = inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - t0) / n / units)
    return out


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), where the platform has one."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """Short commit of the working tree, with `+dirty` when tracked files differ from it."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def machine() -> dict[str, Any]:
    """Where the numbers come from: cores, CPU, OS, Python and the library versions."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            versions[lib] = "absent"
    return {
        "load_avg_1m": load_average(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_table(rows: Sequence[Row]) -> str:
    """A plain text table: median, IQR, min/max and the speed-up against each row's baseline."""
    medians = {(r.group, r.case): r.median for r in rows}
    header = ("group", "case", "unit", "median", "p25..p75", "min..max", "vs baseline")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        p25, p75 = r.quartiles()
        ratio = ""
        if r.baseline is not None and (r.group, r.baseline) in medians:
            base = medians[(r.group, r.baseline)]
            ratio = f"{base / r.median:.2f}x {r.baseline}"
        elif r.baseline is None:
            ratio = "(baseline)"
        lines.append(
            (
                r.group,
                r.case + (f" [{r.note}]" if r.note else ""),
                r.unit,
                _fmt(r.median, r.unit),
                f"{_fmt(p25, r.unit)}..{_fmt(p75, r.unit)}",
                f"{_fmt(min(r.samples), r.unit)}..{_fmt(max(r.samples), r.unit)}",
                ratio,
            )
        )
    return align(lines)


def align(lines: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, the first line a header underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass(frozen=True)
class Target:
    """A stated goal and whether this run met it."""

    what: str
    measured: float
    limit: float
    unit: str
    met: bool


def report(
    name: str,
    opts: Options,
    rows: Sequence[Row],
    *,
    targets: Sequence[Target] = (),
    notes: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Print the table, the targets and the machine; write `<results_dir>/<name>.json`."""
    info = machine()
    info["load_avg_1m_at_start"] = opts.start_load
    commit = git_commit()
    date = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"== bench.{name}  {date}  commit {commit}{'  (quick)' if opts.quick else ''}")
    print(
        f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v != "absent")
    )
    print(
        f"load average (1 min) at start {opts.start_load}, at end {info['load_avg_1m']}; "
        f"runs per case: {opts.repeats}; spread = interquartile range and min..max over runs"
    )
    print(format_table(rows))
    for t in targets:
        verdict = "met" if t.met else "NOT met"
        print(f"target: {t.what}: {t.measured:.3g} {t.unit} (limit {t.limit:g}) -> {verdict}")
    for note in notes:
        print(f"note: {note}")
    result = {
        "benchmark": name,
        "date": date,
        "commit": commit,
        "quick": opts.quick,
        "repeats": opts.repeats,
        "machine": info,
        "config": dict(config or {}),
        "rows": [
            {
                "group": r.group,
                "case": r.case,
                "unit": r.unit,
                "median": r.median,
                "p25": r.quartiles()[0],
                "p75": r.quartiles()[1],
                "min": min(r.samples),
                "max": max(r.samples),
                "baseline": r.baseline,
                "note": r.note,
                "extra": r.extra,
                "samples": r.samples,
            }
            for r in rows
        ],
        "targets": [asdict(t) for t in targets],
        "notes": list(notes),
    }
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    path = opts.results_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {_shown(path)}")
    sys.stdout.flush()
    return path


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
