"""Smoke runs of the benchmarks: each one runs in `--quick` mode, prints a table, writes JSON.

No timing is asserted here (speed is measured by the benchmarks themselves, not by tests):
only that each benchmark runs end to end, prints its table and writes a well-formed result.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = ("group", "case", "unit", "median", "p25..p75", "min..max", "vs baseline")


def run_bench(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class QuickRun:
    name: str
    proc: subprocess.CompletedProcess[str]
    result_path: Path


@pytest.fixture(scope="module", params=["model_step", "detector", "startup", "uplink"])
def quick_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """Each benchmark run once with `--quick`, its JSON written to a temporary directory."""
    name: str = request.param
    out = tmp_path_factory.mktemp(f"bench-{name}")
    proc = run_bench([f"bench.{name}", "--quick", "--results-dir", str(out)])
    return QuickRun(name, proc, out / f"{name}.json")


def test_benchmark_quick_run_prints_table_and_writes_json(quick_run: QuickRun) -> None:
    """`python -m bench.<name> --quick` prints a table and writes a complete JSON result."""
    proc, name = quick_run.proc, quick_run.name
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next((ln for ln in proc.stdout.splitlines() if ln.startswith("group")), "")
    assert tuple(header.split(None, 6)) == TABLE_HEADER
    assert "machine:" in proc.stdout

    result = json.loads(quick_run.result_path.read_text())
    assert result["benchmark"] == name
    assert result["quick"] is True
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["cpu"]
    assert result["machine"]["libraries"]["numpy"] != "absent"
    assert result["rows"], "no measured rows"
    cases = {(r["group"], r["case"]) for r in result["rows"]}
    for row in result["rows"]:
        assert row["samples"], row
        assert all(math.isfinite(s) and s > 0 for s in row["samples"]), row
        assert row["min"] <= row["p25"] <= row["median"] <= row["p75"] <= row["max"], row
        # A row compares with a baseline that was measured in the same run.
        assert row["baseline"] is None or (row["group"], row["baseline"]) in cases, row
    # Every row of the result is in the printed table.
    assert all(r["case"] in proc.stdout for r in result["rows"])
    # Each benchmark states at least one target or note, and the verdicts follow the limits.
    assert result["targets"] or result["notes"]
    for t in result["targets"]:
        below = t["measured"] < t["limit"]
        assert t["met"] == (below if t["unit"] in {"us", "s"} else not below), t


def test_bench_lists_every_benchmark() -> None:
    """`python -m bench --list` names every benchmark module `python -m bench` runs, and
    each of them exists with a `main`."""
    proc = run_bench(["bench", "--list"])
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert names[:3] == ["model_step", "detector", "startup"]
    assert {"throughput", "modbus", "uplink"} <= set(names)
    for name in names:
        assert callable(importlib.import_module(f"bench.{name}").main), name
