"""Smoke run of the Modbus benchmark: `python -m bench.modbus --quick` runs end to end against
server processes, prints its table and targets, and writes its JSON. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_modbus_benchmark_quick_run(tmp_path: Path) -> None:
    """The quick run measures both maps for the three cases and states both targets for each
    driver path."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.modbus", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "us/register" in proc.stdout and "target: float32 map" in proc.stdout
    result = json.loads((tmp_path / "modbus.json").read_text())
    cases = {(r["group"], r["case"]) for r in result["rows"]}
    assert cases == {
        (f"{m} map", c)
        for m in ("float32", "uint16")
        for c in ("bare pymodbus", "driver", "driver columns")
    }
    assert all(r["median"] > 0 and r["extra"]["wall_registers_per_s"] > 0 for r in result["rows"])
    assert len(result["targets"]) == 8 and result["quick"] is True
